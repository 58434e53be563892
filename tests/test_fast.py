"""Fast (meta-learned generator): the first-order meta update against a hand-computed
trajectory, its schedules, and tiny end-to-end runs on the real resnet20 teacher."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from nayer_jax import errors, main
from nayer_jax.classifier import load_classifier
from nayer_jax.models import create_model
from nayer_jax.models.generator import Generator
from nayer_jax.synthesis import fast
from tests.test_distill import _comparable, _history, assert_same_run, tiny_run_config

TINY = dict(synthesis_batch_size=10, g_steps=3, nz=4, ngf=2, lr_g=0.01, lr_z=0.05, warmup=0)


@pytest.fixture(scope="module")
def parts(converted_teacher):
    teacher = load_classifier(converted_teacher("resnet20"))
    student = create_model("resnet20", 10)
    sv = student.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    return teacher, student, sv


def _method(parts, **kw):
    teacher, student, _ = parts
    settings = fast.FastSettings(**{**TINY, **kw})
    return fast.Fast(settings, teacher, student, generator=Generator(nz=4, ngf=2))


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _adam(x, g, m, v, t, lr, b1, b2, eps=1e-8):
    """One torch/optax Adam step by hand (numpy): returns (x, m, v)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return x - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


@pytest.mark.parametrize("meta", ["fomaml", "reptile"])
def test_meta_update_is_the_first_order_formula(parts, meta):
    """Along the method's inner trajectory θ_0 = θ, θ_1, ..., θ_K (each an Adam step on
    ∇θ L_k(θ_k), checked by hand), the meta gradient is G = sum_k ∇θ L_k(θ_k) (FOMAML) or
    67 (θ - θ_K) (Reptile), and the first outer Adam step from a zero state is
    θ' = θ - lr_g * g_steps * G / (|G| + eps)."""
    _, _, sv = parts
    m = _method(parts, meta=meta)
    s = m.s
    state = m.init_state(jax.random.key(0), pool_capacity=20)
    rng = jax.random.key(5)
    k_init, k_steps = jax.random.split(rng)
    carry, onehot = m._init_batch(state, k_init)
    grad = jax.jit(jax.grad(m.batch_loss, argnums=(0, 1), has_aux=True),
                   static_argnames=("use_adv",))
    theta0 = _np(state.gen_params)
    flat = lambda tree: traverse_util.flatten_dict(_np(tree))  # noqa: E731
    grad_sum = {p: np.zeros_like(a) for p, a in flat(theta0).items()}
    mom = {p: (np.zeros_like(a), np.zeros_like(a)) for p, a in flat(theta0).items()}
    for t, key in enumerate(jax.random.split(k_steps, s.g_steps), start=1):
        theta_k, z_k = flat(carry.params), np.asarray(carry.z)
        (g_theta, _), _ = grad(_copy(carry.params), _copy(carry.z), state.gen_batch_stats,
                               onehot, state.mmt, m.teacher.variables, sv, key, use_adv=True)
        carry = m.step(carry, onehot, state, sv, key, use_adv=True)
        theta_next = flat(carry.params)
        for p, g in flat(g_theta).items():
            grad_sum[p] += g
            want, *mom[p] = _adam(theta_k[p], g, *mom[p], t, s.lr_g, s.b1_g, s.b2_g)
            # elements whose gradient is rounding noise (a direction BN removes) may take
            # Adam's first ±lr step either way; compare the rest
            clear = np.abs(g) > 1e-3 * np.abs(g).max()
            np.testing.assert_allclose(theta_next[p][clear], want[clear], rtol=0, atol=1e-5,
                                       err_msg=f"inner step {t} {p}")
        assert not np.allclose(np.asarray(carry.z), z_k)  # z is optimized too
    g = flat(m.meta_gradient(state, carry))
    if meta == "fomaml":
        for p, want in grad_sum.items():
            np.testing.assert_allclose(g[p], want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                       err_msg=str(p))
    else:
        last = flat(carry.params)
        for p, a in flat(theta0).items():
            np.testing.assert_allclose(g[p], 67.0 * (a - last[p]), rtol=1e-6, atol=1e-6)
    lr_meta = s.lr_g * s.g_steps
    new_state, metrics = m._finish(state, carry)
    got = flat(new_state.gen_params)
    for p, a in flat(theta0).items():
        np.testing.assert_allclose(got[p], a - lr_meta * g[p] / (np.abs(g[p]) + 1e-8), rtol=0,
                                   atol=1e-6, err_msg=str(p))
    assert int(new_state.pool.count) == 10 and bool(new_state.mmt.active)
    assert np.isfinite(float(metrics["best_loss"])) and float(metrics["adv"]) <= 0
    # synthesize_batch is exactly that loop
    again, _ = m.synthesize_batch(m.init_state(jax.random.key(0), pool_capacity=20), sv, rng,
                                  use_adv=True)
    jax.tree.map(np.testing.assert_array_equal, _np(again.gen_params), _np(new_state.gen_params))
    # the outer Adam persists: a second batch is its second step
    state2, _ = m.synthesize_batch(new_state, sv, jax.random.key(6), use_adv=False)
    assert int(state2.meta_opt_state[0].count) == 2 and int(state2.pool.count) == 20


