"""Pure functional losses of data-free distillation (NAYER, DeepInversion, Luo et al., DAFL).

Every function is a pure jnp computation: no model code, no hidden state, safe under
`jax.jit`, `jax.vmap` and `jax.grad`. Inputs in bf16/fp16 are promoted to float32 before
any reduction (float64 stays float64 when x64 is enabled), so the returned scalar is
float32 for low-precision inputs.

Conventions: logits are (N, C); images are NHWC; BN statistics are per channel.

Momentum statistics (NAYER `bn_mmt`) under `jax.jit`
-----------------------------------------------------
NAYER matches a blend of the current batch statistic and an exponential average of the
statistics of earlier synthesis loops; the first loop has no average yet. Two ways to say
"no momentum stats yet":

* Eagerly, or accepting one extra trace: pass `momentum_stats=None` (a static pytree
  structure, not a traced branch).
* With a fixed pytree structure (a `lax.scan`/`fori_loop` carry, one compiled step):
  always pass arrays, e.g. `empty_momentum_stats(stats)` (zeros), together with the
  traced flag `has_momentum_stats` (a bool scalar). When it is False the blend is
  exactly the batch statistic and `update_momentum_stats` returns the batch statistics,
  whatever the (placeholder) arrays hold.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from nayer_jax.errors import InputError

Array = jax.Array
MomentumStats = Sequence[tuple[Array, Array]]  # per BN layer: (mean, var)

__all__ = [
    "LossInputError", "BNStats", "bn_moment_loss", "update_momentum_stats", "empty_momentum_stats",
    "kl_divergence", "adversarial_kl", "soft_cross_entropy", "total_variation",
    "l2_prior", "class_balance", "activation_loss",
]


class LossInputError(InputError):
    """Arguments a loss cannot use (mismatched shapes, a non-positive temperature)."""


class BNStats(NamedTuple):
    """Statistics of one BatchNorm layer's input, per channel (shape (C,)).

    batch_mean/batch_var: mean and *biased* variance of the BN input over every axis but
    the channel axis (N, H, W); running_mean/running_var: the layer's stored statistics.
    """
    batch_mean: Array
    batch_var: Array
    running_mean: Array
    running_var: Array


def _f32(x) -> Array:
    """x as an array of at least float32 precision (bf16/fp16/int -> float32)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_norm(x: Array) -> Array:
    """||x||_2 over all elements, with gradient 0 (torch's subgradient) at x == 0, not NaN."""
    sq = jnp.sum(jnp.square(x))
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _blend(batch: Array, mmt: Array | None, momentum, active) -> Array:
    """(1 - m) * batch + m * stop_gradient(mmt) where `active`, else batch."""
    if mmt is None:
        return batch
    mmt = jax.lax.stop_gradient(_f32(mmt))
    blended = (1.0 - momentum) * batch + momentum * mmt
    return jnp.where(active, blended, batch)


def bn_moment_loss(stats: Sequence[BNStats], form: str = "l2",
                   momentum_stats: MomentumStats | None = None, momentum: float | Array = 0.0,
                   has_momentum_stats: bool | Array = True, eps: float = 1e-5) -> Array:
    """BN feature-statistics loss summed over layers (DeepInversion / NAYER / Luo et al.).

    With m̂ and v̂ the matched batch statistics of a layer (see momentum below):

    * form="l2" (DeepInversion, NAYER): sum_l ||m̂_l - mu_run,l||_2 + ||v̂_l - var_run,l||_2
      -- the Euclidean *norm*, not its square.
    * form="gaussian_kl" (Luo et al. 2020): sum_l sum_c KL(N(m̂, v̂) || N(mu_run, var_run))
      = 0.5 * [log((var_run+eps)/(v̂+eps)) + (v̂+eps + (m̂-mu_run)^2)/(var_run+eps) - 1].

    Momentum (NAYER `bn_mmt`): with `momentum_stats` = per layer (mean_mmt, var_mmt) from
    earlier synthesis loops (see `update_momentum_stats`), the matched statistic is
    m̂ = (1 - momentum) * batch_mean + momentum * mean_mmt (same for the variance);
    without them (None, or traced `has_momentum_stats` False) m̂ = batch_mean. The
    momentum statistics are constants (stop_gradient).
    """
    if form not in ("l2", "gaussian_kl"):
        raise LossInputError(f"bn_moment_loss: form must be 'l2' or 'gaussian_kl', got {form!r}")
    stats = list(stats)
    if not stats:
        raise LossInputError("bn_moment_loss: no BN statistics given (a model without BatchNorm?)")
    if momentum_stats is not None and len(momentum_stats) != len(stats):
        raise LossInputError(f"bn_moment_loss: {len(momentum_stats)} momentum_stats entries "
                             f"for {len(stats)} BN layers; expected one (mean, var) per layer")
    momentum = _f32(momentum)
    total = jnp.zeros((), jnp.float32)
    for i, s in enumerate(stats):
        mean_mmt, var_mmt = (None, None) if momentum_stats is None else momentum_stats[i]
        mean = _blend(_f32(s.batch_mean), mean_mmt, momentum, has_momentum_stats)
        var = _blend(_f32(s.batch_var), var_mmt, momentum, has_momentum_stats)
        r_mean, r_var = _f32(s.running_mean), _f32(s.running_var)
        if form == "l2":
            total = total + _safe_norm(mean - r_mean) + _safe_norm(var - r_var)
        else:
            v, rv = var + eps, r_var + eps
            kl = 0.5 * (jnp.log(rv) - jnp.log(v) + (v + jnp.square(mean - r_mean)) / rv - 1.0)
            total = total + jnp.sum(kl)
    return total


