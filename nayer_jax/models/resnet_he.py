"""He et al. (2016) CIFAR ResNet-(6n+2) with option-A shortcuts (resnet20..110).

Mirrors the widely used akamaster/pytorch_resnet_cifar10 layout (the shared teachers):
conv3x3(16)+BN+ReLU, three stages of n BasicBlocks (16/32/64 channels, stride 2 at the
first block of stages 2 and 3), global average pool, linear. The option-A shortcut has
no parameters: subsample x[:, ::2, ::2] and zero-pad channels by planes // 4 per side.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from nayer_jax.models import layers
from nayer_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register


class BasicBlockA(nn.Module):
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out = layers.conv(self.planes, 3, self.stride, name="conv1")(x)
        out = layers.relu(layers.batch_norm(train, name="bn1")(out))
        out = layers.conv(self.planes, 3, 1, name="conv2")(out)
        out = layers.batch_norm(train, name="bn2")(out)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            pad = self.planes // 4
            shortcut = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return layers.relu(out + shortcut)


class ResNetHe(nn.Module):
    depth: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {self.depth}")
        n = (self.depth - 2) // 6
        x = layers.conv(16, 3, name="conv1")(x)
        x = layers.relu(layers.batch_norm(train, name="bn1")(x))
        for stage, planes in enumerate((16, 32, 64), start=1):
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                x = BasicBlockA(planes, stride, name=f"layer{stage}_{i}")(x, train)
        x = layers.global_avg_pool(x)
        return layers.dense(self.num_classes, name="linear")(x)


for _depth in (20, 32, 44, 56, 110):
    register(ModelSpec(name=f"resnet{_depth}",
                       constructor=lambda c, d=_depth: ResNetHe(depth=d, num_classes=c),
                       num_classes=10, input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD))
