"""DeepInversion / ADI: jitter and flip, the image priors and the competition loss against
hand-written numpy, the best-batch rule, and tiny end-to-end runs on the real resnet20."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nayer_jax import errors, losses, main
from nayer_jax.classifier import load_classifier
from nayer_jax.models import create_model
from nayer_jax.synthesis import deepinversion as di
from tests.test_distill import _comparable, _history, assert_same_run, tiny_run_config


# ----------------------------------------------------------------- jitter / flip / priors

def _np_jitter_flip(x: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """The reference on NCHW: torch.roll(x, (dy, dx), dims=(2, 3)), then torch.flip(dims=(3,))."""
    nchw = np.transpose(x, (0, 3, 1, 2))
    out = np.roll(nchw, shift=(dy, dx), axis=(2, 3))
    if flip:
        out = out[:, :, :, ::-1]
    return np.transpose(out, (0, 2, 3, 1))


def test_jitter_and_flip_match_numpy_roll_and_flip():
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 7, 6, 3)))
    seen_dy, seen_dx, seen_flip = set(), set(), set()
    apply = jax.jit(di.jitter_and_flip, static_argnums=(2, 3))
    for i in range(60):
        key = jax.random.key(i)
        dy, dx, f = (int(v) for v in di.draw_jitter(key, 2))
        seen_dy.add(dy), seen_dx.add(dx), seen_flip.add(f)
        np.testing.assert_array_equal(np.asarray(apply(key, x, 2, True)),
                                      _np_jitter_flip(x, dy, dx, bool(f)))
        np.testing.assert_array_equal(np.asarray(apply(key, x, 2, False)),
                                      _np_jitter_flip(x, dy, dx, False))
    assert seen_dy == seen_dx == set(range(-2, 3)) and seen_flip == {0, 1}


def test_tv_and_l2_priors_match_numpy():
    x = np.asarray(jax.random.normal(jax.random.key(1), (3, 5, 4, 2)), np.float64)
    nchw = np.transpose(x, (0, 3, 1, 2))  # the reference's slicing is on NCHW
    d1 = nchw[:, :, :, :-1] - nchw[:, :, :, 1:]
    d2 = nchw[:, :, :-1, :] - nchw[:, :, 1:, :]
    d3 = nchw[:, :, 1:, :-1] - nchw[:, :, :-1, 1:]
    d4 = nchw[:, :, :-1, :-1] - nchw[:, :, 1:, 1:]
    tv_l2 = sum(np.sqrt(np.sum(d ** 2)) for d in (d1, d2, d3, d4))
    tv_l1 = sum(np.mean(np.abs(d)) for d in (d1, d2, d3, d4))
    l2 = np.mean(np.sqrt(np.sum(x.reshape(3, -1) ** 2, axis=1)))
    np.testing.assert_allclose(float(losses.total_variation(jnp.asarray(x, jnp.float32))), tv_l2,
                               rtol=1e-5)
    np.testing.assert_allclose(float(losses.total_variation(jnp.asarray(x, jnp.float32), "l1")),
                               tv_l1, rtol=1e-5)
    np.testing.assert_allclose(float(losses.l2_prior(jnp.asarray(x, jnp.float32))), l2, rtol=1e-5)
    # a constant image has no variation, and its TV gradient is 0, not NaN
    g = jax.grad(losses.total_variation)(jnp.ones((1, 4, 4, 3)))
    assert not np.any(np.asarray(g))


def test_competition_loss_matches_numpy_js_with_clamps():
    s = np.asarray(jax.random.normal(jax.random.key(2), (4, 10))) * 3
    t = np.asarray(jax.random.normal(jax.random.key(3), (4, 10))) * 3

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(s / 3.0), softmax(t / 3.0)
    m = np.clip(0.5 * (p + q), 0.01, 0.99)
    p, q = np.clip(p, 0.01, 0.99), np.clip(q, 0.01, 0.99)
    js = np.mean(0.5 * np.sum(m * (np.log(m) - np.log(p)), 1)
                 + 0.5 * np.sum(m * (np.log(m) - np.log(q)), 1))
    np.testing.assert_allclose(float(losses.jensen_shannon(s, t, 3.0)), js, rtol=1e-5)
    np.testing.assert_allclose(float(losses.competition_loss(s, t)), 1 - np.clip(js, 0, 1),
                               rtol=1e-5)
    assert float(losses.competition_loss(s, s)) == pytest.approx(1.0)  # agreement: no gain


# ----------------------------------------------------------------- the method

@pytest.fixture(scope="module")
def method(converted_teacher):
    teacher = load_classifier(converted_teacher("resnet20"))
    student = create_model("resnet20", 10)
    sv = student.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    settings = di.DeepInversionSettings(synthesis_batch_size=12, iterations=4, lr_g=0.5)
    return di.DeepInversion(settings, teacher, student), sv


def test_steps_clip_pixels_and_pool_the_lowest_loss_batch(method):
    """Step by hand: the pooled batch is the pixels the lowest-loss step saw, in [0, 1]."""
    m, sv = method
    carry, onehot = m._init(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(onehot, -1))[:10], np.arange(10))
    seen_loss, seen_pixels = [], []
    for i in range(4):
        before = float(carry.sums["loss"])
        seen_pixels.append(np.asarray(carry.pixels))
        carry = m.step(carry, onehot, sv, jax.random.key(10 + i))
        seen_loss.append(float(carry.sums["loss"]) - before)
        lo, hi = np.asarray(m._lo), np.asarray(m._hi)
        px = np.asarray(carry.pixels)
        assert (px >= lo - 1e-6).all() and (px <= hi + 1e-6).all()
    best = int(np.argmin(seen_loss))
    np.testing.assert_allclose(float(carry.best_loss), seen_loss[best], rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(carry.best_pixels), seen_pixels[best])
    state = di.DeepInversionState(pool=di.pool_lib.create_pool(24, m.img_shape))
    state, metrics = m._finish(state, carry)
    assert int(state.pool.count) == 12 and np.isfinite(float(metrics["adv"]))
    expected = np.clip(seen_pixels[best] * np.asarray(m._std) + np.asarray(m._mean), 0, 1)
    np.testing.assert_array_equal(np.asarray(state.pool.images[:12]),
                                  np.round(expected * 255).astype(np.uint8))


def test_plain_deepinversion_skips_the_student(method):
    m, sv = method
    plain = di.DeepInversion(di.DeepInversionSettings(**{**m.s.__dict__, "adaptive": False}),
                             m.teacher, m.student_model)
    carry, onehot = plain._init(jax.random.key(0))
    carry = plain.step(carry, onehot, {}, jax.random.key(1))  # no student variables needed
    assert float(carry.sums["adv"]) == 0.0 and float(carry.sums["bn"]) > 0


# ----------------------------------------------------------------- end to end

def tiny_config(teacher_dir, epochs: int = 2):
    return tiny_run_config("deepinversion", teacher_dir, epochs, synthesis_batch_size=10,
                           iterations=2, kd_steps=2, batch_size=8, lr=0.05)


def test_run_and_resume_equal_the_straight_run(converted_teacher, tmp_path):
    config = tiny_config(converted_teacher("resnet20"))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    summary = main.run(config, str(straight))
    history = _comparable(_history(straight))
    assert summary["epochs"] == 2 and [r["epoch"] for r in history] == [0, 1]
    assert history[0]["kd_loss"] > 0 and "syn_adv" in history[0] and "syn_tv" in history[0]
    assert sorted(p.name for p in (straight / "images").iterdir()) == [
        "epoch_0000.png", "epoch_0001.png"]
    main.run(config, str(resumed), stop_after_epoch=0)
    assert [r["epoch"] for r in _comparable(_history(resumed))] == [0]
    main.run(config, str(resumed))
    assert_same_run(straight, resumed)


def test_out_of_range_field_is_one_line(converted_teacher, tmp_path):
    config = tiny_config(converted_teacher("resnet20"))
    config.iterations = 0
    with pytest.raises(SystemExit) as exit_info:
        main.run_guarded(config, str(tmp_path / "w"))
    message = str(exit_info.value.code)
    assert message == "error: config.iterations=0: expected >= 1"
    config.iterations, config.tv_weight = 2, -1.0
    with pytest.raises(errors.ConfigError, match=r"^config\.tv_weight=-1\.0: expected >= 0$"):
        main.run(config, str(tmp_path / "w2"))
