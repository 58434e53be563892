"""The floor the convolutions set: every convolution of the NAYER KD and synthesis steps,
one at a time, XLA:CPU vs PyTorch, beside the whole steps, in one invocation.

python experiments/bench_conv_floor.py [--rounds 5] [--calls 5] [--smoke]
    [--xla-flags "..."] [--out experiments/results/bench_conv_floor_cpu.json]

Issue 15 asks for our steps >= 1.0x of PyTorch on CPU, or for the floor XLA:CPU cannot go
below. This measures that floor. The steps are bench_torch_ref.py's (same settings,
models and teacher). Their forward convolutions are read from the jaxprs of the teacher,
student and generator forwards (shapes, strides, padding as the library runs them). A
step needs, per forward conv:
- KD step: teacher fwd; student fwd + weight grad, + input grad except on the image;
- synthesis step: generator fwd + input grad + weight grad; teacher and student fwd +
  input grad (gradients flow to the image only; their weights are frozen).
Each piece runs as its own call: XLA `lax.conv_general_dilated` (NHWC/HWIO) and its
`jax.vjp` w.r.t. the input or the weights, jitted, each as `layers.conv` runs it (on one
CPU device through `nayer_jax.models.cpu_conv`'s rewrites); PyTorch `F.conv2d` (NCHW) and
`aten.convolution_backward` with one output mask. Both sides alternate per piece (the
order flips every round; each turn opens with one untimed call, since a few-ms call right
after the other library's is slowed by its spinning threads), then the whole steps
alternate as in bench_torch_ref.py.

Reported per step: the sum of the pieces' medians by kind (fwd / input grad / weight
grad), each less its side's near-empty call (dispatch), for XLA and for PyTorch, and
the whole steps' medians; the convolutions' GFLOP/s on each side, beside one large f32
matmul's on each side (how close each library's convolutions come to its own matrix
kernels on this CPU); and each step's time outside its convolutions on each side, beside
the budget our step has for it at 1.0x (PyTorch's whole step less XLA's convolutions). If
that budget is negative, or far below what the same work takes in either library, no
change outside the convolutions can bring our step to 1.0x on this CPU: that is the floor.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    from experiments.bench_torch_ref import _apply_xla_flags_from_argv
    _apply_xla_flags_from_argv()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from experiments import bench_torch_ref as ref  # noqa: E402
from nayer_jax.models import cpu_conv, layers  # noqa: E402

KINDS = ("fwd", "input_grad", "weight_grad")


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One forward convolution as the library runs it (NHWC input, HWIO kernel)."""
    lhs: tuple[int, ...]                  # (N, H, W, C_in)
    rhs: tuple[int, ...]                  # (kh, kw, C_in, C_out)
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # per spatial dim (lo, hi)

    def label(self) -> str:
        n, h, w, c = self.lhs
        kh, kw, _, o = self.rhs
        return f"{n}x{h}x{w}x{c} k{kh}x{kw}->{o} s{self.strides[0]}"


def conv_flops(spec: ConvSpec) -> float:
    """2 x the multiply-adds of one forward conv; each of its gradients is a conv of the
    same size (counted densely, strided or not), so every piece is charged this."""
    n, h, w, _ = spec.lhs
    kh, kw, c_in, c_out = spec.rhs
    (pt, pb), (pl, pr) = spec.padding
    ho = (h + pt + pb - kh) // spec.strides[0] + 1
    wo = (w + pl + pr - kw) // spec.strides[1] + 1
    return 2.0 * n * ho * wo * kh * kw * c_in * c_out


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if hasattr(x, "eqns"):
                yield x
            elif hasattr(x, "jaxpr") and hasattr(x.jaxpr, "eqns"):
                yield x.jaxpr


def forward_convs(fn, *args) -> list[ConvSpec]:
    """The conv_general_dilated calls of fn(*args), in order (recursing into sub-jaxprs)."""
    out = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                p = eqn.params
                dn = p["dimension_numbers"]
                assert (dn.lhs_spec, dn.rhs_spec, dn.out_spec) == ((0, 3, 1, 2), (3, 2, 0, 1),
                                                                   (0, 3, 1, 2)), dn
                assert p["feature_group_count"] == 1 and p["batch_group_count"] == 1
                assert set(p["lhs_dilation"]) == {1} and set(p["rhs_dilation"]) == {1}
                out.append(ConvSpec(tuple(eqn.invars[0].aval.shape),
                                    tuple(eqn.invars[1].aval.shape), tuple(p["window_strides"]),
                                    tuple(tuple(int(a) for a in pad) for pad in p["padding"])))
            for sub in _sub_jaxprs(eqn):
                walk(sub)

    library_op = layers.conv_op  # traced as lax.conv_general_dilated (cpu_conv's narrow
    layers.conv_op = lambda: None  # forwards hold no conv primitive), timed as the library runs it
    try:
        walk(jax.make_jaxpr(fn)(*args).jaxpr)
    finally:
        layers.conv_op = library_op
    return out


