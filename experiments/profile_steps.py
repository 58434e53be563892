"""A/B variants of the JAX KD and synthesis steps on this machine, interleaved, as ratios.

python experiments/profile_steps.py [--variants base onednn gather_aug ...] [--rounds 5]
    [--steps 3] [--kinds kd synth] [--out experiments/results/profile_steps_cpu.json]
python experiments/profile_steps.py --trace base [--kinds kd]   # per-op time breakdown
python experiments/profile_steps.py --list

Every variant runs in its own worker process (XLA flags are read once per process), all
workers alive at once: each compiles, then the parent asks them in turn for `--steps`
timed calls, round after round (the order rotates every round), so load from other
processes falls on all variants alike. Reported: the median per call and its ratio to
the first variant (> 1: the variant is faster).

A variant is XLA flags and/or a code patch applied in the worker before the steps are
built (the library is not edited): see VARIANTS. `--trace` runs one variant under
jax.profiler and sums the XLA:CPU thunk times per op and per op kind (fusion name
without its number), which is where the step's time goes.
Settings are those of bench_torch_ref.py (resnet20 -> resnet20, synthesis batch 100,
KD batch 128); `--smoke` uses its tiny sizes.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ONEDNN = "--xla_cpu_use_onednn=true"

# atom -> (XLA flags, code patch name or None, what it is). A variant is one atom or
# several joined by "+", e.g. "relu_cond+no_ynn" (flags and patches of both).
VARIANTS: dict[str, tuple[str, str | None, str]] = {
    "base": ("", None, "library as is (its XLA:CPU defaults, nayer_jax/cpu_defaults.py)"),
    "onednn": (ONEDNN, None, "oneDNN convolution/matmul thunks"),
    "no_ynn": ("--xla_cpu_experimental_ynn_fusion_type=", None,
               "YNNPACK fusions off (Eigen convolutions)"),
    "xnn": ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce", None,
            "XNNPACK fusions for dot/eltwise/reduce"),
    "onednn_fusions": ("--xla_cpu_experimental_onednn_fusion_type=dot,eltwise", None,
                       "oneDNN dot/eltwise fusions (use with onednn)"),
    "fast_math": ("--xla_cpu_enable_fast_math=true", None, "fast-math codegen"),
    "concurrency_sched": ("--xla_cpu_enable_concurrency_optimized_scheduler=true", None,
                          "concurrency-optimized scheduler"),
    "no_fusion_emitters": ("--xla_cpu_use_fusion_emitters=false", None,
                           "legacy elemental IR emitters instead of the fusion emitters"),
    "no_fusion": ("--xla_disable_hlo_passes=fusion", None,
                  "XLA:CPU instruction fusion off (no recomputed elementwise chains)"),
    "no_tree_reduce": ("--xla_disable_hlo_passes=tree_reduction_rewriter", None,
                       "no tree-reduction rewrite: BN's batch reductions stay one reduce "
                       "instead of a 32-wide reduce-window plus a reduce"),
    "single_thread": ("--xla_cpu_multi_thread_eigen=false", None,
                      "Eigen single-threaded (intra-op parallelism off)"),
    "gather_aug": ("", "gather_aug", "crop+flip as one batched gather (not vmapped dm-pix)"),
    "relu_barrier": ("", "relu_barrier", "every ReLU output through optimization_barrier"),
    "relu_dot": ("", "relu_dot", "every ReLU output materialized through a dot with I"),
    "relu_cond": ("", "relu_cond", "every ReLU output materialized through an identity cond"),
    "gen_cond": ("", "gen_cond", "generator LeakyReLU and upsample outputs materialized (cond)"),
    "naive_upsample_conv": ("", "naive_upsample_conv",
                            "generators' up x2 -> conv3x3 as a materialized upsampling and a 3x3 "
                            "conv (as before the polyphase layers.UpsampleConv3x3)"),
    "no_narrow": ("", "no_narrow", "cpu_conv without its narrow-channel forwards"),
    "no_polyphase": ("", "no_polyphase", "cpu_conv without its polyphase strided input gradient"),
    "plain_wgrad": ("", "plain_wgrad",
                    "layers.conv as lax.conv_general_dilated: none of nayer_jax.models.cpu_conv's "
                    "rewrites (its weight gradient over the whole batch)"),
    "wgrad_slices_only": ("", "wgrad_slices_only",
                          "of cpu_conv's rewrites only the sliced weight gradient (no narrow-channel "
                          "forwards, no polyphase strided input gradient: as before they existed)"),
    "flax_bn": ("", "flax_bn",
                "flax's nn.BatchNorm and jnp.mean/var BN statistics (as before "
                "nayer_jax.models.batchnorm, whose per-channel sums are matrix-vector products)"),
    "plain_sums": ("", "plain_sums",
                   "batchnorm.BatchNorm with channel_sum as a plain reduce (isolates the "
                   "matrix-vector sums from the custom VJP)"),
}


def variant_parts(variant: str) -> tuple[str, list[str], str]:
    """(XLA flags, patches, description) of a '+'-joined variant."""
    flags, patches, what = [], [], []
    for atom in variant.split("+"):
        if atom not in VARIANTS:
            raise SystemExit(f"unknown variant atom {atom!r}; see --list")
        f, patch, w = VARIANTS[atom]
        flags += [f] if f else []
        patches += [patch] if patch else []
        what.append(w)
    return " ".join(merge_disabled_passes(flags)), patches, "; ".join(what)


def merge_disabled_passes(flags: list[str]) -> list[str]:
    """One --xla_disable_hlo_passes holding every atom's passes (XLA keeps only one)."""
    key = "--xla_disable_hlo_passes="
    passes = [f[len(key):] for f in flags if f.startswith(key)]
    rest = [f for f in flags if not f.startswith(key)]
    return rest + ([key + ",".join(passes)] if passes else [])


