"""CIFAR ResNet-18/34 (the DAFL / Fast-Datafree / NAYER teachers and students).

Layout of Fast-Datafree `datafree/models/classifiers/resnet.py` (from DAFL): conv3x3(64)
stride 1 + BN + ReLU, no max-pool, four stages of BasicBlocks (64/128/256/512 channels,
stride 2 at the first block of stages 2-4), global average pool, `linear`. Where the shape
changes the shortcut is `nn.Sequential(conv1x1(stride), BN)`, keys `shortcut.0/1`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from nayer_jax.models import layers
from nayer_jax.models.registry import CIFAR_MEAN, CIFAR_STD, ModelSpec, register
from nayer_jax.models.resnet_imagenet import BasicBlock


class ResNetCifar(nn.Module):
    """ResNet with a 3x3 stem and no max-pool, for 32x32 inputs."""
    num_blocks: Sequence[int]
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = layers.conv(64, 3, 1, name="conv1")(x)
        x = layers.relu(layers.batch_norm(train, name="bn1")(x))
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), self.num_blocks), start=1):
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                x = BasicBlock(planes, stride, shortcut_name="shortcut",
                               name=f"layer{stage}_{i}")(x, train)
        x = layers.global_avg_pool(x)
        return layers.dense(self.num_classes, name="linear")(x)


_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}

for _name, _blocks in _BLOCKS.items():
    register(ModelSpec(name=_name,
                       constructor=lambda c, b=_blocks: ResNetCifar(num_blocks=b, num_classes=c),
                       num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD))
