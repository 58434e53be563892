"""bench_nayer at tiny sizes: it runs its three phases on the real CPU config's teacher
and writes its JSON (it once reused a state its own timed steps had donated). Timings
themselves are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_shared

pytest.importorskip("torch")  # the config's teacher is a PyTorch checkpoint, converted in the run

ROOT = Path(__file__).resolve().parent.parent
TINY = ["synthesis_batch_size=20", "ngf=8", "le_emb_size=16", "g_steps=2", "g_loops=1",
        "kd_steps=2", "batch_size=16"]


def test_tiny_run_writes_json(tmp_path):
    require_shared("teachers/cifar10_resnet32.th")
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/bench_nayer.py"), "--repeats", "1",
                           "--out", str(out), "--set", *TINY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert (r["synthesis_batch_size"], r["kd_batch_size"], r["g_loops"], r["kd_steps"]) == (20, 16, 1, 2)
    for key in ("synthesis_step_s", "kd_step_s", "epoch_s", "synthesis_first_call_s", "kd_first_call_s"):
        assert r[key] > 0, key
    assert "KD step (batch 16)" in proc.stdout
