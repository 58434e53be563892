"""nayer_jax.losses against straightforward NumPy references (float64), plus gradients,
dtype promotion, jit/vmap, and NAYER's momentum formulas written out by hand."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nayer_jax import losses
from nayer_jax.losses import BNStats

RNG = np.random.default_rng(0)
CHANNELS = (3, 5, 8)


# ---------------------------------------------------------------- NumPy references
def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl_rows(s, t, T=1.0):
    lt, ls = np_log_softmax(t / T), np_log_softmax(s / T)
    return (np.exp(lt) * (lt - ls)).sum(-1)


def np_bn_l2(stats, mmt=None, m=0.0):
    total = 0.0
    for i, (bm, bv, rm, rv) in enumerate(stats):
        if mmt is not None:  # NAYER DeepInversionHook.hook_fn, written as in the paper's code
            mean_mmt, var_mmt = mmt[i]
            total += (np.linalg.norm(rv - (1 - m) * bv - m * var_mmt)
                      + np.linalg.norm(rm - (1 - m) * bm - m * mean_mmt))
        else:
            total += np.linalg.norm(rv - bv) + np.linalg.norm(rm - bm)
    return total


def np_gauss_kl(stats, eps=1e-5):
    total = 0.0
    for bm, bv, rm, rv in stats:
        v, r = bv + eps, rv + eps
        total += np.sum(0.5 * np.log(r / v) + (v + (bm - rm) ** 2) / (2 * r) - 0.5)
    return total


def np_tv_nchw(x_nhwc):
    """DeepInversion's get_image_prior_losses, verbatim on NCHW (the layout it was written for)."""
    x = np.transpose(x_nhwc, (0, 3, 1, 2))
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    l2 = sum(np.linalg.norm(d.ravel()) for d in (d1, d2, d3, d4))
    l1 = sum((np.abs(d) / 255.0).mean() for d in (d1, d2, d3, d4)) * 255.0
    return l2, l1


# ---------------------------------------------------------------- inputs
def rand_stats(rng=RNG, dtype=np.float32):
    out = []
    for c in CHANNELS:
        out.append(BNStats(rng.normal(size=c).astype(dtype), rng.uniform(0.2, 2.0, c).astype(dtype),
                           rng.normal(size=c).astype(dtype), rng.uniform(0.2, 2.0, c).astype(dtype)))
    return out


def rand_mmt(rng=RNG):
    return [(rng.normal(size=c).astype(np.float32), rng.uniform(0.2, 2.0, c).astype(np.float32))
            for c in CHANNELS]


def as_jnp(tree):
    return jax.tree.map(jnp.asarray, tree)


def logits(n=6, c=5, scale=2.0, rng=RNG):
    return (rng.normal(size=(n, c)) * scale).astype(np.float32)


def images(n=2, h=5, w=4, c=3, rng=RNG):
    return rng.uniform(0, 1, (n, h, w, c)).astype(np.float32)


TOL = dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bn_moment_loss
def test_bn_l2_matches_reference_and_is_a_norm_not_squared():
    stats = rand_stats()
    got = losses.bn_moment_loss(as_jnp(stats))
    chex.assert_trees_all_close(got, np.float32(np_bn_l2(stats)), **TOL)
    # One layer, mean off by 3 on one channel, var exact: the norm gives 3, the square 9.
    one = [BNStats(jnp.array([3.0, 0.0]), jnp.ones(2), jnp.zeros(2), jnp.ones(2))]
    chex.assert_trees_all_close(losses.bn_moment_loss(one), jnp.float32(3.0))


def test_bn_gaussian_kl_matches_reference_and_vanishes_at_match():
    stats = rand_stats()
    chex.assert_trees_all_close(losses.bn_moment_loss(as_jnp(stats), form="gaussian_kl"),
                                np.float32(np_gauss_kl(stats)), **TOL)
    matched = [BNStats(s.running_mean, s.running_var, s.running_mean, s.running_var) for s in stats]
    for form in ("l2", "gaussian_kl"):
        assert abs(float(losses.bn_moment_loss(as_jnp(matched), form=form))) < 1e-6


