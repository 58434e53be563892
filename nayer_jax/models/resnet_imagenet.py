"""torchvision-layout ImageNet ResNets (resnet18/34/50_imagenet), v1.5 bottlenecks.

conv1 7x7/2 (pad 3) + bn1 + ReLU + max-pool 3x3/2 (pad 1), layer1..4 (64/128/256/512
base width, stride 2 at the first block of layers 2-4), global average pool, `fc`.
Projection shortcuts are `downsample.0` (conv1x1, stride) / `downsample.1` (BN); the
Bottleneck puts its stride on conv2 (3x3) like torchvision >= 0.2 ("ResNet v1.5").
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from nayer_jax.models import layers
from nayer_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register


class BasicBlock(nn.Module):
    """torchvision BasicBlock (expansion 1); also the CIFAR ResNet-18/34 block, whose
    projection shortcut is keyed `shortcut.0/1` instead of `downsample.0/1`."""
    planes: int
    stride: int = 1
    shortcut_name: str = "downsample"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = layers.conv(self.planes, 3, self.stride, name="conv1")(x)
        out = layers.relu(layers.batch_norm(train, name="bn1")(out))
        out = layers.conv(self.planes, 3, 1, name="conv2")(out)
        out = layers.batch_norm(train, name="bn2")(out)
        return layers.relu(out + _shortcut(x, self.planes, self.stride, train, self.shortcut_name))


class Bottleneck(nn.Module):
    """torchvision Bottleneck (expansion 4), stride on the 3x3 conv."""
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = layers.conv(self.planes, 1, 1, padding=0, name="conv1")(x)
        out = layers.relu(layers.batch_norm(train, name="bn1")(out))
        out = layers.conv(self.planes, 3, self.stride, name="conv2")(out)
        out = layers.relu(layers.batch_norm(train, name="bn2")(out))
        out = layers.conv(self.planes * 4, 1, 1, padding=0, name="conv3")(out)
        out = layers.batch_norm(train, name="bn3")(out)
        return layers.relu(out + _shortcut(x, self.planes * 4, self.stride, train))


def _shortcut(x: jax.Array, features: int, stride: int, train: bool,
              name: str = "downsample") -> jax.Array:
    """Identity, or NAME.0/1 (conv1x1 + BN) when the shape changes; call inside a block."""
    if stride == 1 and x.shape[-1] == features:
        return x
    x = layers.conv(features, 1, stride, padding=0, name=f"{name}_0")(x)
    return layers.batch_norm(train, name=f"{name}_1")(x)


class ResNetImageNet(nn.Module):
    """torchvision ResNet for 224x224 inputs (any size >= 32 works: the pool is global)."""
    block: type
    num_blocks: Sequence[int]
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = layers.conv(64, 7, 2, padding=3, name="conv1")(x)
        x = layers.relu(layers.batch_norm(train, name="bn1")(x))
        x = layers.max_pool(x, 3, 2, padding=1)
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), self.num_blocks), start=1):
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                x = self.block(planes, stride, name=f"layer{stage}_{i}")(x, train)
        x = layers.global_avg_pool(x)
        return layers.dense(self.num_classes, name="fc")(x)


_ARCHS = {"resnet18_imagenet": (BasicBlock, (2, 2, 2, 2)),
          "resnet34_imagenet": (BasicBlock, (3, 4, 6, 3)),
          "resnet50_imagenet": (Bottleneck, (3, 4, 6, 3))}

for _name, (_block, _blocks) in _ARCHS.items():
    register(ModelSpec(name=_name,
                       constructor=lambda c, bl=_block, b=_blocks: ResNetImageNet(bl, b, num_classes=c),
                       num_classes=1000, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD))
