"""Teacher forward pass that also returns the input statistics of every BatchNorm layer.

Data-free synthesis matches the batch statistics of each BN layer's *input* against the
layer's running statistics (DeepInversion, NAYER, Luo et al.). PyTorch code collects
them with forward hooks; here a flax method interceptor does the same for any
flax.linen model, without changing the model and without mutable state:

    logits, stats = apply_with_bn_stats(model, variables, images)
    loss = losses.bn_moment_loss(stats)          # differentiable w.r.t. images
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nayer_jax.losses import BNStats
from nayer_jax.models import batchnorm
from nayer_jax.errors import InputError

__all__ = ["apply_with_bn_stats", "BNStatsError"]


class BNStatsError(InputError):
    """A BatchNorm layer whose input statistics cannot be collected."""


def _feature_axes(module: nn.BatchNorm, ndim: int) -> tuple[int, ...]:
    axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    return tuple(sorted(a % ndim for a in axes))


def _running(module: nn.BatchNorm) -> tuple[jax.Array, jax.Array] | None:
    if module.has_variable("batch_stats", "mean") and module.has_variable("batch_stats", "var"):
        return (module.get_variable("batch_stats", "mean"),
                module.get_variable("batch_stats", "var"))
    return None


def apply_with_bn_stats(model: nn.Module, variables: Any, images: jax.Array,
                        **apply_kwargs) -> tuple[jax.Array, list[BNStats]]:
    """Eval-mode `model.apply(variables, images, train=False, **apply_kwargs)` plus BNStats.

    Returns (output, stats): one `BNStats` per `nn.BatchNorm.__call__` in forward order
    (a layer called twice appears twice). batch_mean/batch_var are the float32 mean and
    biased variance of the BN input over every axis but the feature axis, differentiable
    w.r.t. `images`; running_mean/running_var are the layer's 'batch_stats' (float32).
    `variables` are never mutated (no `mutable` collections). Works under jit/grad/vmap
    of the caller; BN layers inside lifted transforms (nn.scan, nn.remat, nn.vmap) are
    not supported (their statistics would be tracers of the inner transform).
    `train` defaults to False; pass `train=...` in apply_kwargs only for models whose
    call signature differs.
    """
    records: list[BNStats] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["x"]
        if kwargs.get("mask") is not None:
            raise BNStatsError(f"BatchNorm '{module.name}': masked BN input statistics are "
                               "not supported; expected mask=None")
        running = _running(module)
        out = next_fun(*args, **kwargs)
        if running is None:  # created by this call (model.init inside the caller)
            running = _running(module)
        if running is None:
            raise BNStatsError(f"BatchNorm '{module.name}' has no batch_stats/mean and var; "
                               "expected variables with a 'batch_stats' collection")
        xf = jnp.asarray(x, jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))
        feature = _feature_axes(module, xf.ndim)
        if feature == (xf.ndim - 1,):  # channels last: sums as matrix-vector products on CPU
            mean, var = batchnorm.batch_moments(xf, fast_variance=False)
        else:
            reduce = tuple(a for a in range(xf.ndim) if a not in feature)
            mean = jnp.mean(xf, axis=reduce)
            var = jnp.mean(jnp.square(xf - jnp.expand_dims(mean, reduce)), axis=reduce)
        r_mean, r_var = (jnp.asarray(r, mean.dtype).reshape(mean.shape) for r in running)
        records.append(BNStats(mean, var, r_mean, r_var))
        return out

    kwargs = {"train": False, **apply_kwargs}
    with nn.intercept_methods(interceptor):
        out = model.apply(variables, images, **kwargs)
    return out, records
