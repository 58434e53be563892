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
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nayer_jax.models import cpu_conv
from nayer_jax.models.batchnorm import BatchNorm


# torch's default init of Conv2d/Linear weights: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(features: int, kernel: int, stride: int = 1, padding: int | None = None,
         bias: bool = False, name: str | None = None, dtype=jnp.float32,
         kernel_init=nn.initializers.kaiming_normal()) -> nn.Conv:
    """torch.nn.Conv2d(k, stride, padding) equivalent; padding defaults to k // 2."""
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=bias, name=name, dtype=dtype,
                   kernel_init=kernel_init, conv_general_dilated=conv_op())


def batch_norm(train: bool, name: str | None = None, eps: float = 1e-5,
               momentum: float = 0.9, dtype=jnp.float32, use_scale: bool = True,
               use_bias: bool = True) -> BatchNorm:
    """torch.nn.BatchNorm{1,2}d equivalent: normalizes over every axis but the last
    (`batchnorm.BatchNorm`: nn.BatchNorm with fast per-channel sums on CPU)."""
    return BatchNorm(use_running_average=not train, momentum=momentum, epsilon=eps,
                     name=name, dtype=dtype, use_scale=use_scale, use_bias=use_bias)


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


# Taps of a 3x3 kernel row (dy = -1, 0, +1) that reach each output phase of a nearest x2
# upsampling, as 2 taps on the low-res input: phase 0 reads rows (i-1, i), phase 1 (i, i+1).
_PHASE_TAPS = ((( 1, 0, 0), (0, 1, 1)),   # phase 0: W[-1], W[0] + W[1]
               (( 1, 1, 0), (0, 0, 1)))   # phase 1: W[-1] + W[0], W[1]
_PHASE_PAD = ((1, 0), (0, 1))              # low-res padding of phase 0 / phase 1


class UpsampleConv3x3(nn.Module):
    """nn.Upsample(scale_factor=2, mode="nearest") -> nn.Conv2d(3x3, padding 1), exactly.

    Each output pixel (2i+py, 2j+px) of the conv on the upsampled image sees only 2x2
    distinct low-res pixels, so the layer runs as four 2x2 convolutions on the input (one
    per phase, taps summed per `_PHASE_TAPS`) interleaved depth-to-space: 16 instead of 36
    multiply-adds per input pixel and output channel, 2.25x fewer, and no upsampled copy.
    The parameters are the 3x3 conv's (`kernel` (3, 3, C_in, C_out), `bias`), named and
    initialized as `conv(features, 3)`'s, so checkpoints and converted weights are unchanged.
    """
    features: int
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.kaiming_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):  # x: (N, H, W, C_in) -> (N, 2H, 2W, features)
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)  # (phase, tap, 3)
        rows = []
        for py in range(2):
            phases = []
            for px in range(2):
                k = jnp.einsum("ar,bs,rsio->abio", taps[py], taps[px], kernel)  # (2, 2, C_in, C_out)
                phases.append(cpu_conv.conv_nhwc(x, k, (1, 1), (_PHASE_PAD[py], _PHASE_PAD[px])))  # (N, H, W, C_out)
            rows.append(jnp.stack(phases, axis=3))  # (N, H, W, px, C_out)
        n, h, w, _ = x.shape
        y = jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, self.features)  # (N, H, py, W, px, C)
        return y if bias is None else y + bias


def upsample_conv3x3(features: int, bias: bool = False, name: str | None = None,
                     dtype=jnp.float32,
                     kernel_init=nn.initializers.kaiming_normal()) -> UpsampleConv3x3:
    """`conv(features, 3)` applied to `upsample_nearest2x(x)`, computed without the upsampling."""
    return UpsampleConv3x3(features, use_bias=bias, dtype=dtype, kernel_init=kernel_init, name=name)


def conv_op():
    """The convolution `conv` builds nn.Conv with: on one CPU device (and unless env
    NAYER_JAX_XLA_DEFAULTS=0, as for `cpu_defaults`) `cpu_conv.conv_general_dilated`, XLA:CPU
    convolutions restructured where they measured faster (that module says which);
    elsewhere None, i.e. nn.Conv's `lax.conv_general_dilated`. Read when a model is traced."""
    from nayer_jax import cpu_defaults

    if not cpu_defaults.enabled(os.environ.get(cpu_defaults.ENV)):
        return None
    on_one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    return cpu_conv.conv_general_dilated if on_one_cpu else None