def update_momentum_stats(momentum_stats: MomentumStats | None, stats: Sequence[BNStats],
                          momentum: float | Array,
                          has_momentum_stats: bool | Array = True) -> list[tuple[Array, Array]]:
    """NAYER `update_mmt`: the exponential average of batch statistics across loops.

    First call (momentum_stats None, or traced `has_momentum_stats` False):
    (batch_mean, batch_var) per layer. Later: momentum * old + (1 - momentum) * new.
    The result is stop_gradient'd (it is state, not part of any loss's graph).
    """
    stats = list(stats)
    if momentum_stats is not None and len(momentum_stats) != len(stats):
        raise LossInputError(f"update_momentum_stats: {len(momentum_stats)} momentum_stats "
                             f"entries for {len(stats)} BN layers")
    momentum = _f32(momentum)
    out = []
    for i, s in enumerate(stats):
        new_mean, new_var = _f32(s.batch_mean), _f32(s.batch_var)
        if momentum_stats is not None:
            old_mean, old_var = (_f32(a) for a in momentum_stats[i])
            new_mean = jnp.where(has_momentum_stats,
                                 momentum * old_mean + (1.0 - momentum) * new_mean, new_mean)
            new_var = jnp.where(has_momentum_stats,
                                momentum * old_var + (1.0 - momentum) * new_var, new_var)
        out.append((jax.lax.stop_gradient(new_mean), jax.lax.stop_gradient(new_var)))
    return out


def empty_momentum_stats(stats: Sequence[BNStats]) -> list[tuple[Array, Array]]:
    """Zero placeholders shaped like the batch statistics: the fixed-structure "none yet"
    value to pass with `has_momentum_stats=False` (works on `jax.eval_shape` output too)."""
    return [(jnp.zeros(s.batch_mean.shape, jnp.float32), jnp.zeros(s.batch_var.shape, jnp.float32))
            for s in stats]


def _per_sample_kl(student_logits: Array, teacher_logits: Array, temperature) -> Array:
    """KL(softmax(t/T) || softmax(s/T)) per row, shape (N,)."""
    log_ps = jax.nn.log_softmax(_f32(student_logits) / temperature, axis=-1)
    log_pt = jax.nn.log_softmax(_f32(teacher_logits) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)


def _check_same_shape(fn: str, a_name: str, a, b_name: str, b) -> None:
    """Refuse operands of different shapes (static under jit) instead of broadcasting them."""
    if jnp.shape(a) != jnp.shape(b):
        raise LossInputError(f"{fn}: {a_name} has shape {jnp.shape(a)} but {b_name} has shape "
                             f"{jnp.shape(b)}; expected the same (N, C)")


def _check_temperature(fn: str, temperature) -> None:
    """Refuse a concrete temperature <= 0 or NaN (a traced one cannot be checked here)."""
    if isinstance(temperature, numbers.Real) and not temperature > 0:
        raise LossInputError(f"{fn}: temperature {temperature}; expected a positive number")


def kl_divergence(student_logits: Array, teacher_logits: Array,
                  temperature: float | Array = 1.0) -> Array:
    """Distillation loss: T^2 * mean_n KL(softmax(t_n/T) || softmax(s_n/T)).

    Equals torch `F.kl_div(log_softmax(s/T), softmax(t/T), reduction='batchmean') * T**2`.
    The teacher logits are not stop_gradient'd: callers that must not differentiate
    through the teacher wrap them. Shapes must match; a Python/numpy temperature must be
    positive (both are checked at trace time, so jit/grad are unaffected).
    """
    _check_same_shape("kl_divergence", "student_logits", student_logits,
                      "teacher_logits", teacher_logits)
    _check_temperature("kl_divergence", temperature)
    temperature = _f32(temperature)
    return jnp.mean(_per_sample_kl(student_logits, teacher_logits, temperature)) * temperature ** 2


def adversarial_kl(student_logits: Array, teacher_logits: Array) -> Array:
    """NAYER/Fast adversarial loss: -mean_n [KL(softmax(t_n) || softmax(s_n)) * mask_n].

    mask_n = 1 where argmax(s_n) == argmax(t_n), else 0 (a constant, T = 1): the generator
    maximizes disagreement only on samples the student still gets "right". Reference:
    `-(kldiv(s, t, reduction='none').sum(1) * mask).mean()`.
    """
    _check_same_shape("adversarial_kl", "student_logits", student_logits,
                      "teacher_logits", teacher_logits)
    mask = (jnp.argmax(student_logits, axis=-1) == jnp.argmax(teacher_logits, axis=-1))
    kl = _per_sample_kl(student_logits, teacher_logits, jnp.float32(1.0))
    return -jnp.mean(kl * mask.astype(kl.dtype))


