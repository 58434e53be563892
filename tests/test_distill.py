"""The epoch loop end to end at tiny sizes on the real resnet20 teacher: outputs, resume,
determinism, config guard."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from nayer_jax import distill, errors, main, parallel
from nayer_jax.classifier import load_classifier
from nayer_jax.models import registry
from nayer_jax.configs.common import cifar, shared


def tiny_run_config(method: str, teacher_dir, epochs: int, **sizes):
    """A seconds-long CIFAR-10 run of `method` (the methods' end-to-end tests share it): the
    converted teacher, a resnet20 student, 40 of the lossless 846 images, tiny `sizes`."""
    c = cifar(method, "cifar10", student="resnet20", epochs=epochs)
    c.teacher = str(teacher_dir)
    c.eval_data = f"npz:{shared('data/cifar10-jpeg/test_lossless_846.npz')}"
    c.update(eval_limit=40, eval_batch_size=40, **sizes)
    return c


def tiny_config(teacher_dir, seed: int = 0, epochs: int = 3):
    return tiny_run_config("nayer", teacher_dir, epochs, seed=seed, warmup=1,
                           synthesis_batch_size=20, g_steps=2, gwp_loops=1, g_loops=1, g_life=2,
                           ngf=8, le_emb_size=16, kd_steps=2, batch_size=16, lr=0.05)


def _params(workdir):
    return traverse_util.flatten_dict(load_classifier(workdir / "student").variables)


def _history(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


_TIMING = ("synthesis_seconds", "kd_seconds", "eval_seconds", "seconds_total")


def _comparable(history):
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in history]


def assert_same_run(a_dir, b_dir):
    """Two runs' final students bitwise equal and their histories equal but for timings."""
    a, b = _params(a_dir), _params(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))
    assert _comparable(_history(a_dir)) == _comparable(_history(b_dir))


@pytest.fixture(scope="module")
def straight_run(converted_teacher, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    summary = main.run(tiny_config(converted_teacher("resnet20")), str(workdir))
    return workdir, summary


def test_run_writes_logs_images_checkpoints_and_student(straight_run, capsys):
    workdir, summary = straight_run
    history = _history(workdir)
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[0]["kd_loss"] is None and history[1]["kd_loss"] > 0  # warmup: no KD
    for key in ("test_top1", "synthesis_seconds", "kd_seconds", "syn_bn", "syn_ce"):
        assert key in history[-1]
    assert sorted(p.name for p in (workdir / "images").iterdir()) == [
        "epoch_0000.png", "epoch_0001.png", "epoch_0002.png"]
    assert summary["epochs"] == 3 and summary["final_top1"] == history[-1]["test_top1"]
    assert (workdir / "checkpoints").is_dir() and (workdir / "student").is_dir()


def test_resume_equals_straight_run(straight_run, converted_teacher, tmp_path):
    """3 epochs straight == 2 epochs, stop (as if preempted), restart, 1 more epoch."""
    straight_dir, _ = straight_run
    config = tiny_config(converted_teacher("resnet20"))
    main.run(config, str(tmp_path), stop_after_epoch=1)
    assert [r["epoch"] for r in _history(tmp_path)] == [0, 1]
    main.run(config, str(tmp_path))
    assert_same_run(straight_dir, tmp_path)


def test_other_seed_differs(straight_run, converted_teacher, tmp_path):
    """(Same seed -> same metrics is shown by the resume test: two runs, equal histories.)"""
    straight_dir, _ = straight_run
    main.run(tiny_config(converted_teacher("resnet20"), seed=1, epochs=1), str(tmp_path))
    first = _comparable(_history(straight_dir))[0]
    other = _comparable(_history(tmp_path))[0]
    assert other["syn_loss"] != first["syn_loss"]


def test_workdir_with_other_config_is_refused(straight_run, converted_teacher):
    workdir, _ = straight_run
    before = (workdir / "metrics.jsonl").read_text()
    config = tiny_config(converted_teacher("resnet20"))
    config.lr = 0.5
    with pytest.raises(errors.ConfigMismatchError, match="lr=0.05"):
        main.run(config, str(workdir))
    assert (workdir / "metrics.jsonl").read_text() == before  # nothing overwritten


def test_epoch_cosine_schedule_matches_torch_cosine_annealing():
    sched = distill.epoch_cosine_schedule(0.2, 2e-4, steps_per_epoch=10, num_epochs=4)
    lrs = [float(sched(s)) for s in (0, 9, 10, 25, 40, 100)]
    expected = [2e-4 + 0.5 * (0.2 - 2e-4) * (1 + np.cos(np.pi * e / 4)) for e in (0, 0, 1, 2, 4, 4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_cli_bad_teacher_is_one_line_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for teacher, expected in (("", "config.teacher is empty"),
                              (str(tmp_path / "nope"), "classifier.json: missing")):
        proc = subprocess.run(
            [sys.executable, "-m", "nayer_jax.main", "--config",
             str(root / "nayer_jax/configs/nayer_cifar10_r34_r18.py"),
             f"--config.teacher={teacher}", "--workdir", str(tmp_path / "w")],
            cwd=root, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and expected in lines[-1], proc.stderr[-500:]
        assert "Traceback" not in proc.stderr


def test_kd_step_compiles_once(converted_teacher):
    """A fresh student state and the state the KD step returns hit one compiled program
    (flax's Python-int step counter made every run compile its KD step twice)."""
    teacher = load_classifier(converted_teacher("resnet20"))
    mesh = parallel.make_mesh(1)
    teacher_vars = parallel.replicate(teacher.variables, mesh)
    model = registry.create_model("resnet20", 10)
    state = parallel.replicate(
        distill.create_student_state(model, jax.random.key(0), (32, 32, 3), 0.1), mesh)
    images = parallel.replicate(jnp.asarray(
        np.random.default_rng(0).uniform(size=(8, 32, 32, 3)), jnp.float32), mesh)
    sample = lambda source, rng, n: source[:n]  # noqa: E731
    step = distill.make_kd_step(teacher, sample, 8, mesh=mesh)
    for i in range(3):
        state, loss = step(state, images, teacher_vars, jax.random.key(i))
    assert np.isfinite(float(loss)) and int(state.step) == 3
    assert step._cache_size() == 1
