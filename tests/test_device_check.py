"""experiments/device_check.sh --smoke: every part runs at tiny sizes on CPU into one JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_chip_peaks():
    from experiments.device_check import chip_peaks

    assert chip_peaks("NVIDIA H200")["bfloat16"] > chip_peaks("NVIDIA H200")["tf32"] > 0
    assert chip_peaks("cpu") is None


def test_smoke_writes_one_json(tmp_path):
    out = tmp_path / "device_check.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "NAYER_WHEELS": str(tmp_path / "no_wheels")}
    proc = subprocess.run(["bash", str(ROOT / "experiments/device_check.sh"), "--smoke",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] is True
    parts = r["parts"]
    assert set(parts) == {"env", "jax", "torch", "run"}
    assert parts["env"]["jax"] and parts["env"]["devices"]
    for dtype in ("float32", "bfloat16"):
        rec = parts["jax"]["dtypes"][dtype]
        assert "error" not in rec, rec.get("traceback")
        for step in ("synthesis", "kd"):
            assert rec[step]["median_s"] > 0 and rec[step]["images_per_s"] > 0
            assert rec[step]["xla_flops"] > 0  # XLA cost analysis of the compiled step
        assert rec["first_call_s"]["kd"] > 0
    for dtype in ("float32", "bfloat16"):  # no CUDA: the torch code path runs on the CPU
        rec = parts["torch"]["dtypes"][dtype]
        assert "error" not in rec, rec.get("traceback")
        assert rec["kd"]["median_s"] > 0 and rec["synthesis"]["median_s"] > 0
    run = parts["run"]
    assert run["returncode"] == 0, run.get("stderr_tail")
    assert run["summary"]["epochs"] == "3" and len(run["epochs"]) == 3
    assert len(r["summary"]) == 4 and all(row["jax_s"] for row in r["summary"])
