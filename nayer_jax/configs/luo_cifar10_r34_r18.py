"""Luo et al. 2020, CIFAR-10, resnet34 teacher -> resnet18 student (NAYER's pairing).

Run:  python -m nayer_jax.main --config nayer_jax/configs/luo_cifar10_r34_r18.py \
        --config.teacher=DIR_OF_CONVERTED_RESNET34 --workdir runs/luo_cifar10_r34_r18
Stage 2 only, from an earlier run's ensemble: add --config.stage1_dir=OLD_WORKDIR/stage1.
"""

from nayer_jax.configs.luo_common import luo_cifar


def get_config():
    return luo_cifar("cifar10", teacher="", student="resnet18")
