"""Fast on CIFAR10, any published pair (scripts/fast_cifar.sh); ':PAIR[:2|5|10]'.

220 epochs (20 warmup), KD 400 steps of batch 256 at lr 0.2, one synthesis batch of 256
per epoch, bn 10, bn_mmt 0.9, FOMAML meta updates, reset_l0; adv and oh are the script's
values for the pair's teacher (below).

Run:  python -m nayer_jax.main --config nayer_jax/configs/fast_cifar10.py:r34_r18:5 \
        --config.teacher=DIR_OF_CONVERTED_RESNET34 --workdir runs/fast_cifar10_r34_r18
PAIR is one of common.CIFAR10_PAIRS (r34_r18, vgg11_r18, wrn40_2_wrn16_1,
wrn40_2_wrn16_2, wrn40_2_wrn40_1; default r34_r18); the variant picks Fast-2/5/10
(g_steps with its lr_g, lr_z; default 5).
"""

from nayer_jax.configs.common import CIFAR10_PAIRS, cifar10_method, cifar10_pair
from nayer_jax.synthesis.fast import FAST_N, fast_n

# scripts/fast_cifar.sh, per teacher: (adv, oh)
_LOSS_WEIGHTS = {"resnet34": (1.33, 0.5), "vgg11": (1.0, 0.5), "wrn40_2": (1.1, 0.4)}


def get_config(arg: str | None = None):
    pair, variant = cifar10_pair(arg, variants=tuple(str(n) for n in sorted(FAST_N)))
    c = cifar10_method("fast", pair, epochs=220)
    c.adv_weight, c.oh_weight = _LOSS_WEIGHTS[CIFAR10_PAIRS[pair][0]]
    return fast_n(c, int(variant or 5))
