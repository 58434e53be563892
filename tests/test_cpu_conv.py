"""`cpu_conv`: the XLA:CPU convolution rewrites compute what `lax.conv` computes (values,
input and weight gradients, across kernel sizes, strides, paddings and odd sizes), each
rewrite is the one that runs where it should, and `layers.conv` uses them on one CPU
device only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nayer_jax.models import cpu_conv, layers

DN = cpu_conv.NHWC


def _plain(strides, padding):
    return lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)


def _ours(strides, padding):
    return lambda x, w: cpu_conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)


def _grads(f, x, w, cot):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * cot), argnums=(0, 1)))(x, w)


def _rel_err(got, want) -> float:
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


@pytest.mark.parametrize("n,h,w,c_in,c_out,k,stride,pad,rewrite", [
    (4, 8, 8, 3, 16, 3, 1, 1, "narrow_input"),     # an RGB stem
    (4, 9, 7, 3, 5, 3, 2, 1, "narrow_input"),      # strided, odd sizes
    (2, 8, 8, 2, 3, 5, 1, 2, "narrow_input"),
    (4, 8, 8, 16, 3, 3, 1, 1, "narrow_output"),    # a generator's last conv to RGB
    (2, 7, 9, 12, 1, 3, 1, 1, "narrow_output"),
    (4, 8, 8, 16, 32, 3, 2, 1, None),              # a downsampling conv: polyphase dx
    (4, 7, 7, 16, 32, 3, 2, 1, None),              # odd input under stride 2
    (4, 10, 11, 6, 6, 3, 3, 1, None),              # stride 3
    (4, 8, 8, 16, 32, 1, 2, 0, None),              # a 1x1 strided shortcut (a tapless phase)
    (2, 8, 8, 8, 8, 3, 1, 1, None),                # no rewrite: XLA's own conv and gradients
])
def test_matches_lax_conv(n, h, w, c_in, c_out, k, stride, pad, rewrite):
    x = jax.random.normal(jax.random.key(0), (n, h, w, c_in))
    kern = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out))
    strides, padding = (stride, stride), ((pad, pad), (pad, pad))
    assert cpu_conv._rewrite(kern.shape, strides) == rewrite
    want = _plain(strides, padding)(x, kern)
    got = _ours(strides, padding)(x, kern)
    assert got.shape == want.shape and float(jnp.std(want)) > 0.5
    assert _rel_err(got, want) < 1e-6
    if rewrite is None:  # the value is XLA's conv itself
        np.testing.assert_array_equal(got, want)
    cot = jax.random.normal(jax.random.key(2), want.shape)
    (dx_want, dw_want), (dx_got, dw_got) = _grads(_plain(strides, padding), x, kern, cot), \
        _grads(_ours(strides, padding), x, kern, cot)
    assert dx_got.shape == x.shape and dw_got.shape == kern.shape
    assert _rel_err(dx_got, dx_want) < 1e-6 and _rel_err(dw_got, dw_want) < 1e-6
    if stride == 1 and rewrite is None:  # XLA's own input gradient
        np.testing.assert_array_equal(dx_got, dx_want)


def test_asymmetric_padding_of_the_polyphase_pieces():
    """The 2x2 convs of layers.UpsampleConv3x3 pad (1, 0) / (0, 1)."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    kern = jax.random.normal(jax.random.key(1), (2, 2, 3, 4))
    for padding in (((1, 0), (0, 1)), ((0, 1), (1, 0))):
        want, got = _plain((1, 1), padding)(x, kern), _ours((1, 1), padding)(x, kern)
        assert _rel_err(got, want) < 1e-6
        cot = jnp.ones_like(want)
        for a, b in zip(_grads(_ours((1, 1), padding), x, kern, cot),
                        _grads(_plain((1, 1), padding), x, kern, cot)):
            assert _rel_err(a, b) < 1e-6


def _count_convs(fn, *args) -> int:
    """Convolutions XLA runs for fn (after its dead-code elimination)."""
    return jax.jit(fn).lower(*args).compile().as_text().count(" convolution(")


