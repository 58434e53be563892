"""experiments/bench_torch_ref.py --smoke: both sides' steps run, the JSON has what it promises."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.conftest import require_shared  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_writes_json(tmp_path):
    require_shared("teachers/cifar10_resnet20.th")
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/bench_torch_ref.py"), "--smoke",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "torch/jax" in proc.stdout
    r = json.loads(out.read_text())
    assert r["smoke"] is True and r["settings"]["synthesis_batch_size"] == 20
    assert [row["step"] for row in r["rows"]] == ["synthesis step", "KD step"]
    for row in r["rows"]:
        assert row["torch_s"] > 0 and row["jax_s"] > 0
        assert math.isclose(row["ratio_torch_over_jax"], row["torch_s"] / row["jax_s"])
        assert len(row["torch_times"]) == len(row["jax_times"]) == 1
    assert len(r["load_avg_start"]) == 3 and len(r["load_avg_end"]) == 3
    assert isinstance(r["cpu_isa"], list)  # e.g. ["avx2", "fma", "avx512f", ...]
    assert r["versions"]["torch"] and r["versions"]["jax"]
    assert set(r["first_call_s"]) == {"torch_synthesis", "jax_synthesis", "torch_kd", "jax_kd"}


def test_torch_crop_flip_matches_definition():
    """The torch reference augmentation is RandomCrop(pad) + flip per image."""
    import torch

    from experiments.bench_torch_ref import torch_crop_flip

    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    y = torch_crop_flip(x, pad=2)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2)).numpy()
    for i in range(x.shape[0]):
        found = False
        for dy in range(5):
            for dx in range(5):
                crop = padded[i, :, dy:dy + 8, dx:dx + 8]
                if np.array_equal(crop, y[i].numpy()) or np.array_equal(crop[..., ::-1], y[i].numpy()):
                    found = True
        assert found, i


@pytest.mark.parametrize("settle", [0, 1, 2])
def test_interleaved_opens_each_turn_with_untimed_calls(settle):
    """Each fn runs (settle + steps) times a round and only its `steps` calls are timed;
    the order flips every round."""
    from experiments import bench_torch_ref as ref

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    times = ref.interleaved(fns, rounds=2, steps=3, settle=settle)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}
    turn = 3 + settle
    assert calls == ["a"] * turn + ["b"] * turn + ["b"] * turn + ["a"] * turn
