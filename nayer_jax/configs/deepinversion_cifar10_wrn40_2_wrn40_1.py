"""DeepInversion (ADI), CIFAR10, wrn40_2 teacher -> wrn40_1 student.

Fast-Datafree's CIFAR setting (scripts/deepinv_cifar.sh: 200 epochs, KD from epoch 0,
400 KD steps of batch 256 at lr 0.1, one synthesis batch of 256 per epoch) with the
paper's 2000 Adam steps per batch ("DeepInv-2k"); every setting is in
`deepinversion.default_config()`.

Run:  python -m nayer_jax.main --config nayer_jax/configs/deepinversion_cifar10_wrn40_2_wrn40_1.py \
        --config.teacher=DIR_OF_CONVERTED_WRN40_2 --workdir runs/deepinversion_cifar10_wrn40_2_wrn40_1
Plain DeepInversion (no competition loss): add --config.adaptive=False.
"""

from nayer_jax.configs.common import cifar


def get_config():
    return cifar("deepinversion", "cifar10", teacher="", student="wrn40_1", epochs=200)
