"""DeepInversion (ADI) on CIFAR10, one pair of common.CIFAR10_PAIRS as ':PAIR'.

Fast-Datafree's CIFAR setting (scripts/deepinv_cifar.sh: 200 epochs, KD from epoch 0,
400 KD steps of batch 256 at lr 0.1, one synthesis batch of 256 per epoch) with the
paper's 2000 Adam steps per batch ("DeepInv-2k"); every setting is in
`deepinversion.default_config()`, the same for every pair but the student.

Run:  python -m nayer_jax.main --config nayer_jax/configs/deepinversion_cifar10.py:r34_r18 \
        --config.teacher=DIR_OF_CONVERTED_RESNET34 --workdir runs/deepinversion_cifar10_r34_r18
Plain DeepInversion (no competition loss): add --config.adaptive=False.
"""

from nayer_jax.configs.common import cifar10_method


def get_config(pair: str | None = None):
    return cifar10_method("deepinversion", pair, epochs=200)
