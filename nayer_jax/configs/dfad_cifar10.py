"""DFAD on CIFAR10, one pair of common.CIFAR10_PAIRS as ':PAIR'.

Fast-Datafree's CIFAR budget (scripts/dfad_cifar.sh): 200 epochs of 400 student steps
(batch 256, lr 0.1, L1 on logits, no crop/flip), one adversarial generator step (batch
256, Adam 1e-3) before every 5 student steps; every setting is in
`dfad.default_config()`, the same for every pair but the student.

Run:  python -m nayer_jax.main --config nayer_jax/configs/dfad_cifar10.py:r34_r18 \
        --config.teacher=DIR_OF_CONVERTED_RESNET34 --workdir runs/dfad_cifar10_r34_r18
"""

from nayer_jax.configs.common import cifar10_method


def get_config(pair: str | None = None):
    return cifar10_method("dfad", pair, epochs=200)