def test_bn_l2_gradient_is_finite_at_exact_match():
    """torch.norm has subgradient 0 at 0; a naive sqrt would give NaN here."""
    s = rand_stats()[0]
    g = jax.grad(lambda m: losses.bn_moment_loss(
        [BNStats(m, s.running_var, s.running_mean, s.running_var)]))(jnp.asarray(s.running_mean))
    chex.assert_tree_all_finite(g)


def test_bn_momentum_blend_equals_nayer_formula():
    stats, mmt, m = rand_stats(), rand_mmt(), 0.9
    got = losses.bn_moment_loss(as_jnp(stats), momentum_stats=as_jnp(mmt), momentum=m)
    chex.assert_trees_all_close(got, np.float32(np_bn_l2(stats, mmt, m)), **TOL)
    # The gaussian form matches the blended statistics too.
    blended = [BNStats((1 - m) * s.batch_mean + m * a, (1 - m) * s.batch_var + m * b,
                       s.running_mean, s.running_var) for s, (a, b) in zip(stats, mmt)]
    chex.assert_trees_all_close(
        losses.bn_moment_loss(as_jnp(stats), "gaussian_kl", as_jnp(mmt), m),
        np.float32(np_gauss_kl(blended)), **TOL)


def test_bn_momentum_stats_are_constants():
    stats, mmt = as_jnp(rand_stats()), as_jnp(rand_mmt())
    g = jax.grad(lambda mm: losses.bn_moment_loss(stats, momentum_stats=mm, momentum=0.9))(mmt)
    assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree.leaves(g))


def test_bn_no_momentum_yet_flag_under_jit():
    """Fixed pytree structure: placeholder stats (even NaN) + traced flag False == no momentum."""
    stats_np, mmt_np = rand_stats(), rand_mmt()
    stats, mmt = as_jnp(stats_np), as_jnp(mmt_np)
    nan_mmt = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), mmt)
    f = jax.jit(lambda st, mm, flag: losses.bn_moment_loss(
        st, momentum_stats=mm, momentum=0.9, has_momentum_stats=flag))
    plain = np.float32(np_bn_l2(stats_np))
    chex.assert_trees_all_close(f(stats, nan_mmt, jnp.bool_(False)), plain, **TOL)
    chex.assert_trees_all_close(f(stats, losses.empty_momentum_stats(stats), False), plain, **TOL)
    chex.assert_trees_all_close(f(stats, mmt, jnp.bool_(True)),
                                np.float32(np_bn_l2(stats_np, mmt_np, 0.9)), **TOL)
    g = jax.grad(lambda st: f(st, nan_mmt, jnp.bool_(False)))(stats)
    chex.assert_tree_all_finite(g)


def test_update_momentum_stats_equals_nayer_update_mmt():
    s1, s2, m = rand_stats(), rand_stats(), 0.9
    first = losses.update_momentum_stats(None, as_jnp(s1), m)
    chex.assert_trees_all_close(first, [(s.batch_mean, s.batch_var) for s in s1])
    second = losses.update_momentum_stats(first, as_jnp(s2), m)
    want = [(m * a.batch_mean + (1 - m) * b.batch_mean, m * a.batch_var + (1 - m) * b.batch_var)
            for a, b in zip(s1, s2)]
    chex.assert_trees_all_close(second, want, **TOL)
    # Fixed-structure form: a traced flag selects "first call" without a Python branch.
    f = jax.jit(lambda old, st, flag: losses.update_momentum_stats(old, st, m, flag))
    chex.assert_trees_all_close(f(losses.empty_momentum_stats(as_jnp(s1)), as_jnp(s1), False),
                                first, **TOL)
    chex.assert_trees_all_close(f(first, as_jnp(s2), True), want, **TOL)
    # stop_gradient'd: state, not part of the loss graph.
    g = jax.grad(lambda st: sum(jnp.sum(a) + jnp.sum(b) for a, b in
                                losses.update_momentum_stats(None, st, m)))(as_jnp(s1))
    assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree.leaves(g))


