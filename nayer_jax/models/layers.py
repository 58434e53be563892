"""Layers with PyTorch's numerics, so converted checkpoints compute what they computed.

Conventions every model in the zoo follows (the converter relies on them):
- NHWC inputs; module names mirror the PyTorch state_dict keys, with a numeric key
  segment merged into the one before it ("layer1.0.conv1" -> layer1_0/conv1).
- Convolutions use explicit symmetric padding like torch (never "SAME": with stride 2,
  SAME pads (0, 1) where torch pads (1, 1)).
- BatchNorm: eps 1e-5, momentum 0.9 (torch momentum 0.1), batch statistics when training.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp


# torch's default init of Conv2d/Linear weights: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(features: int, kernel: int, stride: int = 1, padding: int | None = None,
         bias: bool = False, name: str | None = None, dtype=jnp.float32,
         kernel_init=nn.initializers.kaiming_normal()) -> nn.Conv:
    """torch.nn.Conv2d(k, stride, padding) equivalent; padding defaults to k // 2."""
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=bias, name=name, dtype=dtype,
                   kernel_init=kernel_init)


def batch_norm(train: bool, name: str | None = None, eps: float = 1e-5,
               momentum: float = 0.9, dtype=jnp.float32) -> nn.BatchNorm:
    """torch.nn.BatchNorm{1,2}d equivalent: normalizes over every axis but the last."""
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=eps,
                        name=name, dtype=dtype)


def dense(features: int, name: str | None = None, bias: bool = True, dtype=jnp.float32,
          kernel_init=nn.initializers.lecun_normal()) -> nn.Dense:
    """torch.nn.Linear equivalent."""
    return nn.Dense(features, use_bias=bias, name=name, dtype=dtype, kernel_init=kernel_init)


def max_pool(x, window: int, stride: int, padding: int = 0):
    """torch.nn.MaxPool2d(window, stride, padding) on NHWC (pads with -inf like torch)."""
    return nn.max_pool(x, (window, window), strides=(stride, stride),
                       padding=((padding, padding), (padding, padding)))


def global_avg_pool(x):
    """Adaptive average pool to 1x1 and flatten: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))


relu = nn.relu
leaky_relu = functools.partial(nn.leaky_relu, negative_slope=0.2)


def upsample_nearest2x(x):
    """torch nn.Upsample(scale_factor=2, mode="nearest") on NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
