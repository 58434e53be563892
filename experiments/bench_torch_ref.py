"""NAYER's synthesis step and KD step in plain PyTorch and in nayer-jax, timed side by side.

python experiments/bench_torch_ref.py [--rounds 5] [--steps 3] [--smoke]
    [--out experiments/results/bench_torch_ref_cpu.json] [--xla-flags "..."]

Both sides compute the same thing on the same teacher (the shared PyTorch resnet20,
converted by nayer_jax.convert for the JAX side):

* synthesis step (NAYER, after warmup): LTE rows -> generator (BatchNorm1d, the noisy
  layer of K Linear layers, Linear, 8x8 seed, conv decoder, sigmoid) -> random crop (pad
  4) + flip -> normalize -> teacher (eval) with BN-input statistics hooks -> 10 * L_bn +
  0.5 * CE + 1.33 * L_adv (student in eval mode) -> backward into the generator -> Adam
  (4e-3, betas 0.5/0.999); the lowest-loss batch is tracked.
* KD step: a batch drawn from a uint8 image pool -> crop + flip -> normalize -> teacher
  (eval, no grad) -> student (train mode) -> KL(teacher || student) at T = 20 -> SGD
  (momentum 0.9, weight decay 1e-4).

The PyTorch side is written here from the official NAYER code's algorithm, with two
choices that make it a *stronger* baseline than the official script: teacher and student
parameters are frozen during synthesis (the official code also computes their unused
weight gradients), and KD batches come from an in-memory uint8 pool with one batched
crop/flip gather (the official code decodes PNGs in DataLoader workers).
The JAX side goes through the library's public pieces: `Nayer.init_loop` / `Nayer.step`
and `distill.make_kd_step`.

Timing: per step, torch and JAX run in alternating rounds (A-B-A-B, the order flipped
every round) in this one process, so load from other processes hits both alike. Each
reported time is the median over all timed calls; the first call of each (JAX: trace +
compile) is reported apart. Each call ends synchronized (`.item()` / block_until_ready).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _apply_xla_flags_from_argv() -> None:
    """--xla-flags must reach XLA_FLAGS before jax creates its backend (at first use)."""
    for i, a in enumerate(sys.argv):
        if a == "--xla-flags" and i + 1 < len(sys.argv):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + sys.argv[i + 1]).strip()
        elif a.startswith("--xla-flags="):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + a.split("=", 1)[1]).strip()


if __name__ == "__main__":
    _apply_xla_flags_from_argv()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nayer_jax import classifier, convert, distill, pool as pool_lib  # noqa: E402
from nayer_jax.models import registry  # noqa: E402
from nayer_jax.paths import shared_path  # noqa: E402
from nayer_jax.synthesis import nayer  # noqa: E402


@dataclasses.dataclass
class BenchSettings:
    teacher: str = "resnet20"          # a registry arch; its weights: see teacher_path
    teacher_path: str = ""             # PyTorch checkpoint ("" = shared cifar10_<teacher>.th,
    #                                    "random" = random weights, both sides the same)
    student: str = "resnet20"
    num_classes: int = 10
    img_size: int = 32
    channels: int = 3
    synthesis_batch_size: int = 100
    ngf: int = 64
    le_emb_size: int = 1000
    kd_batch_size: int = 128
    pool_size: int = 2000
    temperature: float = 20.0
    lr: float = 0.2
    lr_g: float = 4e-3
    bn_weight: float = 10.0
    oh_weight: float = 0.5
    adv_weight: float = 1.33
    bn_mmt: float = 0.9
    aug_pad: int = 4


SMOKE = dict(synthesis_batch_size=20, ngf=8, le_emb_size=32, kd_batch_size=16, pool_size=64)


def load_lte(num_classes: int, le_size: int = 512, seed: int = 0) -> np.ndarray:
    """The shared CLIP CIFAR-10 table when it fits, else a fixed random table (timing only)."""
    if num_classes == 10:
        try:
            return np.load(shared_path("lte/cifar10_clip_vitb32.npy")).astype(np.float32)
        except FileNotFoundError:
            pass
    return np.random.default_rng(seed).standard_normal((num_classes, le_size)).astype(np.float32)


# =============================================================================== PyTorch

def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def _torch_modules():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    return torch, nn, F


def make_torch_generator(num_classes: int, num_noisy: int, le_size: int, le_emb_size: int,
                         ngf: int, img_size: int, channels: int = 3):
    """NAYER's CIFAR generator (BatchNorm1d -> noisy layer -> Linear -> conv decoder)."""
    torch, nn, F = _torch_modules()

    class NoisyNLGenerator(nn.Module):
        def __init__(self):
            super().__init__()
            self.chunk, self.s = num_classes, img_size // 4
            self.n1 = nn.BatchNorm1d(le_size)
            self.noisy = nn.ModuleList(nn.Linear(le_size, le_emb_size) for _ in range(num_noisy))
            self.l1 = nn.Linear(le_emb_size, ngf * 2 * self.s * self.s)
            self.decoder = nn.Sequential(
                nn.BatchNorm2d(ngf * 2), nn.Upsample(scale_factor=2),
                nn.Conv2d(ngf * 2, ngf * 2, 3, 1, 1, bias=False), nn.BatchNorm2d(ngf * 2),
                nn.LeakyReLU(0.2, inplace=True), nn.Upsample(scale_factor=2),
                nn.Conv2d(ngf * 2, ngf, 3, 1, 1, bias=False), nn.BatchNorm2d(ngf),
                nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(ngf, channels, 3, 1, 1), nn.Sigmoid())

        def redraw_noisy(self):  # K-to-1: every loop starts from fresh N(0, 1) noisy layers
            with torch.no_grad():
                for lin in self.noisy:
                    lin.weight.normal_(0.0, 1.0)
                    lin.bias.zero_()

        def forward(self, rows):
            x = self.n1(rows)
            x = torch.cat([lin(x[k * self.chunk:(k + 1) * self.chunk])
                           for k, lin in enumerate(self.noisy) if k * self.chunk < x.shape[0]])
            x = self.l1(x).view(x.shape[0], -1, self.s, self.s)
            return self.decoder(x)

    return NoisyNLGenerator()


