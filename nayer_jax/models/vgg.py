"""VGG-11 with BatchNorm for CIFAR, as Fast-Datafree's `vgg11` (RepDistiller `vgg11_bn`).

Five blocks `block0..block4` of [conv3x3 (bias) + BN] with ReLU between and after them;
inside a block the torch Sequential is [conv, BN, ReLU, conv, BN] so the keys are
block{b}.{3j} (conv) and block{b}.{3j+1} (BN). Max-pool 2x2 after blocks 0-2, and after
block 3 only for 64x64 inputs (as the reference does); adaptive average pool; `classifier`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from nayer_jax.models import layers
from nayer_jax.models.registry import CIFAR_MEAN, CIFAR_STD, ModelSpec, register

# RepDistiller cfg 'A' (VGG-11): output channels of the convolutions of each block.
VGG11_CFG: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))


class VGG(nn.Module):
    """VGG with BN in RepDistiller's five-block layout."""
    cfg: Sequence[Sequence[int]] = VGG11_CFG
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        height = x.shape[1]
        for b, widths in enumerate(self.cfg):
            for j, width in enumerate(widths):
                x = layers.conv(width, 3, 1, bias=True, name=f"block{b}_{3 * j}")(x)
                x = layers.batch_norm(train, name=f"block{b}_{3 * j + 1}")(x)
                x = layers.relu(x)
            if b < 3 or (b == 3 and height == 64):
                x = layers.max_pool(x, 2, 2)
        x = layers.global_avg_pool(x)
        return layers.dense(self.num_classes, name="classifier")(x)


register(ModelSpec(name="vgg11", constructor=lambda c: VGG(VGG11_CFG, num_classes=c),
                   num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD))
