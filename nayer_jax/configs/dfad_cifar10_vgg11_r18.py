"""DFAD, CIFAR10, vgg11 teacher -> resnet18 student.

Fast-Datafree's CIFAR budget (scripts/dfad_cifar.sh): 200 epochs of 400 student steps
(batch 256, lr 0.1, L1 on logits, no crop/flip), one adversarial generator step (batch
256, Adam 1e-3) before every 5 student steps; every setting is in
`dfad.default_config()`.

Run:  python -m nayer_jax.main --config nayer_jax/configs/dfad_cifar10_vgg11_r18.py \
        --config.teacher=DIR_OF_CONVERTED_VGG11 --workdir runs/dfad_cifar10_vgg11_r18
"""

from nayer_jax.configs.common import cifar


def get_config():
    return cifar("dfad", "cifar10", teacher="", student="resnet18", epochs=200)
