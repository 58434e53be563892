"""DeepInversion (ADI), CIFAR10, resnet34 teacher -> resnet18 student.

Fast-Datafree's CIFAR setting (scripts/deepinv_cifar.sh: 200 epochs, KD from epoch 0,
400 KD steps of batch 256 at lr 0.1, one synthesis batch of 256 per epoch) with the
paper's 2000 Adam steps per batch ("DeepInv-2k"); every setting is in
`deepinversion.default_config()`.

Run:  python -m nayer_jax.main --config nayer_jax/configs/deepinversion_cifar10_r34_r18.py \
        --config.teacher=DIR_OF_CONVERTED_RESNET34 --workdir runs/deepinversion_cifar10_r34_r18
Plain DeepInversion (no competition loss): add --config.adaptive=False.
"""

from nayer_jax.configs.common import cifar


def get_config():
    return cifar("deepinversion", "cifar10", teacher="", student="resnet18", epochs=200)