def test_bn_rejects_bad_arguments():
    stats = as_jnp(rand_stats())
    with pytest.raises(ValueError, match="form"):
        losses.bn_moment_loss(stats, form="l1")
    with pytest.raises(ValueError, match="momentum_stats"):
        losses.bn_moment_loss(stats, momentum_stats=as_jnp(rand_mmt())[:2], momentum=0.9)
    with pytest.raises(ValueError, match="no BN"):
        losses.bn_moment_loss([])


# ---------------------------------------------------------------- KL family
@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kl_divergence_matches_reference(T):
    s, t = logits(), logits()
    chex.assert_trees_all_close(losses.kl_divergence(s, t, T),
                                np.float32(np_kl_rows(s, t, T).mean() * T * T), **TOL)


def test_kl_divergence_matches_torch_batchmean():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    s, t, T = logits(), logits(), 20.0
    ref = F.kl_div(F.log_softmax(torch.from_numpy(s) / T, 1), F.softmax(torch.from_numpy(t) / T, 1),
                   reduction="batchmean") * T * T
    chex.assert_trees_all_close(losses.kl_divergence(s, t, T), np.float32(ref.item()), **TOL)


def test_kl_is_zero_for_identical_logits():
    z = jnp.asarray(logits())
    assert abs(float(losses.kl_divergence(z, z, 3.0))) < 1e-6
    assert abs(float(losses.adversarial_kl(z, z))) < 1e-6
    chex.assert_trees_all_close(jax.grad(losses.kl_divergence)(z, z), jnp.zeros_like(z), atol=1e-6)


def test_adversarial_kl_mask_on_hand_built_rows():
    t = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [1.0, 2.0, 0.0]], np.float32)
    s = np.array([[2.0, 1.0, 0.0],   # agrees (class 0)
                  [3.0, 0.0, 1.0],   # disagrees
                  [0.0, 1.0, 4.0],   # agrees (class 2)
                  [0.0, 0.0, 3.0]],  # disagrees
                 np.float32)
    kl = np_kl_rows(s, t)
    assert kl.min() > 0.01  # every row has a non-trivial KL: the mask is what drops rows
    want = -(kl[0] + kl[2]) / 4.0  # mean over the whole batch, not over agreeing rows
    chex.assert_trees_all_close(losses.adversarial_kl(s, t), np.float32(want), **TOL)
    # Disagreeing rows get no gradient; agreeing rows do.
    g = jax.grad(losses.adversarial_kl)(jnp.asarray(s), jnp.asarray(t))
    assert float(jnp.abs(g[1]).max()) == 0.0 and float(jnp.abs(g[3]).max()) == 0.0
    assert float(jnp.abs(g[0]).max()) > 0.0 and float(jnp.abs(g[2]).max()) > 0.0
    # All disagree -> 0.
    assert float(losses.adversarial_kl(s[[1, 3]], t[[1, 3]])) == 0.0


def test_soft_cross_entropy():
    z, p = logits(), jax.nn.softmax(jnp.asarray(logits()))
    want = -(np.asarray(p) * np_log_softmax(z)).sum(-1).mean()
    chex.assert_trees_all_close(losses.soft_cross_entropy(z, p), np.float32(want), **TOL)
    labels = np.array([0, 1, 2, 3, 4, 0])
    onehot = jax.nn.one_hot(labels, 5)
    want_hard = -np_log_softmax(z)[np.arange(6), labels].mean()
    chex.assert_trees_all_close(losses.soft_cross_entropy(z, onehot), np.float32(want_hard), **TOL)


# ---------------------------------------------------------------- image priors, DAFL
def test_total_variation_matches_deepinversion_code():
    x = images()
    l2, l1 = np_tv_nchw(x)
    chex.assert_trees_all_close(losses.total_variation(x), np.float32(l2), **TOL)
    chex.assert_trees_all_close(losses.total_variation(x, norm="l1"), np.float32(l1), **TOL)
    const = jnp.full((2, 4, 4, 3), 0.3)
    assert float(losses.total_variation(const)) == 0.0
    chex.assert_tree_all_finite(jax.grad(losses.total_variation)(const))
    with pytest.raises(ValueError, match="norm"):
        losses.total_variation(x, norm="l3")


