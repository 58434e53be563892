"""Convolutions restructured for XLA:CPU, with the values and gradients of `lax.conv`.

On one CPU device `layers.conv` runs `conv_general_dilated` below instead of
`lax.conv_general_dilated`. Each rewrite was measured against XLA:CPU's own kernels
(experiments/results/README.md, issue 15) and applies only where it won:

1. Forward, few input channels (C_in <= NARROW, e.g. an RGB stem): the k*k*C_in
   broadcast multiply-adds as one fused elementwise loop (3x3, 3 -> 16, batch 128:
   1.9 ms vs XLA's conv 7.2 ms).
2. Forward, few output channels (C_out <= NARROW, e.g. a generator's last conv to RGB):
   one matmul to k*k*C_out channels, then k*k shifted adds (64 -> 3: 7.7 vs 21.3 ms).
3. Input gradient: a stride-1 convolution of dy with the flipped, transposed kernel (so
   1 and 2 apply to it); with stride s, as s*s polyphase stride-1 convolutions,
   interleaved, instead of XLA's convolution of a zero-dilated dy (3x3 stride 2,
   32x32x16 -> 32: 5.9 vs 13.7 ms).
4. Weight gradient: summed over batch slices of WGRAD_SLICE images (3x3, 32x32x16,
   batch 128: 1.3-1.5x faster; likely cache: XLA transposes a slice's activations).

Anything else (dilations, groups, string padding, other layouts) is `lax.conv` itself.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")  # the zoo's layouts: activations NHWC, kernels HWIO
WGRAD_SLICE = 16  # batch slice of the weight gradient (retuned: 8 and 32 no faster)
NARROW = 4  # at most this many input (output) channels: rewrite 1 (2)

Padding = tuple[tuple[int, int], tuple[int, int]]


def conv_nhwc(x, w, strides=(1, 1), padding: Padding = ((0, 0), (0, 0))):
    """XLA's convolution, NHWC x HWIO -> NHWC."""
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _pad_hw(x, padding: Padding):
    """x (N, H, W, C) zero-padded (lo, hi) per spatial dim; negative entries crop."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _windows(x, kh: int, kw: int, ho: int, wo: int, strides, padding: Padding):
    """The kh*kw shifted (strided) views of padded x, each (N, ho, wo, C), row-major taps."""
    n, _, _, c = x.shape
    xp = _pad_hw(x, padding)
    sh, sw = strides
    return [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]


def _out_hw(x_shape, w_shape, strides, padding: Padding) -> tuple[int, int]:
    return tuple((x_shape[1 + d] + sum(padding[d]) - w_shape[d]) // strides[d] + 1 for d in range(2))


def _forward_narrow_input(x, w, strides, padding: Padding):
    """Rewrite 1: y = sum over taps t and input channels c of x_t[..., c] * w[t, c, :]."""
    kh, kw, c_in, c_out = w.shape
    ho, wo = _out_hw(x.shape, w.shape, strides, padding)
    wf = w.astype(jnp.float32).reshape(kh * kw, c_in, c_out)
    y = jnp.zeros((x.shape[0], ho, wo, c_out), jnp.float32)
    for t, xt in enumerate(_windows(x.astype(jnp.float32), kh, kw, ho, wo, strides, padding)):
        for c in range(c_in):
            y = y + xt[..., c:c + 1] * wf[t, c]
    return y.astype(jnp.result_type(x, w))


def _forward_narrow_output(x, w, padding: Padding):
    """Rewrite 2 (stride 1): z = x @ w as (C_in, taps * C_out), y = sum of shifted z slices."""
    kh, kw, c_in, c_out = w.shape
    n = x.shape[0]
    ho, wo = _out_hw(x.shape, w.shape, (1, 1), padding)
    z = jnp.einsum("nhwc,ck->nhwk", x, w.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out),
                   preferred_element_type=jnp.float32)  # (N, H, W, taps * C_out)
    zp = _pad_hw(z, padding)
    y = None
    for i in range(kh):
        for j in range(kw):
            t = i * kw + j
            part = lax.slice(zp, (0, i, j, t * c_out), (n, i + ho, j + wo, (t + 1) * c_out))
            y = part if y is None else y + part
    return y.astype(jnp.result_type(x, w))


def _rewrite(w_shape: Sequence[int], strides) -> str | None:
    """Which forward rewrite applies to a conv with this HWIO kernel and strides, if any."""
    kh, kw, c_in, c_out = w_shape
    if kh * kw == 1:
        return None
    if c_in <= NARROW:
        return "narrow_input"
    if c_out <= NARROW and tuple(strides) == (1, 1):
        return "narrow_output"
    return None


def forward(x, w, strides=(1, 1), padding: Padding = ((0, 0), (0, 0))):
    """The convolution's value: rewrite 1 or 2 where it applies, else XLA's conv."""
    strides, padding = tuple(strides), tuple(map(tuple, padding))
    rewrite = _rewrite(w.shape, strides)
    if rewrite is None:
        return conv_nhwc(x, w, strides, padding)
    if rewrite == "narrow_input":
        return _isolated(lambda x, w: _forward_narrow_input(x, w, strides, padding), x, w)
    return _isolated(lambda x, w: _forward_narrow_output(x, w, padding), x, w)


def _isolated(f, x, w):
    """f(x, w) in a computation of its own: an identity `lax.cond` (a data-dependent
    predicate, both branches f), which XLA:CPU can neither fuse nor fold, unlike
    `optimization_barrier`, which it drops before fusion. Both rewrites are elementwise
    loops over k*k shifted reads of x: fused, XLA re-runs x's producers per tap and the
    k*k taps in every consumer of y (measured: the synthesis step 1.2x slower). The
    predicate reads the kernel, so that a vmap over images keeps it unbatched (a batched
    one would turn the cond into a select of both branches)."""
    first = w.reshape(-1)[0]
    return lax.cond(first == first, f, f, x, w)


def _phase_taps(r: int, k: int, s: int, pad_lo: int) -> list[tuple[int, int]]:
    """(kernel index, dy offset) pairs reaching input positions m = s*p + r, offset ascending:
    dx[m] = sum over (kk, d) of dy[p + d] * w[kk], from m = s*i + kk - pad_lo."""
    return sorted(((kk, (r + pad_lo - kk) // s) for kk in range(k) if (r + pad_lo - kk) % s == 0),
                  key=lambda t: t[1])


def xla_input_grad(x_shape: Sequence[int], w, dy, strides, padding: Padding):
    """XLA's own dx of conv_nhwc(x, w, strides, padding) (its VJP)."""
    return jax.vjp(lambda x: conv_nhwc(x, w, strides, padding),
                   jnp.zeros(x_shape, dy.dtype))[1](dy)[0]