def test_adv_and_reset_l0_schedules_follow_the_reference_counting(parts):
    m = _method(parts, warmup=20, reset_l0_epoch=120)
    assert [m.adv_active(e) for e in (0, 18, 19, 20)] == [False, False, True, True]
    assert [m.kd_active(e) for e in (19, 20)] == [False, True]
    assert [e for e in range(300) if m.resets_l0(e)] == [139]
    never = _method(parts, reset_l0_epoch=0)
    assert not any(never.resets_l0(e) for e in range(300))
    state = m.init_state(jax.random.key(0), pool_capacity=10)
    reset = m.reset_l0(state.gen_params, jax.random.key(1))
    for name in state.gen_params:
        if name not in ("l1_0", "conv_blocks_0"):
            jax.tree.map(np.testing.assert_array_equal, reset[name], state.gen_params[name])
    kernel = np.asarray(reset["l1_0"]["kernel"])
    assert abs(kernel.std() - 0.02) < 0.004 and not np.any(np.asarray(reset["l1_0"]["bias"]))
    assert np.abs(np.asarray(reset["conv_blocks_0"]["scale"])).max() < 0.1
    assert not np.any(np.asarray(reset["conv_blocks_0"]["bias"]))


def test_fast_n_variants_and_pair_configs():
    from nayer_jax.configs import fast_cifar10

    c = fast_cifar10.get_config("r34_r18:2")
    assert (c.g_steps, c.lr_g, c.lr_z, c.adv_weight, c.oh_weight) == (2, 5e-3, 0.015, 1.33, 0.5)
    assert c.student == "resnet18" and fast_cifar10.get_config().to_dict() == c.to_dict() | {
        "g_steps": 5, "lr_g": 3e-3, "lr_z": 0.01}
    c = fast_cifar10.get_config("wrn40_2_wrn16_1")
    assert (c.g_steps, c.lr_g, c.lr_z, c.adv_weight, c.oh_weight) == (5, 3e-3, 0.01, 1.1, 0.4)
    assert (c.epochs, c.warmup, c.batch_size, c.lr, c.bn_mmt) == (220, 20, 256, 0.2, 0.9)
    assert c.student == "wrn16_1"
    assert fast_cifar10.get_config("vgg11_r18:10").adv_weight == 1.0
    with pytest.raises(errors.ConfigError, match=r"variant '3', expected one of \['2', '5', '10'\]"):
        fast_cifar10.get_config("r34_r18:3")
    with pytest.raises(errors.ConfigError, match=r"config argument 'r34_r19': expected a teacher"):
        fast_cifar10.get_config("r34_r19")


@pytest.mark.parametrize("method", ["deepinversion", "dafl", "dfad"])
def test_one_cifar10_config_per_method_takes_the_pair(method):
    import importlib

    from nayer_jax.configs import common

    module = importlib.import_module(f"nayer_jax.configs.{method}_cifar10")
    for pair, (_, student) in common.CIFAR10_PAIRS.items():
        c = module.get_config(pair)
        assert (c.method, c.student, c.epochs, c.teacher) == (method, student, 200, "")
    assert module.get_config().to_dict() == module.get_config("r34_r18").to_dict()
    with pytest.raises(errors.ConfigError, match="takes no variant"):
        module.get_config("r34_r18:5")


# ----------------------------------------------------------------- end to end

def tiny_config(teacher_dir, epochs: int = 2):
    return tiny_run_config("fast", teacher_dir, epochs, warmup=1, synthesis_batch_size=10,
                           g_steps=2, nz=8, ngf=4, kd_steps=2, batch_size=8, lr=0.05)


def test_run_and_resume_equal_the_straight_run(converted_teacher, tmp_path):
    config = tiny_config(converted_teacher("resnet20"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    summary = main.run(config, str(straight))
    history = _comparable(_history(straight))
    assert summary["epochs"] == 2 and [r["epoch"] for r in history] == [0, 1]
    assert history[0]["kd_loss"] is None and history[1]["kd_loss"] > 0  # warmup: no KD
    assert history[0]["syn_adv"] <= 0  # L_adv from epoch warmup - 1 = 0
    main.run(config, str(resumed), stop_after_epoch=0)
    assert [r["epoch"] for r in _comparable(_history(resumed))] == [0]
    main.run(config, str(resumed))
    assert_same_run(straight, resumed)


def test_out_of_range_or_unknown_field_is_one_line(converted_teacher, tmp_path):
    config = tiny_config(converted_teacher("resnet20"))
    config.g_steps = 0
    with pytest.raises(SystemExit) as exit_info:
        main.run_guarded(config, str(tmp_path / "w"))
    assert str(exit_info.value.code) == "error: config.g_steps=0: expected >= 1"
    config.g_steps, config.meta = 2, "maml"
    with pytest.raises(errors.ConfigError,
                       match=r"^config\.meta='maml': expected 'fomaml' or 'reptile'$"):
        main.run(config, str(tmp_path / "w2"))
