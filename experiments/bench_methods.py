"""Time to accuracy: every method side by side on one setting, each for the same wall time.

python experiments/bench_methods.py [--budget_s 1800] [--methods nayer,fast,...]
    [--seeds 0,1] [--nayer_seeds 0,1] [--workdir runs/bench_methods] [--out experiments/results/bench_methods_cpu.json]

Runs the methods one after another in this one process through the library's own loop
(`loop.train_and_evaluate` with `stop_after_seconds`), each on its
`nayer_jax/configs/<method>_cpu_cifar10_r32_r20.py` config: the shared resnet32 teacher,
a resnet20 student, test accuracy on the lossless 846 after every epoch. A run stops
after the first epoch that ends past the budget (its time includes compilation), or
when its config's epochs are done. Every run keeps its workdir, so an interrupted
benchmark rerun with the same --workdir resumes the unfinished runs and reuses the
finished ones. Prints the table, writes the JSON and `accuracy_vs_time.png` beside it.
`--tiny` shrinks every size to seconds per run (the CI test).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_METHODS = ("nayer", "fast", "deepinversion", "dafl", "dfad", "luo", "noise")
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
# --tiny: every size field a method may have, cut to seconds per epoch
TINY = {"epochs": 2, "kd_steps": 2, "batch_size": 16, "eval_limit": 40, "eval_batch_size": 40,
        "synthesis_batch_size": 10, "g_steps": 2, "g_loops": 1, "gwp_loops": 1, "ngf": 8,
        "le_emb_size": 16, "stage1_epochs": 1, "num_generators": 1, "gen_steps_per_epoch": 2,
        "gen_batch_size": 8, "latent_dim": 8, "iterations": 2, "batches_per_epoch": 1,
        "nz": 8, "checkpoint_every": 1, "pool_skip_loops": 0}


def method_config(method: str, tiny: bool = False, seed: int = 0):
    """The method's CPU config (`<method>_cpu_cifar10_r32_r20`), seeded, optionally tiny."""
    module = importlib.import_module(f"nayer_jax.configs.{method}_cpu_cifar10_r32_r20")
    c = module.get_config()
    c.seed = seed
    if tiny:
        for key, value in TINY.items():
            if key in c:
                c[key] = value
        if "warmup" in c and method != "luo":  # luo: warmup follows stage1_epochs
            c.warmup = min(c.warmup, 1)
    return c


def available(methods) -> list[str]:
    """The requested methods that have a CPU config (a method not written yet is skipped)."""
    out = []
    for m in methods:
        try:
            importlib.import_module(f"nayer_jax.configs.{m}_cpu_cifar10_r32_r20")
            out.append(m)
        except ModuleNotFoundError:
            print(f"skipping {m}: no nayer_jax/configs/{m}_cpu_cifar10_r32_r20.py")
    return out


