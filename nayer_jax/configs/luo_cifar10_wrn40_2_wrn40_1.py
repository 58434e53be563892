"""Luo et al. 2020, CIFAR-10, wrn40_2 teacher -> wrn40_1 student (NAYER's pairing).

Run:  python -m nayer_jax.main --config nayer_jax/configs/luo_cifar10_wrn40_2_wrn40_1.py \
        --config.teacher=DIR_OF_CONVERTED_WRN40_2 --workdir runs/luo_cifar10_wrn40_2_wrn40_1
Stage 2 only, from an earlier run's ensemble: add --config.stage1_dir=OLD_WORKDIR/stage1.
"""

from nayer_jax.configs.luo_common import luo_cifar


def get_config():
    return luo_cifar("cifar10", teacher="", student="wrn40_1")