class _BNHook:
    """Forward hook on a teacher BatchNorm2d: L2 distance of the input's batch mean/var
    (blended with the bn_mmt average of earlier loops) to the running statistics."""

    def __init__(self, module, mmt_rate: float):
        self.mmt_rate, self.mmt, self.loss, self.last = mmt_rate, None, None, None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, _output):
        torch = _torch_modules()[0]
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        if self.mmt is not None:
            m_mean, m_var = self.mmt
            mean = (1 - self.mmt_rate) * mean + self.mmt_rate * m_mean
            var = (1 - self.mmt_rate) * var + self.mmt_rate * m_var
        self.loss = (torch.norm(module.running_var - var, 2)
                     + torch.norm(module.running_mean - mean, 2))


def torch_crop_flip(x, pad: int = 4, flip: bool = True):
    """torchvision RandomCrop(padding=pad) + RandomHorizontalFlip per image, NCHW, as one
    batched gather (differentiable w.r.t. x)."""
    torch, _, F = _torch_modules()
    n, c, h, w = x.shape
    p = F.pad(x, (pad, pad, pad, pad)) if pad else x
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)[None]
    cols = torch.arange(w, device=x.device)[None].expand(n, w)
    if flip:
        cols = torch.where(torch.rand(n, device=x.device)[:, None] < 0.5, w - 1 - cols, cols)
    cols = cols + ox[:, None]
    out = p[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # advanced indexing puts the channel axis last


def _kl_per_row(s_logits, t_logits, temperature: float):
    _, _, F = _torch_modules()
    return F.kl_div(F.log_softmax(s_logits / temperature, dim=1),
                    F.softmax(t_logits / temperature, dim=1), reduction="none").sum(1)


class TorchNayer:
    """The PyTorch steps: `synthesis_step()` and `kd_step()`, each returning a float."""

    def __init__(self, cfg: BenchSettings, teacher, student, lte: np.ndarray, device="cpu",
                 dtype=None, seed: int = 0):
        torch, nn, F = _torch_modules()
        torch.manual_seed(seed)
        self.cfg, self.device = cfg, device
        self.autocast = dtype  # None (float32) or torch.bfloat16 (autocast on the forwards)
        self.teacher = teacher.to(device).eval()
        self.student = student.to(device)
        c = cfg.num_classes
        self.generator = make_torch_generator(
            c, math.ceil(cfg.synthesis_batch_size / c), lte.shape[1], cfg.le_emb_size, cfg.ngf,
            cfg.img_size).to(device).train()
        self.hooks = [_BNHook(m, cfg.bn_mmt) for m in self.teacher.modules()
                      if isinstance(m, nn.BatchNorm2d)]
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
        reps, rem = divmod(cfg.synthesis_batch_size, c)
        targets = torch.cat([torch.arange(c).repeat(reps), torch.randint(0, c, (rem,))])
        self.rows = torch.as_tensor(lte, device=device)[targets.to(device)]
        self.onehot = F.one_hot(targets, c).float().to(device)
        self.start_loop()
        g = torch.Generator().manual_seed(seed + 1)
        self.pool = torch.randint(0, 256, (cfg.pool_size, 3, cfg.img_size, cfg.img_size),
                                  generator=g, dtype=torch.uint8).to(device)
        self.kd_opt = torch.optim.SGD(self.student.parameters(), lr=cfg.lr, momentum=0.9,
                                      weight_decay=1e-4)

    def _ctx(self):
        torch = _torch_modules()[0]
        if self.autocast is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=self.autocast)

    def start_loop(self):
        torch = _torch_modules()[0]
        self.generator.redraw_noisy()
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr_g,
                                      betas=(0.5, 0.999))
        self.best_loss, self.best_images = float("inf"), None

    def synthesis_step(self) -> float:
        torch, _, F = _torch_modules()
        cfg = self.cfg
        self.student.eval()
        for p in (*self.teacher.parameters(), *self.student.parameters()):
            p.requires_grad_(False)
        with self._ctx():
            images = self.generator(self.rows)
            x = (torch_crop_flip(images, cfg.aug_pad) - self.mean) / self.std
            t_out = self.teacher(x)
            l_bn = sum(h.loss for h in self.hooks)
            l_oh = torch.mean(torch.sum(-self.onehot * F.log_softmax(t_out.float(), 1), 1))
            s_out = self.student(x)
            mask = (s_out.argmax(1) == t_out.argmax(1)).float()
            l_adv = -(_kl_per_row(s_out.float(), t_out.float(), 1.0) * mask).mean()
            loss = cfg.bn_weight * l_bn + cfg.oh_weight * l_oh + cfg.adv_weight * l_adv
        value = loss.item()
        if value < self.best_loss:
            self.best_loss, self.best_images = value, images.detach()
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.g_opt.step()
        return value

    def kd_step(self) -> float:
        torch = _torch_modules()[0]
        cfg = self.cfg
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.student.train()
        idx = torch.randint(0, self.pool.shape[0], (cfg.kd_batch_size,), device=self.device)
        x = self.pool[idx].float() / 255.0
        x = (torch_crop_flip(x, cfg.aug_pad) - self.mean) / self.std
        with self._ctx():
            with torch.no_grad():
                t_out = self.teacher(x)
            s_out = self.student(x)
            loss = _kl_per_row(s_out.float(), t_out.float(), cfg.temperature).mean() * cfg.temperature ** 2
        self.kd_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.kd_opt.step()
        return loss.item()