# ----------------------------------------------------------------------- code patches

def crop_flip_gather(rng, images, pad: int = 4, flip: bool = True):
    """Drop-in for nayer_jax.augment.random_crop_flip: the same distribution (per image a
    uniform crop offset in [0, 2*pad] of the zero-padded image, a fair coin for the flip),
    computed as one batched gather instead of vmapped dm-pix ops. Differentiable w.r.t.
    `images` (the gather's transpose is a scatter-add)."""
    import jax
    import jax.numpy as jnp

    n, h, w, c = images.shape
    k_crop, k_flip = jax.random.split(rng)
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        off = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    else:
        padded, off = images, jnp.zeros((n, 2), jnp.int32)
    rows = off[:, 0:1] + jnp.arange(h)[None]                      # (n, h)
    cols = jnp.broadcast_to(jnp.arange(w)[None], (n, w))          # (n, w)
    if flip:
        cols = jnp.where(jax.random.bernoulli(k_flip, 0.5, (n, 1)), w - 1 - cols, cols)
    cols = cols + off[:, 1:2]
    return padded[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def materialize(x):
    """x, computed once into its own buffer: an identity `lax.cond` on a data-dependent
    predicate, which XLA:CPU can neither fuse into consumers nor fold away (it drops
    `optimization_barrier` before fusion). Consumers then read the buffer instead of
    re-running the elementwise chain that produced x (XLA duplicates such chains into
    every consumer, transposes included). Differentiable (the cond's VJP is a cond)."""
    import jax

    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, lambda a: a, lambda a: a, x)


