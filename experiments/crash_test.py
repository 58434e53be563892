"""Crash test: kill a tiny CPU run at N moments (by phase), resume it, compare bitwise.

python experiments/crash_test.py [--n 10] [--seed 0] [--signal KILL|TERM]
    [--phases convert,synthesis,kd_step,checkpoint,...] [--epochs 3]
    [--out experiments/results/crash_test_kill.json]

The run is the shipped preset `nayer_cpu_cifar10_r32_r20` cut to tiny sizes, with the
shared PyTorch resnet20 as `--config.teacher=torch:resnet20:<shared path>` (so every
fresh workdir converts the teacher first) and `--config.checkpoint_every_s=1e-9` (a
checkpoint after synthesis and at every KD step boundary, besides the epoch ends).

1. An uninterrupted reference run, twice (the first warms the XLA compilation cache
   the trials share, and both must agree bitwise); the second's phase timeline is the
   profile the kill moments are drawn from.
2. For each of N trials, in a fresh workdir: start the run, wait until the trace shows
   the k-th start of the target phase (k drawn from the profile's occurrences), sleep a
   random fraction of that occurrence's profiled duration, send the signal; then rerun
   the same command until it exits 0 and compare the final student's parameters
   (every array, bitwise) and metrics.jsonl (minus timing fields) with the reference.

Each process is the real command line (`nayer_jax.main.cli` with the same arguments)
started through this file's `--child` mode, which only adds observers: it appends
`<time> begin|end <phase>` lines to a trace file around the run's phases (setup,
teacher conversion, synthesis, each KD step, eval, checkpoint writes and restores, the
final student save), so each kill records the phase stack it hit, e.g.
`epoch1/kd/checkpoint`. The observers block on the phase's device results before
writing `end` (a phase's window is its compute, not its dispatch); numbers are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESET = "nayer_cpu_cifar10_r32_r20"
TIMING = ("synthesis_seconds", "kd_seconds", "eval_seconds", "seconds_total")
DEFAULT_PHASES = ("convert", "synthesis", "kd_step", "checkpoint", "convert_save", "synthesis",
                  "kd_step", "checkpoint", "student_save", "checkpoint", "eval", "setup")


def run_args(epochs: int) -> list[str]:
    """The run's arguments (after the program name), workdir excluded."""
    sys.path.insert(0, str(ROOT))
    from nayer_jax.paths import shared_dir

    shared = shared_dir()
    overrides = {
        "teacher": f"torch:resnet20:{shared / 'teachers/cifar10_resnet20.th'}",
        "student": "resnet20", "epochs": epochs, "warmup": 1,
        "eval_data": f"npz:{shared / 'data/cifar10-jpeg/test_lossless_846.npz'}",
        "eval_limit": 40, "eval_batch_size": 40, "synthesis_batch_size": 20, "g_steps": 2,
        "gwp_loops": 1, "g_loops": 1, "g_life": 2, "ngf": 8, "le_emb_size": 16,
        "kd_steps": 4, "batch_size": 16, "lr": 0.05, "checkpoint_every_s": 1e-9,
        "pool_skip_loops": 0,  # the preset's 2 would leave this tiny run's pool empty
    }
    return ["--config", PRESET] + [f"--config.{k}={v}" for k, v in overrides.items()]


# ----------------------------------------------------------------------------- child

