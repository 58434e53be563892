"""`batchnorm.BatchNorm` is a drop-in for flax's nn.BatchNorm (same variables, values,
gradients and running statistics) whose per-channel sums are matrix-vector products on one
CPU device; the teacher's BN-input statistics keep their values and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nayer_jax.models import batchnorm, layers
from nayer_jax.teacher import apply_with_bn_stats


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _grads(module, variables, x, dy):
    """(output, running-stat updates, d params, d x) of sum(module(x) * dy)."""
    def loss(params, x):
        y, updates = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(y.astype(jnp.float32) * dy), (y, updates)

    (d_params, d_x), (y, updates) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
        variables.get("params", {}), x)
    return y, updates, d_params, d_x


@pytest.mark.parametrize("shape", [(64, 8, 8, 6), (32, 20), (2, 3, 3, 4)])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_flax_batchnorm(shape, train, affine):
    x = jax.random.normal(jax.random.key(1), shape) * 3 + 1.5   # a mean far from 0
    dy = jax.random.normal(jax.random.key(2), shape)
    kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5,
              use_scale=affine, use_bias=affine)
    ref, ours = nn.BatchNorm(**kw), batchnorm.BatchNorm(**kw)
    variables = ref.init(jax.random.key(0), x)
    assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
            == jax.tree.map(jnp.shape, variables))
    # trained-looking parameters and running statistics (var stays positive)
    variables = jax.tree.map(lambda v: v * 1.3 + 0.2, variables)
    got, want = _grads(ours, variables, x, dy), _grads(ref, variables, x, dy)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert _rel(g, w) < 1e-5


def test_bfloat16_compute_keeps_float32_statistics():
    x = jax.random.normal(jax.random.key(1), (32, 4, 4, 8)).astype(jnp.bfloat16)
    ref = nn.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    ours = batchnorm.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    variables = ref.init(jax.random.key(0), x)
    (y_ref, u_ref), (y, u) = (m.apply(variables, x, mutable=["batch_stats"]) for m in (ref, ours))
    assert y.dtype == jnp.bfloat16 and u["batch_stats"]["mean"].dtype == jnp.float32
    assert _rel(y, y_ref) < 1e-2
    assert _rel(u["batch_stats"]["var"], u_ref["batch_stats"]["var"]) < 1e-5


def test_channel_sum_is_a_matrix_vector_product_on_one_cpu_device(monkeypatch):
    x = jax.random.normal(jax.random.key(0), (16, 5, 5, 3))
    np.testing.assert_allclose(batchnorm.channel_sum(x), jnp.sum(x, (0, 1, 2)), rtol=1e-5)
    assert jax.default_backend() == "cpu" and jax.device_count() == 1  # the test process
    assert "dot_general" in str(jax.make_jaxpr(batchnorm.channel_sum)(x))
    monkeypatch.setenv("NAYER_JAX_XLA_DEFAULTS", "0")
    jaxpr = str(jax.make_jaxpr(lambda x: batchnorm.channel_sum(x))(x))  # a fresh trace
    assert "dot_general" not in jaxpr and "reduce_sum" in jaxpr


@pytest.mark.parametrize("module,expect_dots", [(batchnorm.BatchNorm, True), (nn.BatchNorm, False)])
def test_the_backward_pass_sums_by_dots(module, expect_dots):
    """The point of the module: training BN's sums run as dots, not reduces over N, H, W
    (flax's nn.BatchNorm is the control: the same check fails for it)."""
    x = jax.random.normal(jax.random.key(0), (32, 8, 8, 4))
    bn = module(use_running_average=False)
    variables = bn.init(jax.random.key(1), x)

    def loss(params, x):
        return jnp.sum(bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])[0] ** 2)

    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(variables["params"], x))
    by_dots = "reduce_sum[axes=(0, 1, 2)" not in jaxpr and jaxpr.count("dot_general") >= 4
    assert by_dots == expect_dots


def test_layers_batch_norm_is_ours_and_still_an_nn_batchnorm():
    bn = layers.batch_norm(train=True)
    assert isinstance(bn, batchnorm.BatchNorm) and isinstance(bn, nn.BatchNorm)
    with pytest.raises(ValueError, match="axis"):
        batchnorm.BatchNorm(axis=1).init(jax.random.key(0), jnp.ones((2, 3, 4)))


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.conv(4, 3, name="conv")(x)
        x = layers.batch_norm(train, name="bn")(x)
        return jnp.mean(nn.relu(x), axis=(1, 2))


def test_teacher_bn_statistics_and_their_gradient_are_unchanged():
    """batch_moments' two-pass variance drops d var / d mean (= 0) from autodiff."""
    images = jax.random.uniform(jax.random.key(0), (8, 6, 6, 3))
    net = _Net()
    variables = net.init(jax.random.key(1), images)

    def hooked(images):
        stats = apply_with_bn_stats(net, variables, images)[1][0]
        return jnp.sum(stats.batch_mean ** 2) + jnp.sum(stats.batch_var ** 2)

    def by_hand(images):
        h = layers.conv(4, 3).apply({"params": variables["params"]["conv"]}, images)
        mean = jnp.mean(h, (0, 1, 2))
        return jnp.sum(mean ** 2) + jnp.sum(jnp.mean((h - mean) ** 2, (0, 1, 2)) ** 2)

    (v_ours, g_ours), (v_ref, g_ref) = (jax.value_and_grad(f)(images) for f in (hooked, by_hand))
    assert _rel(v_ours, v_ref) < 1e-6 and _rel(g_ours, g_ref) < 1e-5
