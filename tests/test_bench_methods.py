"""experiments/bench_methods.py at tiny sizes: NAYER and the noise control through the one
loop, the table, the plot and the JSON; a rerun reuses the finished runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import bench_methods  # noqa: E402


def test_bench_methods_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--tiny", "--budget_s", "600", "--methods", "nayer,noise,not_a_method",
            "--workdir", str(tmp_path / "runs"), "--out", str(out)]
    result = bench_methods.main(args)
    printed = capsys.readouterr().out
    assert "skipping not_a_method" in printed
    assert result["methods"] == ["nayer", "noise"]
    data = json.loads(out.read_text())
    assert set(data["table"]) == {"nayer", "noise"}
    for method, row in data["table"].items():
        hist = data["histories"][method][0]
        assert len(hist) == 2 and all(0.0 <= r["test_top1"] <= 1.0 for r in hist)
        assert row["best_top1"] == max(r["test_top1"] for r in hist)
        assert row["top1_at_budget"] == hist[-1]["test_top1"]
        assert set(row["time_to"]) == {"20", "30", "40", "50"}
    assert data["table"]["nayer"]["ratio_to_nayer"]["20"] in (None, 1.0)
    assert "load_avg_start" in data and "load_avg_end" in data
    png = out.with_name(out.stem + "_accuracy_vs_time.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "time to accuracy" in printed and "nayer" in printed.split("time to accuracy")[1]

    # a rerun reuses the finished runs (no new epochs) and rewrites the same table
    before = {m: (tmp_path / "runs" / f"{m}_seed0" / "metrics.jsonl").read_text()
              for m in ("nayer", "noise")}
    again = bench_methods.main(args)
    assert again["table"] == result["table"]
    for m, text in before.items():
        assert (tmp_path / "runs" / f"{m}_seed0" / "metrics.jsonl").read_text() == text


def test_time_to_accuracy_and_ratios():
    h = [{"seconds_total": 10.0, "test_top1": 0.15}, {"seconds_total": 20.0, "test_top1": 0.35},
         {"seconds_total": 40.0, "test_top1": 0.55}]
    s = bench_methods.summarize(h, budget_s=30.0)
    assert s["best_top1"] == 0.35 and s["top1_at_budget"] == 0.35 and s["epochs"] == 2
    assert s["time_to"] == {"20": 20.0, "30": 20.0, "40": None, "50": None}
    fast = bench_methods.summarize(h, budget_s=100.0)
    table = bench_methods.aggregate({"nayer": [fast], "other": [s]})
    assert table["nayer"]["ratio_to_nayer"]["50"] == 1.0
    assert table["other"]["ratio_to_nayer"] == {"20": 1.0, "30": 1.0, "40": None, "50": None}
    assert "other" in bench_methods.format_table(table, 30.0)
