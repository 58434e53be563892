"""NAYER, CIFAR100, vgg11 teacher -> resnet18 student (official setting).

Run:  python -m nayer_jax.main --config nayer_jax/configs/nayer_cifar100_vgg11_r18.py:200 \
        --config.teacher=DIR_OF_CONVERTED_VGG11 --workdir runs/nayer_cifar100_vgg11_r18
The argument after ':' picks NAYER-100/200/300 (120/220/320 epochs; default 100).
"""

from nayer_jax.configs.common import epochs_for, nayer_cifar


def get_config(variant: str | None = None):
    return nayer_cifar("cifar100", teacher="", student="resnet18", epochs=epochs_for(variant))
