"""Times NAYER's phases for a config: one synthesis step, one KD step, one whole epoch.

python experiments/bench_nayer.py [--config nayer_jax/configs/nayer_cpu_cifar10_r32_r20.py]
    [--repeats 5] [--out experiments/results/bench_nayer_cpu.json]

Prints a table and writes JSON. Steady-state step times exclude compilation (reported
separately); each timed call ends with block_until_ready, as the loop's reads do.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nayer_jax import distill, parallel  # noqa: E402
from nayer_jax.models import registry  # noqa: E402
from nayer_jax.synthesis import nayer  # noqa: E402
from nayer_jax.teacher_source import resolve_teacher  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds incl. compile, median of the next `repeats` calls)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "nayer_jax/configs/nayer_cpu_cifar10_r32_r20.py"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "experiments/results/bench_nayer_cpu.json"))
    p.add_argument("--num-devices", type=int, default=1, help="mesh size (data axis)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. synthesis_batch_size=64")
    args = p.parse_args()
    config = load_config(args.config)
    for item in args.set:
        key, value = item.split("=", 1)
        config[key] = type(config[key])(value)
    mesh = parallel.make_mesh(args.num_devices)

    workdir = Path(tempfile.mkdtemp(prefix="bench_nayer_"))
    teacher = resolve_teacher(config.teacher, workdir)
    teacher.variables = parallel.replicate(teacher.variables, mesh)
    student_model = registry.create_model(config.student, teacher.meta.num_classes)
    method, state = nayer.build(config, teacher, student_model, jax.random.key(0), mesh=mesh)
    state = parallel.replicate(state, mesh)
    student = parallel.replicate(
        distill.create_student_state(student_model, jax.random.key(1), teacher.meta.image_shape,
                                     config.lr), mesh)
    sv = distill.student_variables(student)

    # One synthesis step (with L_adv, as after warmup), state threaded through like the loop.
    # The carry shares the generator's buffers with its state and every step donates it, so
    # it starts from a copy: `state` itself goes on to fill the pool below.
    carry, rows, onehot = method.init_loop(jax.tree.map(jnp.copy, state), jax.random.key(2))
    holder = {"carry": carry}

    def synth_step():
        holder["carry"] = method.step(holder["carry"], rows, onehot, state, sv, jax.random.key(3),
                                      use_adv=True)
        return holder["carry"].best_loss

    syn_first, syn_step = timed(synth_step, args.repeats)

    # Fill the pool so KD samples real synthesized images, then time one KD step.
    state, _ = method.synthesis_loop(state, sv, jax.random.key(4), use_adv=False)
    kd_step = distill.make_kd_step(teacher, method.sample, config.batch_size, config.temperature,
                                   config.aug_pad, config.aug_flip, mesh=mesh)
    sh = {"s": student}

    def kd():
        sh["s"], loss = kd_step(sh["s"], state, teacher.variables, jax.random.key(5))
        return loss

    kd_first, kd_time = timed(kd, args.repeats)

    # One whole post-warmup epoch: g_loops synthesis loops + kd_steps KD steps (compiled).
    def epoch():
        nonlocal state
        state, m = method.synthesize_epoch(state, distill.student_variables(sh["s"]),
                                           config.warmup, jax.random.key(6))
        sh["s"], loss = distill.run_kd_steps(kd_step, sh["s"], state, teacher.variables,
                                             jax.random.key(7), config.kd_steps)
        return loss

    t = time.perf_counter()
    jax.block_until_ready(epoch())
    epoch_time = time.perf_counter() - t

    rows_out = [
        ("synthesis step (batch %d, with L_adv)" % config.synthesis_batch_size, syn_step, syn_first),
        ("KD step (batch %d)" % config.batch_size, kd_time, kd_first),
        ("epoch (%d loops x %d g_steps + %d KD steps)" % (config.g_loops, config.g_steps,
                                                          config.kd_steps), epoch_time, None),
    ]
    print(f"\nNAYER phases, config {Path(args.config).name}, {args.num_devices} device(s), "
          f"backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'phase':<48} {'seconds':>10} {'first call':>11}")
    for name, sec, first in rows_out:
        print(f"{name:<48} {sec:>10.3f} {'' if first is None else f'{first:>11.2f}'}")
    result = {
        "config": Path(args.config).name, "backend": jax.default_backend(),
        "num_devices": args.num_devices, "overrides": args.set,
        "device": str(jax.devices()[0].device_kind), "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0], "jax": jax.__version__,
        "python": platform.python_version(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "synthesis_step_s": syn_step, "synthesis_first_call_s": syn_first,
        "kd_step_s": kd_time, "kd_first_call_s": kd_first, "epoch_s": epoch_time,
        "synthesis_batch_size": config.synthesis_batch_size, "kd_batch_size": config.batch_size,
        "g_steps": config.g_steps, "g_loops": config.g_loops, "kd_steps": config.kd_steps,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