def child(trace: str, argv: list[str]) -> None:
    """The real command line with phase observers writing to `trace` (line-buffered)."""
    out = open(trace, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def mark(kind: str, phase: str) -> None:
        out.write(f"{time.time():.6f} {kind} {phase}\n")

    mark("begin", "process")
    import jax

    from nayer_jax import classifier, convert, distill, evaluate, loop, synthesis
    from nayer_jax import main as main_mod
    from nayer_jax.checkpoint import RunCheckpointer

    def traced(phase, fn, block=False):
        def wrapper(*args, **kwargs):
            name = phase(*args, **kwargs) if callable(phase) else phase
            mark("begin", name)
            try:
                result = fn(*args, **kwargs)
                if block:
                    jax.block_until_ready(result)
                return result
            finally:
                mark("end", name)
        return wrapper

    loop.setup = traced("setup", loop.setup)
    loop._write_config = traced("config_write", loop._write_config)
    loop.run_epoch = traced(lambda run, epoch, *a, **k: f"epoch{epoch}", loop.run_epoch)
    loop._kd_phase = traced("kd", loop._kd_phase)
    convert.convert_checkpoint = traced("convert", convert.convert_checkpoint)
    classifier.save_classifier = traced(
        lambda directory, *a, **k: ("convert_save" if Path(directory).name == "teacher"
                                    else f"{Path(directory).name}_save"),
        classifier.save_classifier)
    evaluate.evaluate = traced("eval", evaluate.evaluate)
    RunCheckpointer.save = traced("checkpoint", RunCheckpointer.save)
    RunCheckpointer.restore_latest = traced("restore", RunCheckpointer.restore_latest)
    make_kd_step = distill.make_kd_step
    distill.make_kd_step = lambda *a, **k: traced("kd_step", make_kd_step(*a, **k), block=True)
    get_builder = synthesis.get_builder

    def traced_builder(name):
        build = get_builder(name)

        def wrapped_build(*a, **k):
            method, state = build(*a, **k)
            method.synthesize_epoch = traced("synthesis", method.synthesize_epoch, block=True)
            return method, state
        return wrapped_build

    synthesis.get_builder = traced_builder
    main_mod.cli(["nayer_jax.main"] + argv)


# ----------------------------------------------------------------------------- parent

def read_trace(path: Path) -> list[tuple[float, str, str]]:
    events = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line cut by a kill is dropped
                events.append((float(parts[0]), parts[1], parts[2]))
    return events


def stack_at(events, t: float) -> list[str]:
    """The open phases (outermost first) at time t."""
    stack: list[str] = []
    for te, kind, phase in events:
        if te > t:
            break
        if kind == "begin":
            stack.append(phase)
        elif phase in stack:
            del stack[len(stack) - 1 - stack[::-1].index(phase)]
    return stack


def windows(events) -> dict[str, list[tuple[float, float]]]:
    """phase -> [(start, duration)] relative to the process start, in order."""
    t0 = events[0][0] if events else 0.0
    open_, out = {}, {}
    for t, kind, phase in events:
        if kind == "begin":
            open_.setdefault(phase, []).append(t)
        elif open_.get(phase):
            start = open_[phase].pop()
            out.setdefault(phase, []).append((start - t0, t - start))
    for v in out.values():
        v.sort()
    return out


class Runner:
    def __init__(self, root: Path, args: list[str], timeout: float, xla_cache: str | None):
        self.root, self.args, self.timeout = root, args, timeout
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [
                            p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        if xla_cache is not None:  # None: the user's default compilation cache
            self.env["NAYER_JAX_CACHE"] = xla_cache
        self.n = 0

    def start(self, workdir: Path) -> tuple[subprocess.Popen, Path, Path]:
        self.n += 1
        trace = workdir.parent / f"{workdir.name}.{self.n}.trace"
        log = workdir.parent / f"{workdir.name}.{self.n}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(trace), "--",
               *self.args, "--workdir", str(workdir)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=open(log, "w"),  # noqa: SIM115
                                stderr=subprocess.STDOUT)
        return proc, trace, log

    def run(self, workdir: Path) -> tuple[int, Path, Path]:
        proc, trace, log = self.start(workdir)
        try:
            rc = proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        return rc, trace, log


def last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines()
             if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def wait_for_begin(proc: subprocess.Popen, trace: Path, phase: str, k: int,
                   timeout: float) -> float | None:
    """Poll the trace until the k-th (1-based) `begin phase`; its time, or None."""
    deadline, seen, pos, buf = time.time() + timeout, 0, 0, ""
    while time.time() < deadline and proc.poll() is None:
        if trace.exists():
            with trace.open() as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                parts = line.split()
                if len(parts) == 3 and parts[1] == "begin" and parts[2] == phase:
                    seen += 1
                    if seen == k:
                        return float(parts[0])
        time.sleep(0.002)
    return None


def student_and_metrics(workdir: Path):
    import numpy as np
    from flax import traverse_util

    from nayer_jax.classifier import load_classifier

    params = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(
        load_classifier(workdir / "student").variables).items()}
    history = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    return params, [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def compare(ref, workdir: Path) -> dict:
    try:
        params, metrics = student_and_metrics(workdir)
    except Exception as e:  # noqa: BLE001 - reported in the row
        return {"params_equal": False, "metrics_equal": False,
                "diff": f"{type(e).__name__}: {e}"[:200]}
    ref_params, ref_metrics = ref
    differing = [k for k in ref_params if k not in params or params[k].dtype != ref_params[k].dtype
                 or params[k].tobytes() != ref_params[k].tobytes()]
    differing += [k for k in params if k not in ref_params]
    return {"params_equal": not differing, "metrics_equal": metrics == ref_metrics,
            "diff": ", ".join(differing[:3])}


def _exit_ok(signal_name: str, rc: int, hit: str, last: str, sent: bool) -> bool:
    """KILL: died of it. TERM: exit 75 with the one 'preempted:' line once the loop's
    handler is installed; before it (interpreter start) the default action; after the
    last checkpoint (the final student save) the run simply finishes."""
    if not sent:
        return rc == 0
    if signal_name == "KILL":
        return rc == -signal.SIGKILL
    if rc == 75:
        return last.startswith("preempted: SIGTERM at ")
    if rc == -signal.SIGTERM:
        return hit in ("startup", "between phases")
    return rc == 0 and hit.endswith("student_save")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10, help="number of kills (one trial each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    p.add_argument("--phases", default=",".join(DEFAULT_PHASES),
                   help="target phases, cycled over the N kills")
    p.add_argument("--epochs", type=int, default=3, help="run length (epoch 0 is warmup)")
    p.add_argument("--root", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per process")
    p.add_argument("--reference-runs", type=int, choices=(1, 2), default=2,
                   help="2: a cold run warms the compilation cache and must equal the second")
    p.add_argument("--xla-cache", default=None,
                   help="XLA compilation cache of the runs: a directory, 'default' (the "
                        "user's, ~/.cache/nayer_jax/xla) or unset: ROOT/xla_cache (isolated)")
    p.add_argument("--out", default=None,
                   help="JSON results (default experiments/results/crash_test_<signal>.json)")
    args = p.parse_args()
    out = Path(args.out or ROOT / f"experiments/results/crash_test_{args.signal.lower()}.json")
    root = Path(args.root or tempfile.mkdtemp(prefix="crash_test_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    sig = getattr(signal, f"SIG{args.signal}")
    cache = {None: str(root / "xla_cache"), "default": None}.get(args.xla_cache, args.xla_cache)
    runner = Runner(root, run_args(args.epochs), args.timeout, cache)
    t_all = time.time()
    load_start = list(os.getloadavg())

    # 1. reference: twice, uninterrupted (cache warm-up + determinism), profile from the 2nd
    refs = []
    for name in ("reference_cold", "reference")[2 - args.reference_runs:]:
        rc, trace, log = runner.run(root / name)
        if rc != 0:
            raise SystemExit(f"error: the uninterrupted run {name} failed (rc={rc}): "
                             f"{last_line(log)}; see {log}")
        refs.append((student_and_metrics(root / name), trace))
    ref = refs[-1][0]
    ref_ok = compare(refs[0][0], root / "reference") if len(refs) == 2 else None
    profile = windows(read_trace(refs[-1][1]))

    phases = [s for s in args.phases.split(",") if s]
    missing = [ph for ph in phases if ph not in profile]
    if missing:
        raise SystemExit(f"error: --phases {missing} never occur in the run (known: "
                         f"{sorted(profile)})")

    # 2. trials
    rows = []
    for i in range(args.n):
        target = phases[i % len(phases)]
        occ = profile[target]
        k = rng.randrange(len(occ))
        frac = rng.uniform(0.1, 0.9)
        delay = occ[k][1] * frac
        workdir = root / f"trial_{i:02d}"
        t0 = time.time()
        proc, trace, log = runner.start(workdir)
        started = wait_for_begin(proc, trace, target, k + 1, args.timeout)
        if started is not None:
            time.sleep(max(0.0, started + delay - time.time()))
        t_kill = time.time()
        sent = proc.poll() is None
        if sent:
            proc.send_signal(sig)
        try:
            rc = proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        events = read_trace(trace)
        stack = [s for s in stack_at(events, t_kill) if s != "process"] if sent else []
        hit = "/".join(stack) or ("startup" if sent and not any(
            ph == "setup" for _, _, ph in events) else "between phases")
        killed_line = last_line(log)
        resumes, resume_rc, resume_line, resumed_at, warnings = 0, rc, "", "", []
        while resume_rc != 0 and resumes < 3:
            resumes += 1
            resume_rc, _, rlog = runner.run(workdir)
            resume_line = last_line(rlog)
            text = rlog.read_text(errors="replace").replace("\r", "\n").splitlines()
            resumed_at = resumed_at or next(
                (ln.split(" at ", 1)[1] for ln in text if ln.startswith("resuming ")), "start")
            warnings += [ln.strip()[:300] for ln in text if ln.startswith("warning")]
        row = {"trial": i, "target": target, "occurrence": k + 1, "fraction": round(frac, 3),
               "signal_sent": sent, "hit": hit, "hit_target": target in stack,
               "killed_rc": rc, "killed_last_line": killed_line, "resumes": resumes,
               "final_rc": resume_rc, "resumed_at": resumed_at, "resume_warnings": warnings,
               "resume_last_line": resume_line,
               **compare(ref, workdir), "seconds": round(time.time() - t0, 1)}
        row["exit_ok"] = _exit_ok(args.signal, rc, hit, killed_line, sent)
        row["ok"] = bool(row["exit_ok"] and row["final_rc"] == 0 and row["params_equal"]
                         and row["metrics_equal"])
        rows.append(row)
        print(f"[{i + 1}/{args.n}] {target} #{k + 1} -> hit {hit}, rc {rc}, resumes {resumes}, "
              f"equal={row['ok']}", flush=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    # 3. report
    head = f"{'#':>2} {'target':<12} {'hit (phase stack at the signal)':<28} {'rc':>4} " \
           f"{'exit ok':>7} {'resumed at':<22} {'params':>6} {'metrics':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['trial']:>2} {r['target']:<12} {r['hit'][:28]:<28} {r['killed_rc']:>4} "
              f"{str(r['exit_ok']):>7} {r['resumed_at'][:22]:<22} {str(r['params_equal']):>6} "
              f"{str(r['metrics_equal']):>7}")
    all_equal = all(r["ok"] for r in rows)
    result = {
        "signal": args.signal, "n": args.n, "seed": args.seed, "epochs": args.epochs,
        "command": ["python", "-m", "nayer_jax.main", *runner.args, "--workdir", "WORKDIR"],
        "reference_runs": args.reference_runs,
        "reference_runs_equal": (None if ref_ok is None
                                 else ref_ok["params_equal"] and ref_ok["metrics_equal"]),
        "profile_seconds": {ph: [round(d, 4) for _, d in v] for ph, v in sorted(profile.items())},
        "trials": rows, "all_equal": all_equal,
        "targets_hit": sum(r["hit_target"] for r in rows),
        "hit_phases": sorted({ph for r in rows for ph in r["hit"].split("/")}),
        "seconds": round(time.time() - t_all, 1),
        "load_avg_start": load_start, "load_avg_end": list(os.getloadavg()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nall {args.n} resumed runs equal the uninterrupted run bitwise: {all_equal} "
          f"(reference runs equal: {result['reference_runs_equal']}); wrote {out}")
    if not args.keep and args.root is None:
        shutil.rmtree(root, ignore_errors=True)
    if not all_equal or result["reference_runs_equal"] is False:
        raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        child(sys.argv[2], sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:])
    else:
        main()
