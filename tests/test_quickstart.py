"""The offline quickstart end to end (tiny budgets), its noise control and its time budget."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from nayer_jax import quickstart, synthesis
from nayer_jax.synthesis import noise


def test_noise_control_draws_clipped_gaussian_images_and_kd_from_epoch_zero():
    method = noise.GaussianNoise(noise.NoiseSettings(), num_classes=10)
    state = method.init_state(jax.random.key(0), (8, 8, 1))
    x = np.asarray(jax.jit(method.sample, static_argnums=2)(state, jax.random.key(1), 4096))
    assert x.shape == (4096, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0  # clipped at both ends
    inside = x[(x > 0) & (x < 1)]
    assert abs(inside.mean() - 0.5) < 0.01 and 0.2 < inside.std() < 0.25  # N(0.5, 0.25), truncated
    assert method.kd_active(0)
    new, metrics = method.synthesize_epoch(state, None, 0, jax.random.key(2))
    assert metrics == {}
    preview = np.asarray(method.preview(new))
    assert preview.shape == (20, 8, 8, 1) and preview.dtype == np.uint8
    assert not np.array_equal(preview, np.asarray(method.preview(state)))


def test_noise_is_a_registered_method():
    assert synthesis.get_builder("noise") is noise.build
    with pytest.raises(ValueError, match="noise"):
        synthesis.get_builder("nope")


def test_noise_control_gets_nayer_method_time_as_kd_steps():
    # NAYER: 1 warmup epoch, then 2 KD epochs of 10 steps at 0.1 s each, the first one with
    # 3 s of compilation; 2 s to build the generator, 9 s of synthesis in all.
    history = [
        {"epoch": 0, "kd_loss": None, "synthesis_seconds": 5.0, "kd_seconds": 0.0, "eval_seconds": 1.0},
        {"epoch": 1, "kd_loss": 1.0, "synthesis_seconds": 2.0, "kd_seconds": 4.0, "eval_seconds": 0.1},
        {"epoch": 2, "kd_loss": 0.5, "synthesis_seconds": 2.0, "kd_seconds": 1.0, "eval_seconds": 0.1},
    ]
    # method time = 2 (build) + 9 (synthesis) + 5 (KD) - 3 (KD compile) = 13 s = 130 steps
    assert quickstart.noise_kd_steps_for(history, kd_steps=10, build_seconds=2.0) == round(130 / 3)
    assert quickstart.noise_kd_steps_for(history[:1], kd_steps=10, build_seconds=2.0) == 10


def test_noise_config_keeps_nayer_kd_settings():
    nayer = quickstart.nayer_config("/t", quickstart.FULL)
    control = quickstart.noise_config("/t", quickstart.FULL, kd_steps=123)
    assert isinstance(control, ml_collections.ConfigDict)
    assert control.method == "noise" and control.warmup == 0 and control.kd_steps == 123
    for key in ("epochs", "student", "teacher", "batch_size", "temperature", "lr", "lr_min",
                "momentum", "weight_decay", "aug_pad", "aug_flip", "eval_data", "seed"):
        assert control[key] == nayer[key], key
    assert "g_steps" not in control and "lte" not in control
    assert nayer.aug_flip is False and nayer.aug_pad == 1 and nayer.lte == "asset:digits_minilm"


def test_refuses_a_workdir_it_did_not_write(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert quickstart.main(["--workdir", str(tmp_path), "--fast"]) == 2
    err = capsys.readouterr().err
    assert "not written by the quickstart" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_fast_quickstart_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "qs"
    assert quickstart.main(["--fast", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    r = {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
    assert set(r) == {"teacher_top1", "student_top1", "noise_top1", "seconds"}
    assert r["teacher_top1"] > 0.9
    assert r["student_top1"] > r["noise_top1"] + 0.05, out  # NAYER beats noise at equal time
    assert "NAYER" in out and "Gaussian noise" in out
    for name in ("digits_per_class.png", "accuracy_vs_time.png"):
        assert (workdir / name).stat().st_size > 1000
    assert (workdir / "nayer" / "student" / "classifier.json").exists()
    assert list((workdir / "nayer" / "images").glob("epoch_*.png"))

    # A finished workdir: the stored results again, nothing recomputed.
    assert quickstart.main(["--fast", "--workdir", str(workdir)]) == 0
    again = capsys.readouterr().out
    assert "finished earlier" in again and again.strip().splitlines()[-1].startswith(
        f"teacher_top1={r['teacher_top1']:.4f} student_top1={r['student_top1']:.4f}")
    # ... and a full run into it is refused rather than mixed with the fast one.
    assert quickstart.main(["--workdir", str(workdir)]) == 2
    assert "choose a new --workdir" in capsys.readouterr().err
