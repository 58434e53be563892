"""DFAD, CIFAR10, wrn40_2 teacher -> wrn16_2 student.

Fast-Datafree's CIFAR budget (scripts/dfad_cifar.sh): 200 epochs of 400 student steps
(batch 256, lr 0.1, L1 on logits, no crop/flip), one adversarial generator step (batch
256, Adam 1e-3) before every 5 student steps; every setting is in
`dfad.default_config()`.

Run:  python -m nayer_jax.main --config nayer_jax/configs/dfad_cifar10_wrn40_2_wrn16_2.py \
        --config.teacher=DIR_OF_CONVERTED_WRN40_2 --workdir runs/dfad_cifar10_wrn40_2_wrn16_2
"""

from nayer_jax.configs.common import cifar


def get_config():
    return cifar("dfad", "cifar10", teacher="", student="wrn16_2", epochs=200)
