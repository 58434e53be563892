"""DAFL: the shared generator, its three losses against numpy, the teacher's penultimate
features, and a tiny end-to-end run (+ resume) on the real resnet20 teacher."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nayer_jax import errors, main
from nayer_jax.classifier import load_classifier
from nayer_jax.models.generator import Generator
from nayer_jax.synthesis import dafl
from tests.test_distill import _history, assert_same_run, tiny_run_config


def test_generator_maps_latents_to_nhwc_images_in_unit_range():
    v = Generator(nz=8, ngf=4).init(jax.random.key(0), jnp.zeros((2, 8)))
    x, _ = Generator(nz=8, ngf=4).apply(v, jax.random.normal(jax.random.key(1), (3, 8)),
                                        train=True, mutable=["batch_stats"])
    assert x.shape == (3, 32, 32, 3) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert v["params"]["l1_0"]["kernel"].shape == (8, 8 * 8 * 8)  # FC -> (img/4)² x 2ngf
    assert "bias" not in v["params"]["conv_blocks_2"] and "bias" in v["params"]["conv_blocks_9"]


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_losses_match_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32) * 3
    feats = rng.normal(size=(6, 16)).astype(np.float32)
    p = _softmax(logits.astype(np.float64))
    # one-hot: CE against the teacher's own argmax (torch F.cross_entropy(t, t.max(1)[1]))
    oh = -np.mean(np.log(p[np.arange(6), logits.argmax(1)]))
    # information entropy: (p̄ * log p̄).sum(), natural log (Fast-Datafree)
    p_mean = p.mean(0)
    balance = np.sum(p_mean * np.log(p_mean))
    act = -np.mean(np.abs(feats))  # -features.abs().mean()
    loss, terms = dafl.dafl_loss(jnp.asarray(logits), jnp.asarray(feats), 1.0, 20.0, 1e-3)
    np.testing.assert_allclose([terms["oh"], terms["balance"], terms["act"]],
                               [oh, balance, act], rtol=1e-5)
    np.testing.assert_allclose(loss, oh + 20 * balance + 1e-3 * act, rtol=1e-5)
    # balance is minimal (-log C) for a uniform mean prediction
    _, uniform = dafl.dafl_loss(jnp.zeros((4, 10)), jnp.ones((4, 3)), 1.0, 1.0, 1.0)
    np.testing.assert_allclose(uniform["balance"], -np.log(10), rtol=1e-6)


@pytest.fixture(scope="module")
def teacher(converted_teacher):
    return load_classifier(converted_teacher("resnet20"))


def test_features_are_the_input_of_the_final_linear_layer(teacher):
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    logits, feats = dafl.apply_with_features(teacher.model, teacher.variables, x)
    assert feats.shape == (4, 64)  # resnet20: pooled 64 channels
    w = teacher.variables["params"]["linear"]
    np.testing.assert_allclose(feats @ w["kernel"] + w["bias"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, teacher.model.apply(teacher.variables, x, train=False),
                               rtol=1e-6)


def tiny_config(teacher_dir, epochs: int = 2, method: str = "dafl"):
    """A seconds-long run of an alternating generator method (DAFL; DFAD's tests reuse it)."""
    return tiny_run_config(method, teacher_dir, epochs, kd_steps=4, batch_size=8,
                           interleave_every=2, synthesis_batch_size=8, nz=8, ngf=4, lr=0.05,
                           tensorboard=False)


@pytest.fixture(scope="module")
def straight_run(converted_teacher, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dafl_straight")
    summary = main.run(tiny_config(converted_teacher("resnet20")), str(workdir))
    return workdir, summary


def test_tiny_run_trains_generator_and_student(straight_run):
    workdir, summary = straight_run
    history = _history(workdir)
    assert [r["epoch"] for r in history] == [0, 1] and summary["epochs"] == 2
    for r in history:
        assert r["kd_loss"] > 0 and np.isfinite(r["gen_loss"])
        assert {"gen_oh", "gen_balance", "gen_act"} <= r.keys()
        assert -np.log(10) <= r["gen_balance"] <= 0 and r["gen_act"] < 0
    assert sorted(p.name for p in (workdir / "images").iterdir()) == [
        "epoch_0000.png", "epoch_0001.png"]


def test_resume_equals_straight_run(straight_run, converted_teacher, tmp_path):
    straight_dir, _ = straight_run
    config = tiny_config(converted_teacher("resnet20"))
    main.run(config, str(tmp_path), stop_after_epoch=0)
    assert [r["epoch"] for r in _history(tmp_path)] == [0]
    main.run(config, str(tmp_path))
    assert_same_run(straight_dir, tmp_path)


def test_out_of_range_field_is_one_line_config_error(converted_teacher, tmp_path):
    config = tiny_config(converted_teacher("resnet20"))
    config.balance_weight = -1.0
    with pytest.raises(errors.ConfigError, match=r"^config\.balance_weight=-1\.0: expected >= 0$"):
        main.run(config, str(tmp_path))
