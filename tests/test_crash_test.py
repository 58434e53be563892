"""experiments/crash_test.py in CI: two SIGKILLs of the real tiny CPU run (shared resnet20
teacher converted in the run), one inside a teacher conversion and one inside a
checkpoint write; each resumed run ends bitwise equal to the uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_crash_test_two_kills(tmp_path):
    out = tmp_path / "crash.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments/crash_test.py"), "--n", "2", "--seed", "0",
         "--epochs", "2", "--phases", "convert,checkpoint", "--reference-runs", "1",
         "--xla-cache", "default", "--root", str(tmp_path / "root"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n"] == 2 and result["all_equal"] is True
    for row in result["trials"]:
        assert row["signal_sent"] and row["killed_rc"] == -9, row
        assert row["params_equal"] and row["metrics_equal"] and row["final_rc"] == 0, row
    assert [r["target"] for r in result["trials"]] == ["convert", "checkpoint"]
    assert "all 2 resumed runs equal the uninterrupted run bitwise: True" in proc.stdout
