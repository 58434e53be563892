"""Pre-activation Wide ResNet WRN-d-k for CIFAR (wrn16_1, wrn16_2, wrn40_1, wrn40_2).

Layout of Fast-Datafree `wresnet.py` (from ZeroShotKnowledgeTransfer / Wei Yang): conv1,
then block1..3, each `NetworkBlock.layer` of n = (d - 4) / 6 BasicBlocks (16k/32k/64k
channels, stride 2 at the first block of block2/3), final bn1 + ReLU, average pool, fc.
Dropout is 0 in every published setting, so it is omitted (it has no parameters).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from nayer_jax.models import layers
from nayer_jax.models.registry import CIFAR_MEAN, CIFAR_STD, ModelSpec, register


class PreActBlock(nn.Module):
    """WRN BasicBlock with the reference's asymmetric shortcut.

    When in == out channels the shortcut is the raw input x; otherwise both the residual
    branch and the 1x1 `convShortcut` consume relu(bn1(x)) (the original code rebinds x).
    """
    out_planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        equal_in_out = x.shape[-1] == self.out_planes
        act = layers.relu(layers.batch_norm(train, name="bn1")(x))
        out = layers.conv(self.out_planes, 3, self.stride, name="conv1")(act)
        out = layers.relu(layers.batch_norm(train, name="bn2")(out))
        out = layers.conv(self.out_planes, 3, 1, name="conv2")(out)
        if equal_in_out:
            shortcut = x
        else:
            shortcut = layers.conv(self.out_planes, 1, self.stride, padding=0,
                                   name="convShortcut")(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage; its blocks are `layer_{i}` so keys read block{b}.layer.{i}.* as in torch."""
    out_planes: int
    num_layers: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_layers):
            x = PreActBlock(self.out_planes, self.stride if i == 0 else 1,
                            name=f"layer_{i}")(x, train)
        return x


class WideResNet(nn.Module):
    """WRN-depth-widen_factor; depth must be 6n + 4."""
    depth: int
    widen_factor: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {self.depth}")
        n = (self.depth - 4) // 6
        k = self.widen_factor
        x = layers.conv(16, 3, 1, name="conv1")(x)
        for b, (planes, stride) in enumerate(((16 * k, 1), (32 * k, 2), (64 * k, 2)), start=1):
            x = NetworkBlock(planes, n, stride, name=f"block{b}")(x, train)
        x = layers.relu(layers.batch_norm(train, name="bn1")(x))
        x = layers.global_avg_pool(x)
        return layers.dense(self.num_classes, name="fc")(x)


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register(ModelSpec(name=f"wrn{_depth}_{_k}",
                       constructor=lambda c, d=_depth, k=_k: WideResNet(d, k, num_classes=c),
                       num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD))