def torch_models(cfg: BenchSettings):
    """(teacher, student) torch modules from tests/torch_refs.py."""
    from tests.torch_refs import TORCH_REFS, load_shared_teacher

    path = teacher_checkpoint(cfg)
    if path is None:
        import torch
        torch.manual_seed(0)
        teacher = TORCH_REFS[cfg.teacher](cfg.num_classes)
    else:
        teacher = load_shared_teacher(path, int(cfg.teacher.removeprefix("resnet")))
    return teacher, TORCH_REFS[cfg.student](cfg.num_classes)


def teacher_checkpoint(cfg: BenchSettings) -> Path | None:
    if cfg.teacher_path == "random":
        return None
    return Path(cfg.teacher_path) if cfg.teacher_path else shared_path(f"teachers/cifar10_{cfg.teacher}.th")


# =================================================================================== JAX

class JaxNayer:
    """The library's steps: `synthesis_step()` (Nayer.step on a loop carry from
    Nayer.init_loop) and `kd_step()` (distill.make_kd_step), each returning a device value."""

    def __init__(self, cfg: BenchSettings, lte: np.ndarray, torch_teacher=None,
                 compute_dtype=jnp.float32, seed: int = 0, sample_fn: Callable | None = None):
        self.cfg = cfg
        spec = registry.get_spec(cfg.teacher)
        meta = classifier.meta_for(cfg.teacher, cfg.num_classes)
        model = registry.create_model(cfg.teacher, cfg.num_classes)
        path = teacher_checkpoint(cfg)
        if path is not None:
            variables = convert.convert_checkpoint(str(path), cfg.teacher, cfg.num_classes)
        elif torch_teacher is not None:  # random weights: the torch module's, converted
            variables = convert.convert_state_dict(torch_teacher.state_dict(), cfg.teacher,
                                                   cfg.num_classes)
        else:
            variables = classifier.init_variables(model, spec.input_size, spec.channels, seed)
        self.teacher = classifier.Classifier(model=model, variables=variables, meta=meta)
        student_model = registry.create_model(cfg.student, cfg.num_classes)
        settings = nayer.NayerSettings(
            synthesis_batch_size=cfg.synthesis_batch_size, ngf=cfg.ngf, le_emb_size=cfg.le_emb_size,
            lr_g=cfg.lr_g, bn_weight=cfg.bn_weight, oh_weight=cfg.oh_weight,
            adv_weight=cfg.adv_weight, bn_mmt=cfg.bn_mmt, aug_pad=cfg.aug_pad)
        self.method = nayer.Nayer(settings, self.teacher, student_model, lte, cfg.img_size,
                                  channels=cfg.channels, compute_dtype=compute_dtype)
        # Initialization under jit: eager flax init dispatches (and compiles) op by op,
        # which takes tens of seconds for a ResNet on a loaded 2-core machine.
        image_shape = (cfg.img_size, cfg.img_size, cfg.channels)

        @jax.jit
        def init(key):
            k_state, k_fill, k_student = jax.random.split(key, 3)
            state = self.method.init_state(k_state, cfg.pool_size)
            fill = jax.random.uniform(k_fill, (cfg.pool_size, *self.method.img_shape))
            state = state.replace(pool=pool_lib.add(state.pool, fill))
            return state, distill.create_student_state(student_model, k_student, image_shape,
                                                       cfg.lr)

        self.state, self.student = init(jax.random.key(seed))
        self.student_vars = distill.student_variables(self.student)
        self.kd = distill.make_kd_step(self.teacher, sample_fn or self.method.sample,
                                       cfg.kd_batch_size, cfg.temperature, cfg.aug_pad, True,
                                       compute_dtype=compute_dtype)
        self.start_loop(jax.random.key(seed + 3))
        self._n = 0

    def start_loop(self, rng):
        self.carry, self.rows, self.onehot = self.method.init_loop(self.state, rng)

    def synthesis_step(self):
        self._n += 1
        self.carry = self.method.step(self.carry, self.rows, self.onehot, self.state,
                                      self.student_vars, jax.random.key(1000 + self._n),
                                      use_adv=True)
        return self.carry.best_loss

    def kd_step(self):
        self._n += 1
        self.student, loss = self.kd(self.student, self.state, self.teacher.variables,
                                     jax.random.key(2000 + self._n))
        self.student_vars = distill.student_variables(self.student)  # the old ones were donated
        return loss