def soft_cross_entropy(logits: Array, target_probs: Array) -> Array:
    """Cross-entropy with soft (or one-hot) targets: mean_n -sum_c p_nc * log_softmax(z_n)_c."""
    _check_same_shape("soft_cross_entropy", "logits", logits, "target_probs", target_probs)
    log_p = jax.nn.log_softmax(_f32(logits), axis=-1)
    return jnp.mean(-jnp.sum(_f32(target_probs) * log_p, axis=-1))


def _tv_diffs(images: Array) -> tuple[Array, ...]:
    """DeepInversion's four neighbour differences on NHWC: along W, along H, two diagonals."""
    x = _f32(images)
    return (x[:, :, :-1, :] - x[:, :, 1:, :],
            x[:, :-1, :, :] - x[:, 1:, :, :],
            x[:, 1:, :-1, :] - x[:, :-1, 1:, :],
            x[:, :-1, :-1, :] - x[:, 1:, 1:, :])


def total_variation(images: Array, norm: str = "l2") -> Array:
    """DeepInversion's image TV prior on NHWC images, over the whole batch.

    norm="l2" (default, DeepInversion's `loss_var_l2`): sum over the four neighbour
    differences d (horizontal, vertical, two diagonals) of ||d||_2 (Frobenius norm of the
    whole batch's differences, not squared). norm="l1" (`loss_var_l1`): sum of mean |d|.
    """
    diffs = _tv_diffs(images)
    if norm == "l2":
        return sum(_safe_norm(d) for d in diffs)
    if norm == "l1":
        return sum(jnp.mean(jnp.abs(d)) for d in diffs)
    raise LossInputError(f"total_variation: norm must be 'l2' or 'l1', got {norm!r}")


def l2_prior(images: Array) -> Array:
    """DeepInversion's l2 image prior: mean over the batch of each image's ||x_n||_2
    (torch `x.view(N, -1).norm(dim=1).mean()`)."""
    x = _f32(images).reshape(images.shape[0], -1)
    return jnp.mean(jax.vmap(_safe_norm)(x))


def class_balance(logits: Array) -> Array:
    """DAFL information-entropy loss: sum_c p̄_c log p̄_c with p̄ = mean_n softmax(z_n).

    The negative entropy of the batch's mean prediction; minimizing it balances classes
    (minimum -log C at a uniform p̄). Natural log; DAFL's code uses log10, i.e. this
    value / ln(10).
    """
    p_mean = jnp.mean(jax.nn.softmax(_f32(logits), axis=-1), axis=0)
    positive = p_mean > 0  # 0 * log 0 = 0, with a finite gradient even on underflow
    log_p = jnp.log(jnp.where(positive, p_mean, 1.0))
    return jnp.sum(jnp.where(positive, p_mean * log_p, 0.0))


def activation_loss(features: Array) -> Array:
    """DAFL activation loss: -mean |f| over every element of the features (the penultimate
    layer's output); minimizing it favours strongly activating inputs."""
    return -jnp.mean(jnp.abs(_f32(features)))


def jensen_shannon(student_logits: Array, teacher_logits: Array,
                   temperature: float | Array = 3.0, clip: float = 0.01) -> Array:
    """DeepInversion's Jensen-Shannon divergence at temperature T, with its clamps.

    P = softmax(s/T), Q = softmax(t/T), M = (P + Q) / 2, then P, Q, M clamped to
    [clip, 1 - clip] (after M is formed); returns mean_n [KL(M || P) + KL(M || Q)] / 2, as
    the reference `0.5 * kl_div(log P, M, 'batchmean') + 0.5 * kl_div(log Q, M, 'batchmean')`.
    """
    _check_same_shape("jensen_shannon", "student_logits", student_logits,
                      "teacher_logits", teacher_logits)
    _check_temperature("jensen_shannon", temperature)
    temperature = _f32(temperature)
    p = jax.nn.softmax(_f32(student_logits) / temperature, axis=-1)
    q = jax.nn.softmax(_f32(teacher_logits) / temperature, axis=-1)
    m = jnp.clip(0.5 * (p + q), clip, 1.0 - clip)
    p, q = jnp.clip(p, clip, 1.0 - clip), jnp.clip(q, clip, 1.0 - clip)
    log_m = jnp.log(m)
    kl_mp = jnp.sum(m * (log_m - jnp.log(p)), axis=-1)
    kl_mq = jnp.sum(m * (log_m - jnp.log(q)), axis=-1)
    return jnp.mean(0.5 * kl_mp + 0.5 * kl_mq)


def competition_loss(student_logits: Array, teacher_logits: Array,
                     temperature: float | Array = 3.0) -> Array:
    """Adaptive DeepInversion's competition term: 1 - clip(JS(student, teacher), 0, 1)
    (`jensen_shannon` at T = 3); minimizing it drives student and teacher apart."""
    js = jensen_shannon(student_logits, teacher_logits, temperature)
    return 1.0 - jnp.clip(js, 0.0, 1.0)