def step_pieces(ours: ref.JaxNayer) -> dict[str, collections.Counter]:
    """{step: Counter((ConvSpec, kind) -> calls per step)} for the KD and synthesis steps."""
    cfg, m = ours.cfg, ours.method
    img = (cfg.img_size, cfg.img_size, cfg.channels)
    t_vars, s_vars = ours.teacher.variables, ours.student_vars
    t_apply = lambda b: lambda x: ours.teacher.model.apply(t_vars, x, train=False)  # noqa: E731
    teacher = {b: forward_convs(t_apply(b), jnp.zeros((b, *img))) for b in
               (cfg.kd_batch_size, cfg.synthesis_batch_size)}
    student_kd = forward_convs(
        lambda x: m.student_model.apply(s_vars, x, train=True, mutable=["batch_stats"]),
        jnp.zeros((cfg.kd_batch_size, *img)))
    student_syn = forward_convs(lambda x: m.student_model.apply(s_vars, x, train=False),
                                jnp.zeros((cfg.synthesis_batch_size, *img)))
    gen_vars = {"params": ours.state.gen_params, "batch_stats": ours.state.gen_batch_stats}
    generator = forward_convs(
        lambda r: m.generator.apply(gen_vars, r, train=True, mutable=["batch_stats"]), ours.rows)

    def on_image(spec: ConvSpec) -> bool:
        return spec.lhs[1:] == img

    kd, syn = collections.Counter(), collections.Counter()
    for s in teacher[cfg.kd_batch_size]:
        kd[s, "fwd"] += 1
    for s in student_kd:
        kd[s, "fwd"] += 1
        kd[s, "weight_grad"] += 1
        if not on_image(s):
            kd[s, "input_grad"] += 1
    for s in generator:
        for k in KINDS:
            syn[s, k] += 1
    for s in teacher[cfg.synthesis_batch_size] + student_syn:
        syn[s, "fwd"] += 1
        syn[s, "input_grad"] += 1
    return {"KD step": kd, "synthesis step": syn}


# ------------------------------------------------------------------------------ pieces