# ================================================================================ timing

def _sync(value):
    if hasattr(value, "block_until_ready") or isinstance(value, (tuple, list, dict)):
        jax.block_until_ready(value)
    return value


def first_call(fn: Callable) -> float:
    t = time.perf_counter()
    _sync(fn())
    return time.perf_counter() - t


def interleaved(fns: dict[str, Callable], rounds: int, steps: int,
                settle: int = 0) -> dict[str, list[float]]:
    """Per round, every fn `steps` times in a row; the order of fns flips every round.

    `settle` untimed calls open each fn's turn: right after the other side ran, a call of a
    few ms is slowed by the other library's still-spinning worker threads and by cold
    caches (measured: the first XLA call of a 4.6 ms weight gradient after torch's, 9-12 ms).
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            for _ in range(settle):
                _sync(fns[name]())
            for _ in range(steps):
                t = time.perf_counter()
                _sync(fns[name]())
                times[name].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs))) if xs else float("nan")


def versions() -> dict:
    import flax
    import optax
    out = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": getattr(jax.lib, "__version__", None) or __import__("jaxlib").__version__,
           "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = None
    return out


def _cpuinfo(field: str) -> str | None:
    """The first `field` line's value in /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor()


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_isa() -> list[str]:
    """The vector extensions that decide which conv kernels torch (oneDNN) and XLA (Eigen)
    run: "AMD EPYC" alone names machines with and without AVX-512 (KD ratio 0.90x vs 0.75x)."""
    have = set((_cpuinfo("flags") or "").split())
    return [f for f in ISA_FLAGS if f in have]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="calls per step kind per round")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round of 1 step (CI)")
    p.add_argument("--out", default=str(ROOT / "experiments/results/bench_torch_ref_cpu.json"))
    p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS (before jax starts)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="BenchSettings overrides, e.g. kd_batch_size=64")
    args = p.parse_args(argv)
    cfg = BenchSettings(**(SMOKE if args.smoke else {}))
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(cfg, key, type(getattr(cfg, key))(value))
    rounds, steps = (1, 1) if args.smoke else (args.rounds, args.steps)
    load_start = os.getloadavg()

    import torch
    lte = load_lte(cfg.num_classes)
    t_teacher, t_student = torch_models(cfg)
    ours = JaxNayer(cfg, lte, torch_teacher=t_teacher)
    ref = TorchNayer(cfg, t_teacher, t_student, lte)

    first = {"torch_synthesis": first_call(ref.synthesis_step),
             "jax_synthesis": first_call(ours.synthesis_step),
             "torch_kd": first_call(ref.kd_step),
             "jax_kd": first_call(ours.kd_step)}
    syn = interleaved({"torch": ref.synthesis_step, "jax": ours.synthesis_step}, rounds, steps)
    kd = interleaved({"torch": ref.kd_step, "jax": ours.kd_step}, rounds, steps)
    load_end = os.getloadavg()

    rows = []
    for name, times, batch in (("synthesis step", syn, cfg.synthesis_batch_size),
                               ("KD step", kd, cfg.kd_batch_size)):
        t_s, j_s = median(times["torch"]), median(times["jax"])
        rows.append({"step": name, "batch": batch, "torch_s": t_s, "jax_s": j_s,
                     "ratio_torch_over_jax": t_s / j_s,
                     "torch_times": times["torch"], "jax_times": times["jax"]})
    print(f"\nNAYER steps, teacher {cfg.teacher} -> student {cfg.student}, "
          f"{os.cpu_count()} CPUs ({cpu_model()}), torch threads {torch.get_num_threads()}, "
          f"load {load_start[0]:.2f} -> {load_end[0]:.2f}, {rounds} rounds x {steps} calls")
    print(f"{'step':<26} {'torch s':>9} {'jax s':>9} {'torch/jax':>10}")
    for r in rows:
        print(f"{r['step'] + ' (batch %d)' % r['batch']:<26} {r['torch_s']:>9.3f} "
              f"{r['jax_s']:>9.3f} {r['ratio_torch_over_jax']:>9.2f}x")
    print(f"first call (s): " + ", ".join(f"{k} {v:.2f}" for k, v in first.items()))
    result = {
        "what": "NAYER synthesis step and KD step, plain PyTorch vs nayer-jax, interleaved",
        "settings": dataclasses.asdict(cfg), "smoke": args.smoke,
        "rounds": rounds, "calls_per_round": steps,
        "rows": rows, "first_call_s": first,
        "load_avg_start": list(load_start), "load_avg_end": list(load_end),
        "cpus": os.cpu_count(), "cpu_model": cpu_model(), "cpu_isa": cpu_isa(), "torch_threads": torch.get_num_threads(),
        "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