@pytest.mark.parametrize("n,stride,padding", [
    (32, 1, ((1, 1), (1, 1))),
    (48, 2, ((1, 1), (1, 1))),   # a downsampling conv, 3 slices
    (32, 1, ((0, 0), (0, 0))),   # a 1x1 shortcut is built with padding 0
])
def test_weight_gradient_is_summed_over_batch_slices(n, stride, padding):
    kernel = 1 if padding[0] == (0, 0) else 3
    x = jax.random.normal(jax.random.key(0), (n, 8, 8, 6))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 6, 6)) * 0.3
    plain, ours = _plain((stride, stride), padding), _ours((stride, stride), padding)
    cot = jax.random.normal(jax.random.key(2), plain(x, w).shape)
    grad_w = lambda f: jax.grad(lambda w, x, cot: jnp.sum(f(x, w) * cot))
    want = grad_w(plain)(w, x, cot)
    np.testing.assert_allclose(grad_w(ours)(w, x, cot), want, rtol=1e-5,
                               atol=1e-5 * float(jnp.abs(want).max()))
    slices = n // cpu_conv.WGRAD_SLICE
    assert _count_convs(grad_w(ours), w, x, cot) == _count_convs(grad_w(plain), w, x, cot) - 1 + slices


@pytest.mark.parametrize("n", [20, 16])  # not a multiple of the slice; a single slice
def test_weight_gradient_over_the_whole_batch_otherwise(n):
    x, w = jax.random.normal(jax.random.key(0), (n, 4, 4, 6)), jnp.ones((3, 3, 6, 5))
    cot = jnp.ones((n, 4, 4, 5))
    grad_w = lambda f: jax.grad(lambda w, x: jnp.sum(f(x, w) * cot))
    padding = ((1, 1), (1, 1))
    assert _count_convs(grad_w(_ours((1, 1), padding)), w, x) == 1
    np.testing.assert_array_equal(grad_w(_ours((1, 1), padding))(w, x),
                                  grad_w(_plain((1, 1), padding))(w, x))


def test_the_rewrites_replace_xla_convolutions():
    """Rewrites 1 and 2 leave no convolution in the forward; rewrite 3 turns one strided
    input gradient into stride-1 convs on dy, where XLA convolves a zero-dilated dy."""
    x3, w3 = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 8))
    x16, w16 = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 3))
    same = ((1, 1), (1, 1))
    assert _count_convs(_ours((1, 1), same), x3, w3) == 0
    assert _count_convs(_ours((1, 1), same), x16, w16) == 0
    assert _count_convs(_plain((1, 1), same), x3, w3) == 1
    ws = jnp.ones((3, 3, 16, 32))
    dx = lambda f: jax.grad(lambda x, ws: jnp.sum(f(x, ws)))
    hlo = lambda f: jax.jit(dx(f)).lower(x16, ws).compile().as_text()
    assert "lhs_dilate" in hlo(_plain((2, 2), same))
    assert "lhs_dilate" not in hlo(_ours((2, 2), same)) and " convolution(" in hlo(_ours((2, 2), same))


def test_bfloat16_inputs_accumulate_in_float32():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    got = _ours((1, 1), ((1, 1), (1, 1)))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    want = _plain((1, 1), ((1, 1), (1, 1)))(x, w)
    assert _rel_err(got.astype(jnp.float32), want) < 2e-2


def test_other_convolutions_are_lax_conv_itself():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 2, 4))  # grouped
    f = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                   dimension_numbers=DN, feature_group_count=2)
    g = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                  dimension_numbers=DN, feature_group_count=2)
    assert str(jax.make_jaxpr(f)(x, w)) == str(jax.make_jaxpr(g)(x, w))


def test_conv_uses_the_rewrites_on_one_cpu_device_only(monkeypatch):
    assert jax.default_backend() == "cpu" and jax.device_count() == 1  # the test process
    assert layers.conv(4, 3).conv_general_dilated is cpu_conv.conv_general_dilated
    monkeypatch.setenv("NAYER_JAX_XLA_DEFAULTS", "0")
    assert layers.conv(4, 3).conv_general_dilated is None


def test_a_vmap_over_images_keeps_one_branch():
    """The rewrites' cond predicate reads the kernel: under a vmap over images it stays a
    cond (a batched predicate would compute both branches and select)."""
    x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    f = lambda x: _ours((1, 1), ((1, 1), (1, 1)))(x, w)
    assert "cond[" in str(jax.make_jaxpr(jax.vmap(f))(x))
    np.testing.assert_allclose(jax.vmap(f)(x), jnp.stack([f(xi) for xi in x]), rtol=1e-6, atol=1e-6)
