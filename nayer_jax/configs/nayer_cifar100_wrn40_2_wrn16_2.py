"""NAYER, CIFAR100, wrn40_2 teacher -> wrn16_2 student (official setting).

Run:  python -m nayer_jax.main --config nayer_jax/configs/nayer_cifar100_wrn40_2_wrn16_2.py:200 \
        --config.teacher=DIR_OF_CONVERTED_WRN40_2 --workdir runs/nayer_cifar100_wrn40_2_wrn16_2
The argument after ':' picks NAYER-100/200/300 (120/220/320 epochs; default 100).
"""

from nayer_jax.configs.common import epochs_for, nayer_cifar


def get_config(variant: str | None = None):
    return nayer_cifar("cifar100", teacher="", student="wrn16_2", epochs=epochs_for(variant))