def test_l2_prior_is_batch_mean_of_per_image_norms():
    x = images()
    want = np.linalg.norm(x.reshape(2, -1), axis=1).mean()
    chex.assert_trees_all_close(losses.l2_prior(x), np.float32(want), **TOL)


def test_class_balance():
    z = logits(n=8)
    p = np.exp(np_log_softmax(z)).mean(0)
    chex.assert_trees_all_close(losses.class_balance(z), np.float32((p * np.log(p)).sum()), **TOL)
    # Minimum -log C at a uniform mean prediction; a one-class batch is worse (higher).
    chex.assert_trees_all_close(losses.class_balance(jnp.zeros((4, 5))), -jnp.log(5.0), **TOL)
    assert float(losses.class_balance(jnp.tile(jnp.array([[9.0, 0, 0, 0, 0]]), (4, 1)))) > -0.1
    chex.assert_tree_all_finite(jax.grad(losses.class_balance)(jnp.array([[200.0, 0.0, -200.0]])))


def test_activation_loss():
    f = RNG.normal(size=(4, 7)).astype(np.float32)
    chex.assert_trees_all_close(losses.activation_loss(f), np.float32(-np.abs(f).mean()), **TOL)


# ---------------------------------------------------------------- generic properties
def _cases():
    s, t = logits(), logits()
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits())))
    x = images()
    stats, mmt = rand_stats(), rand_mmt()
    return {
        "bn_l2": (lambda st: losses.bn_moment_loss(st), (stats,)),
        "bn_kl": (lambda st: losses.bn_moment_loss(st, "gaussian_kl"), (stats,)),
        # momentum stats are stop_gradient'd constants: close over them, differentiate stats
        "bn_mmt": (lambda st: losses.bn_moment_loss(st, "l2", as_jnp(mmt), 0.9), (stats,)),
        "kl": (lambda a, b: losses.kl_divergence(a, b, 4.0), (s, t)),
        "adv": (losses.adversarial_kl, (s, t)),
        "ce": (losses.soft_cross_entropy, (s, p)),
        "tv_l2": (losses.total_variation, (x,)),
        "tv_l1": (lambda a: losses.total_variation(a, "l1"), (x,)),
        "l2": (losses.l2_prior, (x,)),
        "balance": (losses.class_balance, (s,)),
        "activation": (losses.activation_loss, (s,)),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_inputs_give_float32_scalar(name):
    fn, args = CASES[name]
    bf = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), args)
    out = fn(*bf)
    assert out.dtype == jnp.float32 and out.shape == ()
    # Same as float32 math on the bf16-rounded inputs: nothing is reduced in bf16.
    up = jax.tree.map(lambda a: a.astype(jnp.float32), bf)
    chex.assert_trees_all_close(out, fn(*up), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_and_vmap(name):
    fn, args = CASES[name]
    args = as_jnp(args)
    eager = fn(*args)
    chex.assert_trees_all_close(jax.jit(fn)(*args), eager, rtol=1e-5, atol=1e-5)
    # vmap over a leading axis of two perturbed copies == stacking the per-copy values.
    copies = [args, jax.tree.map(lambda a: a * 1.1, args)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *copies)
    want = jnp.stack([fn(*c) for c in copies])
    chex.assert_trees_all_close(jax.vmap(fn)(*stacked), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_numerically(name):
    """Reverse-mode gradient vs finite differences, in float64 (all cases are smooth at
    these random points: no ties in argmax, no zero differences, no |x| at 0)."""
    fn, args = CASES[name]
    with jax.enable_x64(True):
        args64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), args)
        assert fn(*args64).dtype == jnp.float64
        check_grads(jax.jit(fn), args64, order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
