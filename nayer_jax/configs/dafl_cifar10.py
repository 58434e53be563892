"""DAFL on CIFAR10, one pair of common.CIFAR10_PAIRS as ':PAIR'.

Fast-Datafree's CIFAR setting (scripts/dafl_cifar.sh): 200 epochs of 400 KD steps (batch
256, lr 0.1, KL at T 20, no crop/flip), one generator step (batch 256, Adam 1e-3) before
every 5 KD steps, loss weights oh 1, balance 20, act 1e-3; every setting is in
`dafl.default_config()`, the same for every pair but the student.

Run:  python -m nayer_jax.main --config nayer_jax/configs/dafl_cifar10.py:r34_r18 \
        --config.teacher=DIR_OF_CONVERTED_RESNET34 --workdir runs/dafl_cifar10_r34_r18
"""

from nayer_jax.configs.common import cifar10_method


def get_config(pair: str | None = None):
    return cifar10_method("dafl", pair, epochs=200)