def operands(spec: ConvSpec, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(x NHWC, w HWIO, dy NHWC): random operands of one conv and of its gradients."""
    x = rng.standard_normal(spec.lhs, np.float32)
    w = rng.standard_normal(spec.rhs, np.float32) * 0.1
    out = jax.eval_shape(_conv(spec), x, w).shape
    return x, w, rng.standard_normal(out, np.float32)


def _conv(spec: ConvSpec):
    return lambda x, w: lax.conv_general_dilated(
        x, w, spec.strides, spec.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def xla_piece(spec: ConvSpec, kind: str, ops: tuple[np.ndarray, ...]):
    """A jitted XLA call of one piece (fwd: y; input_grad: dx; weight_grad: dw) on `ops`, as
    `layers.conv` runs it: on one CPU device through `cpu_conv`'s rewrites, else lax's conv."""
    conv = _conv(spec)
    x, w, dy = (jnp.asarray(a) for a in ops)
    args = (spec.strides, spec.padding)
    if layers.conv_op() is None:
        pieces = {"fwd": conv,
                  "input_grad": lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
                  "weight_grad": lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]}
    else:
        pieces = {"fwd": lambda x, w: cpu_conv.forward(x, w, *args),
                  "input_grad": lambda x, w, dy: cpu_conv.input_grad(x.shape, w, dy, *args),
                  "weight_grad": lambda x, w, dy: cpu_conv.weight_grad(x, w.shape, dy, *args)}
    f = jax.jit(pieces[kind])
    return (lambda: f(x, w)) if kind == "fwd" else (lambda: f(x, w, dy))


def torch_piece(spec: ConvSpec, kind: str, ops: tuple[np.ndarray, ...]):
    """The same piece in PyTorch on the same operands (NCHW / OIHW), as its modules run it;
    the result in torch layout."""
    import torch
    import torch.nn.functional as F

    (pt, pb), (pl, pr) = spec.padding
    x, w, dy = ops
    _, h, w_in, _ = x.shape
    crop = (slice(None), slice(None), slice(0, h), slice(0, w_in))  # dx of the unpadded x
    if (pt, pl) != (pb, pr):  # asymmetric (the polyphase convs of layers.UpsampleConv3x3):
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # torch pads symmetrically only
        crop = (slice(None), slice(None), slice(pt, pt + h), slice(pl, pl + w_in))
        pt = pl = 0
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    dy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
    stride, padding = list(spec.strides), [pt, pl]
    if kind == "fwd":
        def run():
            with torch.no_grad():
                return F.conv2d(x, wt, stride=stride, padding=padding)
        return run
    mask = [kind == "input_grad", kind == "weight_grad", False]
    if kind == "input_grad":
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, wt, None, stride, padding, [1, 1], False, [0, 0], 1, mask)[0][crop]
    return lambda: torch.ops.aten.convolution_backward(
        dy, x, wt, None, stride, padding, [1, 1], False, [0, 0], 1, mask)[1]


def time_pieces(pieces, rounds: int, calls: int, seed: int = 0) -> dict:
    """{(spec, kind): {"xla_s", "torch_s"}}: medians, both sides alternating per piece."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec, kind in pieces:
        ops = operands(spec, rng)
        fns = {"xla": xla_piece(spec, kind, ops), "torch": torch_piece(spec, kind, ops)}
        for f in fns.values():
            ref._sync(f())
        times = ref.interleaved(fns, rounds, calls, settle=1)
        out[spec, kind] = {"xla_s": ref.median(times["xla"]), "torch_s": ref.median(times["torch"])}
    return out


def call_overhead(rounds: int, calls: int) -> dict:
    """Median seconds of a near-empty call on each side (an XLA dispatch; a torch op)."""
    import torch

    small = jnp.ones((8,), jnp.float32)
    f = jax.jit(lambda a: a * 2.0)
    ts = torch.ones(8)
    fns = {"xla": lambda: f(small), "torch": lambda: ts * 2.0}
    for fn in fns.values():
        ref._sync(fn())
    times = ref.interleaved(fns, rounds, calls * 10, settle=1)
    return {k: ref.median(v) for k, v in times.items()}


def matmul_reference(rounds: int, calls: int, n: int) -> dict:
    """GFLOP/s of one f32 (n, n) @ (n, n) on each side, interleaved: what each library's
    matrix kernels reach on this CPU, the yardstick for its convolutions' GFLOP/s."""
    import torch

    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(jnp.matmul)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns = {"xla": lambda: f(ja, jb), "torch": lambda: ta @ tb}
    for fn in fns.values():
        ref._sync(fn())
    times = ref.interleaved(fns, rounds, calls, settle=1)
    return {"n": n, **{f"{k}_gflops_per_s": 2.0 * n ** 3 / ref.median(v) / 1e9
                       for k, v in times.items()}}


def summarize(steps: dict, timed: dict, whole: dict, overhead: dict) -> list[dict]:
    """Per step: the pieces' medians summed by kind and side (each less one near-empty
    call of its side: the dispatch a fused step does not pay per conv), and the ratios."""
    rows = []
    for step, counter in steps.items():
        by_kind = {side: {k: 0.0 for k in KINDS} for side in ("xla", "torch")}
        for (spec, kind), calls in counter.items():
            for side in by_kind:
                by_kind[side][kind] += calls * max(
                    timed[spec, kind][f"{side}_s"] - overhead[side], 0.0)
        xla_convs, torch_convs = sum(by_kind["xla"].values()), sum(by_kind["torch"].values())
        flops = sum(calls * conv_flops(spec) for (spec, _), calls in counter.items())
        w = whole[step]
        rows.append({
            "step": step, "conv_calls": sum(counter.values()), "conv_gflop": flops / 1e9,
            "xla_convs_s": xla_convs, "torch_convs_s": torch_convs,
            "xla_conv_gflops_per_s": flops / 1e9 / xla_convs if xla_convs else None,
            "torch_conv_gflops_per_s": flops / 1e9 / torch_convs if torch_convs else None,
            "xla_convs_by_kind_s": by_kind["xla"], "torch_convs_by_kind_s": by_kind["torch"],
            "jax_step_s": w["jax_s"], "torch_step_s": w["torch_s"],
            "jax_outside_convs_s": w["jax_s"] - xla_convs,
            "torch_outside_convs_s": w["torch_s"] - torch_convs,
            # what everything outside XLA's convolutions may take for our step to be 1.0x
            "outside_convs_budget_for_1x_s": w["torch_s"] - xla_convs,
            "xla_convs_share_of_jax_step": xla_convs / w["jax_s"],
            "torch_convs_share_of_torch_step": torch_convs / w["torch_s"],
            # the best ratio (torch time / ours) a step can reach while XLA's convolutions
            # stay as they are and everything else in it took no time at all
            "ratio_ceiling_with_these_convs": w["torch_s"] / xla_convs,
            "ratio_now": w["torch_s"] / w["jax_s"],
        })
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5, help="calls per side per round")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round of 1 call (CI)")
    p.add_argument("--out", default=str(ROOT / "experiments/results/bench_conv_floor_cpu.json"))
    p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS (before jax starts)")
    args = p.parse_args(argv)
    rounds, calls = (1, 1) if args.smoke else (args.rounds, args.calls)
    cfg = ref.BenchSettings(**(ref.SMOKE if args.smoke else {}))
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    lte = ref.load_lte(cfg.num_classes)
    torch_teacher, torch_student = ref.torch_models(cfg)
    ours = ref.JaxNayer(cfg, lte, torch_teacher=torch_teacher)
    theirs = ref.TorchNayer(cfg, torch_teacher, torch_student, lte)
    steps = step_pieces(ours)
    pieces = sorted({key for c in steps.values() for key in c}, key=lambda k: (k[0].label(), k[1]))
    timed = time_pieces(pieces, rounds, calls)
    whole = {}
    for step, (fj, ft) in {"synthesis step": (ours.synthesis_step, theirs.synthesis_step),
                           "KD step": (ours.kd_step, theirs.kd_step)}.items():
        ref.first_call(fj), ref.first_call(ft)
        times = ref.interleaved({"jax": fj, "torch": ft}, rounds, calls)
        whole[step] = {"jax_s": ref.median(times["jax"]), "torch_s": ref.median(times["torch"])}
    overhead = call_overhead(rounds, calls)
    matmul = matmul_reference(rounds, calls, 64 if args.smoke else 1024)
    rows = summarize(steps, timed, whole, overhead)
    result = {
        "what": "every convolution of the NAYER KD / synthesis step timed alone, XLA:CPU vs "
                "PyTorch, beside the whole steps (bench_torch_ref settings)",
        "settings": dataclasses.asdict(cfg), "smoke": args.smoke, "rounds": rounds,
        "calls_per_round": calls, "call_overhead_s": overhead, "matmul_reference": matmul,
        "rows": rows,
        "pieces": [{"conv": s.label(), "kind": k, **timed[s, k],
                    "calls_per_step": {st: c[s, k] for st, c in steps.items() if c[s, k]}}
                   for s, k in pieces],
        "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "wall_seconds": time.perf_counter() - t0, "cpus": os.cpu_count(),
        "cpu_model": ref.cpu_model(), "cpu_isa": ref.cpu_isa(), "torch_threads": ref.torch_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "versions": ref.versions(),
        "cpu_conv_rewrites": layers.conv_op() is not None}
    print(f"convolutions alone vs whole steps (medians; load {load_start[0]:.2f} -> "
          f"{result['load_avg_end'][0]:.2f})")
    print(f"{'step':<16}{'convs':>6}{'XLA convs':>11}{'torch convs':>13}{'jax step':>10}"
          f"{'torch step':>12}{'now':>7}{'ceiling':>9}")
    for r in rows:
        print(f"{r['step']:<16}{r['conv_calls']:>6}{r['xla_convs_s']:>10.3f}s"
              f"{r['torch_convs_s']:>12.3f}s{r['jax_step_s']:>9.3f}s{r['torch_step_s']:>11.3f}s"
              f"{r['ratio_now']:>6.2f}x{r['ratio_ceiling_with_these_convs']:>8.2f}x")
    for r in rows:
        kinds = ", ".join(f"{k} {r['xla_convs_by_kind_s'][k]:.3f} / {r['torch_convs_by_kind_s'][k]:.3f}"
                          for k in KINDS)
        print(f"  {r['step']}: XLA / torch seconds by kind: {kinds}")
        print(f"  {r['step']}: outside the convolutions jax {r['jax_outside_convs_s']:.3f} s, torch "
              f"{r['torch_outside_convs_s']:.3f} s; budget for 1.0x {r['outside_convs_budget_for_1x_s']:.3f} s")
        if r["xla_convs_s"] and r["torch_convs_s"]:
            print(f"  {r['step']}: {r['conv_gflop']:.1f} GFLOP of convolutions: XLA "
                  f"{r['xla_conv_gflops_per_s']:.0f} GFLOP/s, torch {r['torch_conv_gflops_per_s']:.0f} GFLOP/s")
    print(f"  one f32 {matmul['n']}^3 matmul: XLA {matmul['xla_gflops_per_s']:.0f} GFLOP/s, "
          f"torch {matmul['torch_gflops_per_s']:.0f} GFLOP/s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