def input_grad(x_shape: Sequence[int], w, dy, strides, padding: Padding):
    """Rewrite 3: dx of conv_nhwc(x, w, strides, padding), as stride-1 `forward` calls."""
    strides, padding = tuple(strides), tuple(map(tuple, padding))
    n, h, wd, c_in = x_shape
    kh, kw = w.shape[:2]
    ho, wo = dy.shape[1:3]
    wt = jnp.swapaxes(w, 2, 3)  # (kh, kw, C_out, C_in): dy's channels in, x's out
    if strides == (1, 1):  # the flipped kernel over dy padded by (k - 1 - lo, h - ho + lo)
        if _rewrite(wt.shape, strides) is None:
            return xla_input_grad(x_shape, w, dy, strides, padding)
        pads = tuple((k - 1 - lo, size - out + lo)
                     for k, (lo, _), size, out in zip((kh, kw), padding, (h, wd), (ho, wo)))
        return forward(dy, wt[::-1, ::-1], (1, 1), pads)
    sh, sw = strides
    ph, pw = -(-h // sh), -(-wd // sw)  # outputs per phase (ceil; cropped after interleaving)
    rows = []
    for ry in range(sh):
        taps_y = _phase_taps(ry, kh, sh, padding[0][0])
        cols = []
        for rx in range(sw):
            taps_x = _phase_taps(rx, kw, sw, padding[1][0])
            if not taps_y or not taps_x:  # no tap reaches this phase
                cols.append(jnp.zeros((n, ph, pw, c_in), dy.dtype))
                continue
            k = wt[jnp.array([t for t, _ in taps_y])][:, jnp.array([t for t, _ in taps_x])]
            lo_y, lo_x = -taps_y[0][1], -taps_x[0][1]  # negative: crop dy's first rows
            hi_y = ph + len(taps_y) - 1 - ho - lo_y
            hi_x = pw + len(taps_x) - 1 - wo - lo_x
            dyp = _pad_hw(dy, ((lo_y, hi_y), (lo_x, hi_x)))
            cols.append(forward(dyp, k, (1, 1), ((0, 0), (0, 0))))  # (N, ph, pw, C_in)
        rows.append(jnp.stack(cols, axis=3))  # (N, ph, pw, sw, C_in)
    dx = jnp.stack(rows, axis=2).reshape(n, ph * sh, pw * sw, c_in)  # (N, ph, sh, pw, sw, C)
    return dx[:, :h, :wd]


def weight_grad(x, w_shape: Sequence[int], dy, strides, padding: Padding):
    """Rewrite 4: dw summed over batch slices of WGRAD_SLICE (whole batch if it does not divide)."""
    n = x.shape[0]
    step = WGRAD_SLICE if n % WGRAD_SLICE == 0 and n >= 2 * WGRAD_SLICE else n
    zeros = jnp.zeros(w_shape, x.dtype)
    dw = None
    for start in range(0, n, step):
        part = slice(start, start + step)
        g = jax.vjp(lambda w: conv_nhwc(x[part], w, strides, padding), zeros)[1](dy[part])[0]
        dw = g if dw is None else dw + g
    return dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, w, strides: tuple[int, int], padding: Padding):
    """NHWC/HWIO convolution: value `forward`, gradients `input_grad` and `weight_grad`."""
    return forward(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
    return forward(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, dy):
    x, w = residuals
    return (input_grad(x.shape, w, dy, strides, padding).astype(x.dtype),
            weight_grad(x, w.shape, dy, strides, padding).astype(w.dtype))


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """`lax.conv_general_dilated` as nn.Conv calls it: through `conv` for a plain 2-D NHWC
    convolution with explicit padding, else `lax.conv_general_dilated` unchanged."""
    plain = (all(d == 1 for d in (lhs_dilation or (1,))) and all(d == 1 for d in (rhs_dilation or (1,)))
             and feature_group_count == 1 and not kwargs and precision is None
             and not isinstance(padding, str) and lhs.ndim == 4
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
    return conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)))
