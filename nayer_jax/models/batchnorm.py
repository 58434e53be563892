"""BatchNorm whose per-channel reductions run as matrix-vector products on XLA:CPU.

On XLA:CPU a sum over (N, H, W) of a (128, 32, 32, 16) activation takes ~4 ms as a
reduce (the tree-reduction rewrite turns it into a reduce-window plus a reduce) and
~0.25 ms as `ones(N) @ x.reshape(N, H*W*C)` followed by a small sum over H*W
(experiments/probe_bn_reductions.py). Training-mode BatchNorm reduces four times per
layer: mean and mean of squares forward, sum(dy) and sum(dy * x) backward. Here:

- `channel_sum` is that reduction (a plain `jnp.sum` off CPU, where reductions are fast
  and a dot's default precision may be below float32);
- `scale_shift(x, a, b) = x * a + b` carries a custom VJP whose two parameter sums go
  through `channel_sum` (autodiff would emit plain reduces for them);
- `batch_moments` gives mean and variance whose gradients are broadcasts only.

`BatchNorm` is nn.BatchNorm with these: the same fields, variables ('params': scale,
bias; 'batch_stats': mean, var), running-average update and fast variance as flax's,
and normalization as torch computes it (`x * a + b` with a = scale / sqrt(var + eps),
b = bias - mean * a). It is a subclass, so code that finds BN layers by
`isinstance(m, nn.BatchNorm)` (nayer_jax.teacher's statistics hook) still does.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


@functools.lru_cache(maxsize=None)
def _dot_reductions(backend: str, device_count: int, env_value: str | None) -> bool:
    from nayer_jax import cpu_defaults

    return cpu_defaults.enabled(env_value) and backend == "cpu" and device_count == 1


def dot_reductions() -> bool:
    """Whether `channel_sum` uses the matrix-vector form: on one CPU device, unless env
    NAYER_JAX_XLA_DEFAULTS=0 (the same rule as layers.conv_op). Read at trace time."""
    from nayer_jax import cpu_defaults

    return _dot_reductions(jax.default_backend(), jax.device_count(),
                           os.environ.get(cpu_defaults.ENV))


def channel_sum(x: jax.Array) -> jax.Array:
    """Sum over every axis but the last, in (at least) float32: (..., C) -> (C,)."""
    x = _f32(x)
    if x.ndim < 2 or not dot_reductions():
        return jnp.sum(x, axis=tuple(range(x.ndim - 1)))
    flat = x.reshape(x.shape[0], -1)                      # (N, H*W*C)
    per_position = jnp.ones((x.shape[0],), x.dtype) @ flat  # (H*W*C,), a matrix-vector product
    return jnp.sum(per_position.reshape(-1, x.shape[-1]), axis=0)


def channel_mean(x: jax.Array) -> jax.Array:
    return channel_sum(x) / (x.size // x.shape[-1])


def batch_moments(x: jax.Array, fast_variance: bool = True) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance over every axis but the last, float32.

    fast_variance: E[x^2] - E[x]^2 clipped at 0 (flax's default, one pass); else
    E[(x - E[x])^2]. In the two-pass form the mean inside the square is a constant to
    autodiff: d var / d mean = -2 E[x - mean] = 0, and leaving it out keeps the gradient
    a broadcast (the exact one) instead of another reduction.
    """
    mean = channel_mean(x)
    if fast_variance:
        return mean, jnp.maximum(channel_mean(jnp.square(_f32(x))) - jnp.square(mean), 0.0)
    return mean, channel_mean(jnp.square(_f32(x) - jax.lax.stop_gradient(mean)))


@jax.custom_vjp
def scale_shift(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """x * a + b with per-channel a, b of shape (C,), in the promoted dtype."""
    return x * a + b


def _scale_shift_fwd(x, a, b):
    return x * a + b, (x, a, b)


def _scale_shift_bwd(residuals, dy):
    x, a, b = residuals
    dx = (dy * a).astype(x.dtype)
    da = channel_sum(dy * x).astype(a.dtype)
    db = channel_sum(dy).astype(b.dtype)
    return dx, da, db


scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


class BatchNorm(nn.BatchNorm):
    """nn.BatchNorm (feature axis last, no mask or axis_name) with `channel_sum` reductions."""

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        if mask is not None or self.axis_name is not None or self.axis not in (-1, x.ndim - 1):
            raise ValueError(f"BatchNorm '{self.name}': mask, axis_name and a feature axis "
                             "other than the last are not supported; use flax.linen.BatchNorm")
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = batch_moments(x, self.use_fast_variance)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        a = jax.lax.rsqrt(var + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, features, self.param_dtype)
            a = a * scale
            args.append(scale)
        b = -mean * a
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype)
            b = b + bias
            args.append(bias)
        dtype = nn.dtypes.canonicalize_dtype(*args, dtype=self.dtype)
        return scale_shift(x, a, b).astype(dtype)
