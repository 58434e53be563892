"""DAFL, CIFAR10, wrn40_2 teacher -> wrn16_2 student.

Fast-Datafree's CIFAR setting (scripts/dafl_cifar.sh): 200 epochs of 400 KD steps (batch
256, lr 0.1, KL at T 20, no crop/flip), one generator step (batch 256, Adam 1e-3) before
every 5 KD steps, loss weights oh 1, balance 20, act 1e-3; every setting is in
`dafl.default_config()`.

Run:  python -m nayer_jax.main --config nayer_jax/configs/dafl_cifar10_wrn40_2_wrn16_2.py \
        --config.teacher=DIR_OF_CONVERTED_WRN40_2 --workdir runs/dafl_cifar10_wrn40_2_wrn16_2
"""

from nayer_jax.configs.common import cifar


def get_config():
    return cifar("dafl", "cifar10", teacher="", student="wrn16_2", epochs=200)
