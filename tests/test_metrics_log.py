"""The run logs: metrics.jsonl plus a TensorBoard event file (tensorboardX, no TensorFlow)
read back with TensorBoard's own EventAccumulator; a resumed run logs each epoch once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nayer_jax.metrics_log import MetricsLog

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard reads the event files back (requirements-dev.txt installs it)")


def _record(epoch: int, top1: float, kd_loss: float | None = 0.5) -> dict:
    return {"epoch": epoch, "test_top1": top1, "test_top5": min(1.0, top1 + 0.3),
            "kd_loss": kd_loss, "lr": 0.1 / (epoch + 1), "synthesis_seconds": 1.5,
            "kd_seconds": 0.25, "eval_seconds": 0.125, "syn_bn": 2.0, "syn_ce": 1.0,
            "seconds_total": 2.0 * (epoch + 1)}


def _events(workdir):
    acc = event_accumulator.EventAccumulator(str(workdir),
                                             size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _series(acc, tag):
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)]


def _event_files(workdir):
    return sorted(workdir.glob("events.out.tfevents.*"))


def test_scalars_and_image_grid_in_event_file(tmp_path):
    log = MetricsLog(tmp_path, [], tensorboard=True)
    records = [_record(0, 0.25, kd_loss=None), _record(1, 0.5)]  # warmup epoch: no KD loss
    batch = np.arange(4 * 5 * 6 * 3, dtype=np.uint8).reshape(4, 5, 6, 3)
    for r in records:
        log.write(r)
        log.image(f"epoch_{r['epoch']:04d}", batch, columns=2, step=r["epoch"])
    log.close()

    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        records
    assert len(_event_files(tmp_path)) == 1
    acc = _events(tmp_path)
    numeric = {k for k in records[1] if k != "epoch"}
    assert numeric <= set(acc.Tags()["scalars"])
    assert "epoch" not in acc.Tags()["scalars"]
    assert _series(acc, "test_top1") == [(0, 0.25), (1, 0.5)]
    assert _series(acc, "test_top5") == [(0, 0.55), (1, 0.8)]
    assert _series(acc, "lr") == [(0, 0.1), (1, 0.05)]
    assert _series(acc, "kd_loss") == [(1, 0.5)]  # None is not a scalar
    assert _series(acc, "synthesis_seconds") == [(0, 1.5), (1, 1.5)]
    images = acc.Images("preview")
    assert [im.step for im in images] == [0, 1]
    assert (images[0].width, images[0].height) == (2 * 7 - 1, 2 * 6 - 1)  # the PNG's grid
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "epoch_0000.png", "epoch_0001.png"]


def test_resume_logs_each_epoch_once(tmp_path):
    """Run 1 logs epochs 0-2 but its last checkpoint is epoch 0 (it died before the next):
    the resumed run re-runs 1-2, and TensorBoard shows every epoch once, the new values."""
    first = MetricsLog(tmp_path, [], tensorboard=True)
    for epoch in range(3):
        first.write(_record(epoch, 0.1 * (epoch + 1)))
    first.close()

    resumed = MetricsLog(tmp_path, [_record(0, 0.1)], tensorboard=True)
    for epoch in (1, 2):
        resumed.write(_record(epoch, 0.5 + 0.1 * epoch))
    resumed.close()
    assert len(_event_files(tmp_path)) == 2
    acc = _events(tmp_path)
    assert _series(acc, "test_top1") == [(0, 0.1), (1, 0.6), (2, 0.7)]
    assert [json.loads(x)["epoch"] for x in
            (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    # a clean resume (checkpoint at the last logged epoch) only adds the new epoch
    again = MetricsLog(tmp_path, [_record(0, 0.1), _record(1, 0.6), _record(2, 0.7)],
                       tensorboard=True)
    again.write(_record(3, 0.9))
    again.close()
    assert _series(_events(tmp_path), "test_top1") == [(0, 0.1), (1, 0.6), (2, 0.7), (3, 0.9)]


def test_tensorboard_off_and_disabled(tmp_path):
    off = tmp_path / "off"
    off.mkdir()
    log = MetricsLog(off, [], tensorboard=False)
    log.write(_record(0, 0.2))
    log.image("epoch_0000", np.zeros((2, 4, 4, 1), np.uint8), columns=2, step=0)
    log.close()
    assert _event_files(off) == []
    assert (off / "metrics.jsonl").exists() and (off / "images" / "epoch_0000.png").exists()

    disabled = tmp_path / "disabled"  # not the main process: writes nothing at all
    disabled.mkdir()
    log = MetricsLog(disabled, [], tensorboard=True, enabled=False)
    log.write(_record(0, 0.2))
    log.image("epoch_0000", np.zeros((2, 4, 4, 3), np.uint8), columns=2, step=0)
    log.close()
    assert list(disabled.iterdir()) == []


def test_tiny_run_resumed_writes_every_epoch_once(converted_teacher, tmp_path):
    """The real loop: 2 epochs as 1 + stop + resume; the event files hold each epoch's
    scalars once, equal to metrics.jsonl, and one preview image per epoch."""
    from nayer_jax import main
    from tests.test_distill import tiny_config

    config = tiny_config(converted_teacher("resnet20"), epochs=2)
    assert config.tensorboard
    main.run(config, str(tmp_path), stop_after_epoch=0)
    main.run(config, str(tmp_path))
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1]
    assert len(_event_files(tmp_path)) == 2
    acc = _events(tmp_path)
    for key in ("test_top1", "test_top5", "lr", "synthesis_seconds", "kd_seconds",
                "eval_seconds", "syn_bn", "syn_ce", "seconds_total"):
        assert _series(acc, key) == [(r["epoch"], r[key]) for r in history], key
    assert _series(acc, "kd_loss") == [(1, history[1]["kd_loss"])]  # epoch 0: warmup
    assert [im.step for im in acc.Images("preview")] == [0, 1]
