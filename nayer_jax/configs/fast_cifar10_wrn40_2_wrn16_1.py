"""Fast, CIFAR10, wrn40_2 teacher -> wrn16_1 student (scripts/fast_cifar.sh).

220 epochs (20 warmup), KD 400 steps of batch 256 at lr 0.2, one synthesis batch of 256
per epoch, bn 10, oh 0.4, adv 1.1 (the script's values for this teacher), bn_mmt 0.9,
FOMAML meta updates, reset_l0.

Run:  python -m nayer_jax.main --config nayer_jax/configs/fast_cifar10_wrn40_2_wrn16_1.py:5 \
        --config.teacher=DIR_OF_CONVERTED_WRN40_2 --workdir runs/fast_cifar10_wrn40_2_wrn16_1
The argument after ':' picks Fast-2/5/10 (g_steps with its lr_g, lr_z; default 5).
"""

from nayer_jax.configs.common import cifar
from nayer_jax.synthesis.fast import fast_n


def get_config(variant: str | None = None):
    c = cifar("fast", "cifar10", teacher="", student="wrn16_1", epochs=220)
    c.adv_weight = 1.1
    c.oh_weight = 0.4
    return fast_n(c, int(variant or 5))