def read_history(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(method: str, seed: int, budget_s: float, workdir: Path, tiny: bool) -> list[dict]:
    """One method/seed for the budget (resumes or reuses its workdir); its epoch records."""
    from nayer_jax import loop

    config = method_config(method, tiny, seed)
    history = read_history(workdir)
    done = history and (history[-1]["seconds_total"] >= budget_s
                        or len(history) >= config.epochs)
    if not done:
        loop.train_and_evaluate(config, workdir, stop_after_seconds=budget_s)
        history = read_history(workdir)
    return history


def summarize(history: list[dict], budget_s: float) -> dict:
    """Best top-1 within the budget, top-1 at the budget, seconds to reach each threshold."""
    within = [r for r in history if r["seconds_total"] <= budget_s] or history[:1]
    reach = {}
    for t in THRESHOLDS:
        hit = next((r["seconds_total"] for r in history
                    if r["test_top1"] >= t and r["seconds_total"] <= budget_s), None)
        reach[f"{int(t * 100)}"] = hit
    return {"best_top1": max(r["test_top1"] for r in within),
            "top1_at_budget": within[-1]["test_top1"], "seconds_used": within[-1]["seconds_total"],
            "epochs": len(within), "time_to": reach}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: the seeds' mean best/at-budget top-1 and mean time to each threshold
    (over the seeds that reached it; `reached` counts them), ratios to NAYER's times."""
    table = {}
    for method, summaries in runs.items():
        table[method] = {
            "seeds": len(summaries),
            "best_top1": _mean([s["best_top1"] for s in summaries]),
            "top1_at_budget": _mean([s["top1_at_budget"] for s in summaries]),
            "time_to": {k: _mean([s["time_to"][k] for s in summaries]) for k in
                        summaries[0]["time_to"]},
            "reached": {k: sum(s["time_to"][k] is not None for s in summaries)
                        for k in summaries[0]["time_to"]},
        }
    nayer = table.get("nayer")
    for row in table.values():
        row["ratio_to_nayer"] = {
            k: (row["time_to"][k] / nayer["time_to"][k]
                if nayer and row["time_to"][k] and nayer["time_to"][k] else None)
            for k in row["time_to"]}
    return table


def format_table(table: dict[str, dict], budget_s: float) -> str:
    keys = [f"{int(t * 100)}" for t in THRESHOLDS]
    head = (f"{'method':<14} {'seeds':>5} {'best':>7} {'@budget':>8} "
            + " ".join(f"{'t' + k + '%':>8} {'/nayer':>7}" for k in keys))
    lines = [f"time to accuracy, budget {budget_s:.0f} s per run (lossless 846 top-1)", head]
    for method, row in table.items():
        cells = []
        for k in keys:
            t, r = row["time_to"][k], row["ratio_to_nayer"][k]
            cells.append(f"{'-' if t is None else f'{t:.0f}s':>8} "
                         f"{'-' if r is None else f'{r:.2f}x':>7}")
        lines.append(f"{method:<14} {row['seeds']:>5} {row['best_top1']:>7.2%} "
                     f"{row['top1_at_budget']:>8.2%} " + " ".join(cells))
    return "\n".join(lines)


def plot(path: Path, histories: dict[str, list[list[dict]]], budget_s: float) -> None:
    """Every method's test top-1 against wall time on one plot (each seed a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (method, runs) in enumerate(histories.items()):
        for j, h in enumerate(runs):
            ax.plot([r["seconds_total"] for r in h], [100 * r["test_top1"] for r in h],
                    color=f"C{i}", marker="o", markersize=3, alpha=1.0 if j == 0 else 0.6,
                    label=method if j == 0 else None)
    ax.axvline(budget_s, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("wall time (s, compilation included)")
    ax.set_ylabel("student test top-1 (%)")
    ax.set_title("time to accuracy (resnet32 -> resnet20, lossless 846)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget_s", type=float, default=1800.0)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
    p.add_argument("--nayer_seeds", default=None,
                   help="NAYER's seeds if other than --seeds (e.g. 0,1 with --seeds 0)")
    p.add_argument("--workdir", default=str(ROOT / "runs/bench_methods"))
    p.add_argument("--out", default=str(ROOT / "experiments/results/bench_methods_cpu.json"))
    p.add_argument("--tiny", action="store_true", help="seconds per run (CI smoke test)")
    args = p.parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    import jax

    methods = available([m.strip() for m in args.methods.split(",") if m.strip()])
    seeds = [int(s) for s in args.seeds.split(",")]
    nayer_seeds = [int(s) for s in (args.nayer_seeds or args.seeds).split(",")]
    load_start, t0 = os.getloadavg(), time.time()
    histories: dict[str, list[list[dict]]] = {}
    for method in methods:
        for seed in (nayer_seeds if method == "nayer" else seeds):
            print(f"== {method} seed {seed}: budget {args.budget_s:.0f} s", flush=True)
            h = run_one(method, seed, args.budget_s, Path(args.workdir) / f"{method}_seed{seed}",
                        args.tiny)
            histories.setdefault(method, []).append(h)
    runs = {m: [summarize(h, args.budget_s) for h in hs] for m, hs in histories.items()}
    table = aggregate(runs)
    text = format_table(table, args.budget_s)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(out.stem + "_accuracy_vs_time.png")
    plot(png, histories, args.budget_s)
    result = {"budget_s": args.budget_s, "methods": methods, "seeds": seeds,
              "nayer_seeds": nayer_seeds, "tiny": args.tiny,
              "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
              "wall_seconds": time.time() - t0, "cpus": os.cpu_count(),
              "backend": jax.default_backend(), "jax": jax.__version__,
              "python": platform.python_version(), "table": table, "runs": runs,
              "histories": histories, "plot": png.name, "text": text}
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} and {png}")
    return result


if __name__ == "__main__":
    main()
