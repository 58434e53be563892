"""`layers.UpsampleConv3x3` (four polyphase 2x2 convolutions) computes exactly what
nearest x2 upsampling followed by a 3x3 conv computes, values and gradients, and is a
drop-in for `conv(features, 3)`: same parameter tree, same initial values, torch's result."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nayer_jax.models import layers


class _Naive(nn.Module):
    features: int
    bias: bool

    @nn.compact
    def __call__(self, x):
        return layers.conv(self.features, 3, bias=self.bias, name="conv")(layers.upsample_nearest2x(x))


class _Fused(nn.Module):
    features: int
    bias: bool

    @nn.compact
    def __call__(self, x):
        return layers.upsample_conv3x3(self.features, bias=self.bias, name="conv")(x)


def _inputs(n, h, w, c_in, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, h, w, c_in))


@pytest.mark.parametrize("n,h,w,c_in,c_out,bias", [
    (2, 4, 4, 3, 5, False),
    (3, 5, 7, 4, 2, True),    # odd, non-square sizes
    (1, 1, 1, 2, 3, True),    # every tap of the 3x3 kernel falls on padding but the centre
    (2, 8, 6, 16, 8, False),
])
def test_matches_upsample_then_conv(n, h, w, c_in, c_out, bias):
    x = _inputs(n, h, w, c_in)
    naive, fused = _Naive(c_out, bias), _Fused(c_out, bias)
    v_naive = naive.init(jax.random.key(1), x)
    v_fused = fused.init(jax.random.key(1), x)
    # Same parameter tree and initial values: a drop-in for conv(features, 3).
    jax.tree.map(np.testing.assert_array_equal, v_naive, v_fused)
    if bias:  # a non-zero bias, so that its broadcast is checked too
        v_naive = jax.tree.map(lambda a: a, v_naive)
        v_naive["params"]["conv"]["bias"] = jnp.arange(c_out, dtype=jnp.float32) / c_out
    cot = jax.random.normal(jax.random.key(2), (n, 2 * h, 2 * w, c_out))

    def loss(model):
        return lambda v, xs: jnp.sum(model.apply(v, xs) * cot)

    y_naive, y_fused = naive.apply(v_naive, x), fused.apply(v_naive, x)
    assert y_fused.shape == (n, 2 * h, 2 * w, c_out)
    assert float(jnp.std(y_naive)) > 0.1
    np.testing.assert_allclose(y_fused, y_naive, rtol=0, atol=1e-5)
    g_naive = jax.grad(loss(naive), argnums=(0, 1))(v_naive, x)
    g_fused = jax.grad(loss(fused), argnums=(0, 1))(v_naive, x)
    for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_naive)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4 * float(jnp.abs(b).max()))


def test_matches_torch_upsample_conv():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2, mode="nearest"),
                              torch.nn.Conv2d(6, 4, 3, padding=1, bias=True))
    x = torch.randn(2, 6, 5, 6)
    with torch.no_grad():
        want = ref(x).permute(0, 2, 3, 1).numpy()
    conv = ref[1]
    params = {"kernel": conv.weight.detach().permute(2, 3, 1, 0).numpy(),  # OIHW -> HWIO
              "bias": conv.bias.detach().numpy()}
    got = layers.upsample_conv3x3(4, bias=True).apply({"params": params},
                                                      x.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
    x = _inputs(2, 4, 4, 3)
    m = layers.UpsampleConv3x3(5, dtype=jnp.bfloat16)
    v = m.init(jax.random.key(0), x)
    assert v["params"]["kernel"].dtype == jnp.float32
    y = m.apply(v, x)
    assert y.dtype == jnp.bfloat16
    want = _Naive(5, False).apply({"params": {"conv": v["params"]}}, x)
    np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=0.05 * float(jnp.abs(want).max()))
