"""Luo et al. 2020, CIFAR-100, vgg11 teacher -> resnet18 student (NAYER's pairing).

Run:  python -m nayer_jax.main --config nayer_jax/configs/luo_cifar100_vgg11_r18.py \
        --config.teacher=DIR_OF_CONVERTED_VGG11 --workdir runs/luo_cifar100_vgg11_r18
Stage 2 only, from an earlier run's ensemble: add --config.stage1_dir=OLD_WORKDIR/stage1.
"""

from nayer_jax.configs.luo_common import luo_cifar


def get_config():
    return luo_cifar("cifar100", teacher="", student="resnet18")
