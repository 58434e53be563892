"""One accelerator check of nayer-jax at the paper's sizes; the parts that device_check.sh runs.

python experiments/device_check.py --part env|jax|torch|run --out PART.json [--smoke]
    [--budget SECONDS]
python experiments/device_check.py --merge OUT.json PART.json ...

Parts (each its own process, so a failure or an out-of-memory in one leaves the others,
and JAX and PyTorch never share the GPU's memory):
  env    devices, versions, nvidia-smi
  jax    NAYER synthesis step (batch 400) and KD step (batch 512), resnet34 teacher ->
         resnet18 student of nayer_jax.models.registry, random weights, in float32 and
         bfloat16 (the library's compute_dtype): median step time, images/s, first-call
         (compile) time, XLA cost-analysis FLOPs and MFU against the chip's peak
  torch  the same two steps in PyTorch (bench_torch_ref.TorchNayer, torch_refs models)
         on CUDA, float32 and bf16 autocast
  run    a short NAYER run (3 epochs: 1 warmup + 2 with KD, the paper's batch sizes and
         steps) through the CLI, python -m nayer_jax.main, on random-weight inputs
--smoke: tiny sizes (digits CNNs for JAX, resnet20 for torch), CPU allowed, well under a
minute; torch then runs on the CPU, as a check of the code path.
Each part writes its JSON after every measurement, so a part stopped by its time budget
still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense peak TFLOP/s per chip (NVIDIA H100/H200 SXM datasheets; no sparsity). JAX runs
# float32 convolutions and matmuls on TF32 tensor cores by default on these chips, so the
# float32 MFU is taken against the TF32 peak (and also reported against plain FP32).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9},
    "H100": {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9},
}


def chip_peaks(device_kind: str) -> dict | None:
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return {"chip": name, **peaks}
    return None


def write(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def bench_settings(smoke: bool, for_torch: bool = False):
    from experiments import bench_torch_ref as b

    if smoke and not for_torch:  # small, fast-compiling zoo models
        return b.BenchSettings(teacher="digits_cnn", teacher_path="random",
                               student="digits_cnn_small", img_size=8, channels=1,
                               synthesis_batch_size=20, ngf=8, le_emb_size=16,
                               kd_batch_size=16, pool_size=64)
    if smoke:
        return b.BenchSettings(teacher="resnet20", teacher_path="random", **b.SMOKE)
    return b.BenchSettings(teacher="resnet34", teacher_path="random", student="resnet18",
                           synthesis_batch_size=400, kd_batch_size=512, pool_size=4096)


def timing(smoke: bool) -> tuple[int, int]:
    """(rounds, calls per round)."""
    return (1, 2) if smoke else (3, 5)


# ---------------------------------------------------------------------------- env

def part_env(out: str, smoke: bool) -> None:
    import jax

    data = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "load_avg": list(os.getloadavg()), "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()]}
    for mod in ("jaxlib", "flax", "optax", "orbax.checkpoint", "chex", "dm_pix", "ml_collections",
                "torch", "numpy"):
        try:
            data[mod] = __import__(mod, fromlist=["_"]).__version__
        except Exception as e:  # noqa: BLE001
            data[mod] = f"missing ({type(e).__name__})"
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,"
                            "power.limit,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        data["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        data["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    write(out, data)


# ---------------------------------------------------------------------------- jax

def _flops(compiled) -> float | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    f = (ca or {}).get("flops")
    return float(f) if f is not None and f > 0 else None


def part_jax(out: str, smoke: bool) -> None:
    import jax
    import jax.numpy as jnp

    from experiments import bench_torch_ref as b
    from nayer_jax import compile_cache

    compile_cache.enable(Path(tempfile.gettempdir()) / "nayer_device_check_xla")
    cfg = bench_settings(smoke)
    device_kind = jax.devices()[0].device_kind
    peaks = chip_peaks(device_kind)
    data = {"settings": vars(cfg), "backend": jax.default_backend(), "device": device_kind,
            "peak_tflops": peaks, "load_avg_start": list(os.getloadavg()), "dtypes": {}}
    write(out, data)
    lte = b.load_lte(cfg.num_classes)
    rounds, calls = timing(smoke)
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        rec: dict = {}
        data["dtypes"][name] = rec
        try:
            t = time.perf_counter()
            ours = b.JaxNayer(cfg, lte, compute_dtype=dtype)
            rec["build_s"] = time.perf_counter() - t
            rec["first_call_s"] = {"synthesis": b.first_call(ours.synthesis_step),
                                   "kd": b.first_call(ours.kd_step)}
            times = b.interleaved({"synthesis": ours.synthesis_step, "kd": ours.kd_step},
                                  rounds, calls)
            for step, batch in (("synthesis", cfg.synthesis_batch_size), ("kd", cfg.kd_batch_size)):
                med = b.median(times[step])
                rec[step] = {"batch": batch, "median_s": med, "min_s": min(times[step]),
                             "times": times[step], "images_per_s": batch / med}
            write(out, data)
            # FLOPs of the compiled steps (the persistent cache makes these compiles hits)
            key = jax.random.key(0)
            kd_flops = _flops(ours.kd.lower(ours.student, ours.state, ours.teacher.variables,
                                            key).compile())
            m = ours.method
            syn_flops = _flops(m._step.lower(ours.carry, ours.rows, ours.onehot, ours.state.mmt,
                                             ours.teacher.variables, ours.student_vars, key,
                                             use_adv=True).compile())
            for step, flops in (("kd", kd_flops), ("synthesis", syn_flops)):
                r = rec[step]
                r["xla_flops"] = flops
                if flops:
                    r["achieved_tflops"] = flops / r["median_s"] / 1e12
                if flops and peaks:
                    peak = peaks["bfloat16"] if name == "bfloat16" else peaks["tf32"]
                    r["mfu"] = r["achieved_tflops"] / peak
                    r["mfu_peak_used"] = "bf16 dense" if name == "bfloat16" else "tf32 dense"
                    if name == "float32":
                        r["mfu_vs_fp32_peak"] = r["achieved_tflops"] / peaks["float32"]
            rec["compile_cache"] = compile_cache.stats()
        except Exception as e:  # noqa: BLE001  (record, go on with the next dtype)
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()[-3000:]
        finally:
            ours = None
        write(out, data)
    data["load_avg_end"] = list(os.getloadavg())
    write(out, data)


# ---------------------------------------------------------------------------- torch

def part_torch(out: str, smoke: bool) -> None:
    import torch

    from experiments import bench_torch_ref as b

    cuda = torch.cuda.is_available()
    data = {"torch": torch.__version__, "cuda": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "load_avg_start": list(os.getloadavg()), "dtypes": {}}
    if not cuda and not smoke:
        data["skipped"] = "no CUDA device"
        write(out, data)
        return
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(1)  # the smoke's code-path check; OpenMP spinning on shared cores
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True  # what JAX does for float32 on this chip
    torch.backends.cudnn.allow_tf32 = True
    cfg = bench_settings(smoke, for_torch=True)
    data["settings"] = vars(cfg)
    lte = b.load_lte(cfg.num_classes)
    rounds, calls = timing(smoke)

    def synced(fn):
        def call():
            value = fn()
            if cuda:
                torch.cuda.synchronize()
            return value
        return call

    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        rec: dict = {}
        data["dtypes"][name] = rec
        try:
            teacher, student = b.torch_models(cfg)
            ref = b.TorchNayer(cfg, teacher, student, lte, device=device, dtype=dtype)
            fns = {"synthesis": synced(ref.synthesis_step), "kd": synced(ref.kd_step)}
            rec["first_call_s"] = {k: b.first_call(f) for k, f in fns.items()}
            times = b.interleaved(fns, rounds, calls)
            for step, batch in (("synthesis", cfg.synthesis_batch_size), ("kd", cfg.kd_batch_size)):
                med = b.median(times[step])
                rec[step] = {"batch": batch, "median_s": med, "min_s": min(times[step]),
                             "times": times[step], "images_per_s": batch / med}
        except Exception as e:  # noqa: BLE001
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()[-3000:]
        finally:
            ref = None
            if cuda:
                torch.cuda.empty_cache()
        write(out, data)
    data["load_avg_end"] = list(os.getloadavg())
    write(out, data)


# ---------------------------------------------------------------------------- run

def _config_file() -> str:
    for rel in ("nayer_jax/configs/nayer_cifar10_r34_r18.py",
                "experiments/configs/nayer_cifar10_r34_r18.py"):
        if (ROOT / rel).is_file():
            return str(ROOT / rel)
    return "nayer_cifar10_r34_r18"  # a preset name, if the files moved again


def part_run(out: str, smoke: bool, budget: float) -> None:
    import numpy as np

    from nayer_jax import classifier

    work = Path(tempfile.mkdtemp(prefix="nayer_device_run_"))
    cfg = bench_settings(smoke)
    teacher_dir = work / "teacher"
    model_vars = classifier.init_variables(
        __import__("nayer_jax.models.registry", fromlist=["_"]).create_model(cfg.teacher, 10),
        cfg.img_size, cfg.channels, seed=0)
    classifier.save_classifier(teacher_dir, model_vars,
                               classifier.meta_for(cfg.teacher, 10, source="random weights"))
    rng = np.random.default_rng(0)
    n_eval = 64 if smoke else 1000
    np.savez(work / "eval.npz",
             x=rng.integers(0, 256, (n_eval, cfg.img_size, cfg.img_size, cfg.channels), np.uint8),
             y=rng.integers(0, 10, n_eval).astype(np.int64))
    lte_path = work / "lte.npy"
    from experiments.bench_torch_ref import load_lte
    np.save(lte_path, load_lte(10))
    overrides = {"teacher": str(teacher_dir), "student": cfg.student, "lte": str(lte_path),
                 "eval_data": f"npz:{work / 'eval.npz'}", "epochs": 3, "warmup": 1,
                 "tensorboard": False}
    if smoke:
        overrides.update(synthesis_batch_size=cfg.synthesis_batch_size, ngf=cfg.ngf,
                         le_emb_size=cfg.le_emb_size, batch_size=cfg.kd_batch_size, g_steps=2,
                         gwp_loops=1, g_loops=1, kd_steps=2, eval_batch_size=32)
    else:  # the paper's CIFAR sizes (synthesis 400, KD 512, g_steps 30, 400 KD steps)
        overrides.update(synthesis_batch_size=400, batch_size=512)
    cmd = [sys.executable, "-m", "nayer_jax.main", "--config", _config_file(),
           "--workdir", str(work / "run")] + [f"--config.{k}={v}" for k, v in overrides.items()]
    data = {"cmd": cmd, "overrides": overrides, "load_avg_start": list(os.getloadavg())}
    write(out, data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(budget, 10))
        data["returncode"] = proc.returncode
        data["stdout_tail"] = proc.stdout[-2000:]
        data["stderr_tail"] = proc.stderr[-3000:]
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        data["summary"] = dict(kv.split("=", 1) for kv in last.split() if "=" in kv)
    except subprocess.TimeoutExpired as e:
        data["returncode"] = None
        data["timed_out_after_s"] = budget
        data["stdout_tail"] = (e.stdout or b"")[-2000:].decode(errors="replace") \
            if isinstance(e.stdout, bytes) else str(e.stdout or "")[-2000:]
    data["wall_s"] = time.perf_counter() - t
    metrics = work / "run" / "metrics.jsonl"
    if metrics.is_file():
        data["epochs"] = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    data["load_avg_end"] = list(os.getloadavg())
    write(out, data)


# ---------------------------------------------------------------------------- merge

def merge(out: str, parts: list[str], smoke: bool, started: float | None) -> dict:
    result = {"what": "nayer-jax device check (device_check.sh)", "smoke": smoke,
              "parts": {}}
    for p in parts:
        name = Path(p).stem.rsplit("_", 1)[-1]
        try:
            result["parts"][name] = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            result["parts"][name] = {"error": f"no result ({type(e).__name__})"}
    if started:
        result["wall_s"] = time.time() - started
    jax_part, torch_part = result["parts"].get("jax", {}), result["parts"].get("torch", {})
    table = []
    for dt in ("float32", "bfloat16"):
        for step in ("synthesis", "kd"):
            j = jax_part.get("dtypes", {}).get(dt, {}).get(step, {})
            t = torch_part.get("dtypes", {}).get(dt, {}).get(step, {})
            row = {"dtype": dt, "step": step, "jax_s": j.get("median_s"),
                   "torch_s": t.get("median_s"), "jax_images_per_s": j.get("images_per_s"),
                   "mfu": j.get("mfu")}
            if row["jax_s"] and row["torch_s"]:
                row["ratio_torch_over_jax"] = row["torch_s"] / row["jax_s"]
            table.append(row)
    result["summary"] = table
    write(out, result)
    print(f"{'dtype':<9} {'step':<10} {'jax s':>9} {'torch s':>9} {'torch/jax':>9} "
          f"{'img/s':>9} {'MFU':>7}")
    f = lambda v, fmt: (fmt % v) if isinstance(v, (int, float)) and not math.isnan(v) else "-"  # noqa: E731
    for r in table:
        print(f"{r['dtype']:<9} {r['step']:<10} {f(r['jax_s'], '%.4f'):>9} "
              f"{f(r['torch_s'], '%.4f'):>9} {f(r.get('ratio_torch_over_jax'), '%.2fx'):>9} "
              f"{f(r['jax_images_per_s'], '%.0f'):>9} {f(r['mfu'], '%.3f'):>7}")
    run = result["parts"].get("run", {})
    print(f"NAYER 3-epoch run: rc {run.get('returncode')}, {run.get('wall_s', float('nan')):.0f} s, "
          f"summary {run.get('summary')}")
    print(f"wrote {out}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["env", "jax", "torch", "run"])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--budget", type=float, default=180.0, help="seconds (run part)")
    p.add_argument("--merge", nargs="*", metavar="PART_JSON")
    p.add_argument("--started", type=float, default=None, help="epoch seconds of the start")
    args = p.parse_args()
    if args.merge is not None:
        merge(args.out, args.merge, args.smoke, args.started)
    elif args.part == "env":
        part_env(args.out, args.smoke)
    elif args.part == "jax":
        part_jax(args.out, args.smoke)
    elif args.part == "torch":
        part_torch(args.out, args.smoke)
    elif args.part == "run":
        part_run(args.out, args.smoke, args.budget)
    else:
        p.error("--part or --merge is required")


if __name__ == "__main__":
    main()