def naive_upsample_conv3x3(features: int, bias: bool = False, name: str | None = None,
                           *, kernel_init):
    """Drop-in for layers.upsample_conv3x3 (same parameters) that upsamples, then convolves."""
    import flax.linen as nn
    import jax.numpy as jnp
    from jax import lax
    from nayer_jax.models import layers

    class NaiveUpsampleConv3x3(layers.UpsampleConv3x3):
        @nn.compact
        def __call__(self, x):
            kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                                jnp.float32)
            y = lax.conv_general_dilated(layers.upsample_nearest2x(x), kernel, (1, 1),
                                         ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
            if self.use_bias:
                y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
            return y

    return NaiveUpsampleConv3x3(features, use_bias=bias, kernel_init=kernel_init, name=name)


def flax_batch_moments(x, fast_variance: bool = True):
    """(mean, var) as flax / jnp compute them: plain reductions, autodiff through both."""
    import jax.numpy as jnp

    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    if fast_variance:
        return mean, jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
    return mean, jnp.mean(jnp.square(x - mean), axes)


def apply_patch(name: str) -> None:
    if name == "flax_bn":
        import flax.linen as nn
        from nayer_jax.models import batchnorm, layers
        layers.BatchNorm = nn.BatchNorm
        batchnorm.batch_moments = flax_batch_moments
        return
    if name == "plain_sums":
        from nayer_jax.models import batchnorm
        batchnorm.dot_reductions = lambda: False
        return
    if name in ("wgrad_slices_only", "no_narrow", "no_polyphase"):
        from nayer_jax.models import cpu_conv

        if name != "no_polyphase":
            cpu_conv._rewrite = lambda w_shape, strides: None
        if name != "no_narrow":
            cpu_conv.input_grad = cpu_conv.xla_input_grad
        return
    if name == "plain_wgrad":
        from nayer_jax.models import layers
        layers.conv_op = lambda: None
        return
    if name == "naive_upsample_conv":
        from nayer_jax.models import layers
        layers.upsample_conv3x3 = naive_upsample_conv3x3
        return
    if name == "gather_aug":
        from nayer_jax import augment
        augment.random_crop_flip = crop_flip_gather
        return
    if name == "relu_barrier":
        import flax.linen as nn
        import jax
        from nayer_jax.models import layers
        layers.relu = lambda x: jax.lax.optimization_barrier(nn.relu(x))
        return
    if name in ("relu_dot", "relu_cond", "gen_cond"):
        import flax.linen as nn
        import jax.numpy as jnp
        from nayer_jax.models import layers

        def via_dot(x):
            y = nn.relu(x)
            return jnp.einsum("...c,cd->...d", y, jnp.eye(y.shape[-1], dtype=y.dtype))

        if name == "relu_dot":
            layers.relu = via_dot
        elif name == "relu_cond":
            layers.relu = lambda x: materialize(nn.relu(x))
        else:  # the generator's activations and upsamplings
            leaky, up = layers.leaky_relu, layers.upsample_nearest2x
            layers.leaky_relu = lambda x: materialize(leaky(x))
            layers.upsample_nearest2x = lambda x: materialize(up(x))
        return
    raise ValueError(f"unknown patch {name!r}")


# ---------------------------------------------------------------------------- worker

def worker(variant: str, kinds: list[str], smoke: bool) -> None:
    import jax

    for patch in variant_parts(variant)[1]:
        apply_patch(patch)
    from experiments import bench_torch_ref as b

    cfg = b.BenchSettings(**(b.SMOKE if smoke else {}))
    ours = b.JaxNayer(cfg, b.load_lte(cfg.num_classes))
    fns = {"kd": ours.kd_step, "synth": ours.synthesis_step}
    first = {k: b.first_call(fns[k]) for k in kinds}
    print("READY " + json.dumps(first), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        kind, n = cmd[0], int(cmd[1])
        times = []
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fns[kind]())
            times.append([time.perf_counter() - t, time.process_time() - c])
        print("TIMES " + json.dumps(times), flush=True)


class Worker:
    def __init__(self, variant: str, kinds: list[str], smoke: bool):
        flags = variant_parts(variant)[0]
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--kinds", *kinds]
        if smoke:
            cmd.append("--smoke")
        self.variant, self.flags = variant, env["XLA_FLAGS"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        self.first = self._expect("READY")

    def _expect(self, tag: str):
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        raise RuntimeError(f"worker {self.variant} exited (rc {self.proc.wait()})")

    def run(self, kind: str, n: int) -> list[float]:
        self.proc.stdin.write(f"{kind} {n}\n")
        self.proc.stdin.flush()
        return self._expect("TIMES")

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()


def compare(variants: list[str], kinds: list[str], rounds: int, steps: int, smoke: bool) -> dict:
    import numpy as np

    load_start = os.getloadavg()
    workers = []
    try:
        for v in variants:  # one at a time: compiles do not compete with each other
            workers.append(Worker(v, kinds, smoke))
        times = {k: {w.variant: [] for w in workers} for k in kinds}
        cpu = {k: {w.variant: [] for w in workers} for k in kinds}
        for r in range(rounds):
            for kind in kinds:
                order = workers[r % len(workers):] + workers[:r % len(workers)]
                if r % 2:
                    order = order[::-1]
                for w in order:
                    for wall, proc_cpu in w.run(kind, steps):
                        times[kind][w.variant].append(wall)
                        cpu[kind][w.variant].append(proc_cpu)
    finally:
        for w in workers:
            w.close()
    load_end = os.getloadavg()
    result = {"variants": {w.variant: {"xla_flags": w.flags, "patches": variant_parts(w.variant)[1],
                                       "what": variant_parts(w.variant)[2], "first_call_s": w.first}
                           for w in workers},
              "kinds": kinds, "rounds": rounds, "calls_per_round": steps, "smoke": smoke,
              "load_avg_start": list(load_start), "load_avg_end": list(load_end),
              "cpus": os.cpu_count(), "results": {}}
    base = variants[0]
    print(f"\nload {load_start[0]:.2f} -> {load_end[0]:.2f}; {rounds} rounds x {steps} calls; "
          f"ratio = {base} / variant (> 1: faster than {base})")
    print("wall = seconds per call; cpu = process CPU seconds per call (all threads; steadier "
          "than wall time on a loaded machine)")
    print(f"{'step':<6} {'variant':<26} {'wall s':>8} {'min s':>8} {'ratio':>7} {'cpu s':>8} "
          f"{'ratio':>7}")
    for kind in kinds:
        med = {v: float(np.median(t)) for v, t in times[kind].items()}
        cmed = {v: float(np.median(t)) for v, t in cpu[kind].items()}
        result["results"][kind] = {
            v: {"median_s": med[v], "min_s": float(np.min(t)), "ratio_vs_" + base: med[base] / med[v],
                "median_cpu_s": cmed[v], "cpu_ratio_vs_" + base: cmed[base] / cmed[v],
                "times": t, "cpu_times": cpu[kind][v]}
            for v, t in times[kind].items()}
        for v in variants:
            print(f"{kind:<6} {v:<26} {med[v]:>8.3f} {min(times[kind][v]):>8.3f} "
                  f"{med[base] / med[v]:>6.2f}x {cmed[v]:>8.3f} {cmed[base] / cmed[v]:>6.2f}x")
    return result


# ----------------------------------------------------------------------------- trace

def trace(variant: str, kinds: list[str], smoke: bool, calls: int = 3, top: int = 25) -> dict:
    """Run in this process (XLA flags must already be in the environment)."""
    import jax

    for patch in variant_parts(variant)[1]:
        apply_patch(patch)
    from experiments import bench_torch_ref as b

    cfg = b.BenchSettings(**(b.SMOKE if smoke else {}))
    ours = b.JaxNayer(cfg, b.load_lte(cfg.num_classes))
    fns = {"kd": ours.kd_step, "synth": ours.synthesis_step}
    out = {}
    for kind in kinds:
        for _ in range(2):
            jax.block_until_ready(fns[kind]())
        d = tempfile.mkdtemp(prefix=f"trace_{kind}_")
        t = time.perf_counter()
        with jax.profiler.trace(d):
            for _ in range(calls):
                jax.block_until_ready(fns[kind]())
        wall = (time.perf_counter() - t) / calls
        pd = jax.profiler.ProfileData.from_file(glob.glob(d + "/**/*.xplane.pb", recursive=True)[0])
        per_op, per_kind = collections.Counter(), collections.Counter()
        for plane in pd.planes:
            for line in plane.lines:
                if "XLA" not in line.name:  # the XLA:CPU compute threads (Eigen pool)
                    continue
                for ev in line.events:
                    if ev.name.startswith("ThunkExecutor") or "wait" in ev.name:
                        continue
                    ms = ev.duration_ns / 1e6 / calls
                    per_op[ev.name] += ms
                    per_kind[re.sub(r"[.\d]+$", "", ev.name)] += ms
        total = sum(per_op.values())
        print(f"\n{kind}: {wall * 1e3:.0f} ms per call (under the profiler), op time summed over "
              f"threads {total:.0f} ms; load {os.getloadavg()[0]:.2f}")
        for name, ms in per_kind.most_common(12):
            print(f"  {ms:8.1f} ms  {100 * ms / total:5.1f}%  {name} (kind)")
        for name, ms in per_op.most_common(top):
            print(f"  {ms:8.1f} ms  {100 * ms / total:5.1f}%  {name}")
        out[kind] = {"wall_ms": wall * 1e3, "op_ms_total": total,
                     "by_kind_ms": dict(per_kind.most_common()),
                     "top_ops_ms": dict(per_op.most_common(top)), "trace_dir": d}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["base", "onednn", "gather_aug",
                                                     "onednn_gather_aug"])
    p.add_argument("--kinds", nargs="+", default=["kd", "synth"], choices=["kd", "synth"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--trace", metavar="VARIANT")
    p.add_argument("--worker", metavar="VARIANT", help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.list:
        for name, (flags, patch, what) in VARIANTS.items():
            print(f"{name:<20} {what}  [{flags or '-'}; patch {patch or '-'}]")
        return
    if args.worker:
        worker(args.worker, args.kinds, args.smoke)
        return
    if args.trace:
        flags = variant_parts(args.trace)[0]
        if flags and flags not in os.environ.get("XLA_FLAGS", ""):  # re-exec with the flags
            env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()}
            sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))
        result = {"trace": args.trace, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  **trace(args.trace, args.kinds, args.smoke)}
    else:
        result = compare(args.variants, args.kinds, args.rounds, args.steps, args.smoke)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
