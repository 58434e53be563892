"""DAFL, CIFAR10, resnet34 teacher -> resnet18 student.

Fast-Datafree's CIFAR setting (scripts/dafl_cifar.sh): 200 epochs of 400 KD steps (batch
256, lr 0.1, KL at T 20, no crop/flip), one generator step (batch 256, Adam 1e-3) before
every 5 KD steps, loss weights oh 1, balance 20, act 1e-3; every setting is in
`dafl.default_config()`.

Run:  python -m nayer_jax.main --config nayer_jax/configs/dafl_cifar10_r34_r18.py \
        --config.teacher=DIR_OF_CONVERTED_RESNET34 --workdir runs/dafl_cifar10_r34_r18
"""

from nayer_jax.configs.common import cifar


def get_config():
    return cifar("dafl", "cifar10", teacher="", student="resnet18", epochs=200)
