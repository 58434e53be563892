"""Offline quickstart: NAYER data-free distillation on 8x8 digits, in a few CPU minutes.

    python -m nayer_jax.quickstart [--workdir runs/quickstart]

Everything it needs ships with the package or scikit-learn (no downloads, no torch):
1. teacher: `digits_cnn` trained on the real digits train split (1347 images);
2. NAYER: the student `digits_cnn_small` is distilled from the teacher alone. Its images
   come from NAYER's noisy-layer generator conditioned on MiniLM embeddings of "a image of
   zero" ... "a image of nine" (nayer_jax/assets/digits_minilm); the student never sees a
   real training image (the real test split only scores it after each epoch);
3. control: the same student, KD loop and KD settings, but Gaussian-noise images
   (synthesis/noise.py) for the same wall time as the NAYER run (see `noise_kd_steps_for`).

It prints a table (accuracies on the 450 held-out test digits, wall times) and writes
into the workdir: digits_per_class.png (synthesized digits, one row per class),
accuracy_vs_time.png, and the runs: teacher/, nayer/ (metrics.jsonl, images/epoch_*.png,
student/), noise/. Rerunning with an existing workdir resumes an interrupted run, or
reprints the results of a finished one. The last stdout line is machine-readable:
teacher_top1=<f> student_top1=<f> noise_top1=<f> seconds=<s>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from nayer_jax.errors import InputError

DEFAULT_WORKDIR = "runs/quickstart"  # runs/ is git-ignored
TEACHER_ARCH = "digits_cnn"
STUDENT_ARCH = "digits_cnn_small"
STATE_FILE = "quickstart.json"


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of one quickstart; `FULL` is the README's run, `FAST` the end-to-end test's."""
    teacher_epochs: int
    epochs: int              # NAYER epochs, warmup included
    warmup: int
    synthesis_batch_size: int
    g_steps: int
    g_loops: int
    gwp_loops: int
    kd_steps: int
    batch_size: int
    le_emb_size: int = 128
    ngf: int = 32


FULL = Budget(teacher_epochs=20, epochs=12, warmup=1, synthesis_batch_size=100, g_steps=15,
              g_loops=2, gwp_loops=4, kd_steps=50, batch_size=128)
FAST = Budget(teacher_epochs=3, epochs=6, warmup=0, synthesis_batch_size=100, g_steps=20,
              g_loops=2, gwp_loops=2, kd_steps=40, batch_size=64, le_emb_size=64, ngf=16)


def _shared_fields(c, teacher_dir: str | Path, b: Budget):
    """What both quickstart runs share: teacher, student, test split, epochs, KD, aug."""
    c.teacher = str(Path(teacher_dir).resolve())
    c.student = STUDENT_ARCH
    c.eval_data = "digits"              # scored on the held-out test split only
    c.eval_batch_size = 450
    c.epochs = b.epochs
    c.aug_pad = 1                       # 8x8 images: shift by at most one pixel
    c.aug_flip = False                  # a mirrored digit is not a digit
    c.kd_steps = b.kd_steps
    c.batch_size = b.batch_size
    c.checkpoint_every = 10
    c.keep_checkpoints = 2
    return c


def nayer_config(teacher_dir: str | Path, b: Budget):
    """The NAYER run as a ConfigDict (every field the loop and nayer.build read)."""
    from nayer_jax.synthesis import nayer as nayer_lib

    c = _shared_fields(nayer_lib.default_config(), teacher_dir, b)  # published weights, T, lr
    c.lte = "asset:digits_minilm"       # MiniLM embeddings of "a image of {zero..nine}"
    c.warmup = b.warmup
    # sizes cut for 8x8 images on a CPU
    c.synthesis_batch_size = b.synthesis_batch_size
    c.g_steps = b.g_steps
    c.g_loops = b.g_loops
    c.gwp_loops = b.gwp_loops
    c.le_emb_size = b.le_emb_size
    c.ngf = b.ngf
    return c


def noise_config(teacher_dir: str | Path, b: Budget, kd_steps: int):
    """The control: NAYER's epochs and KD settings, Gaussian-noise batches, KD from epoch 0,
    `kd_steps` per epoch (see `noise_kd_steps_for`)."""
    from nayer_jax.synthesis import noise

    c = _shared_fields(noise.default_config(), teacher_dir, b)
    c.kd_steps = kd_steps
    return c


def noise_kd_steps_for(history: list[dict], kd_steps: int, build_seconds: float) -> int:
    """KD steps per epoch that make the noise control take as long as the NAYER run.

    The control runs the same number of epochs (so the same evaluations, checkpoints,
    previews and cosine schedule shape) and spends on extra KD steps all the time NAYER
    spent on its method: building the generator (`build_seconds`), every synthesis step
    (compilation included) and its own KD steps, less one compilation of the KD step
    (both runs pay that). The time of one KD step is NAYER's own (the median over its KD
    epochs after the first): same student, teacher, batch and augmentation; drawing noise
    costs no more than drawing from the pool.
    """
    kd = [r for r in history if r.get("kd_loss") is not None]
    if not kd:
        return kd_steps
    step_seconds = statistics.median(r["kd_seconds"] for r in (kd[1:] or kd)) / kd_steps
    kd_compile = max(kd[0]["kd_seconds"] - kd_steps * step_seconds, 0.0)
    method_seconds = (build_seconds + sum(r["synthesis_seconds"] for r in history)
                      + sum(r["kd_seconds"] for r in kd) - kd_compile)
    total_steps = method_seconds / max(step_seconds, 1e-9)
    return max(1, round(total_steps / len(history)))


# ------------------------------------------------------------------------------ pictures

def write_class_grid(path: Path, batch: np.ndarray, num_classes: int, teacher,
                     columns: int = 10) -> float:
    """One row per class of synthesized images (row i of the batch is class i % C).

    Titles each row with the teacher's agreement; returns the fraction of shown images
    the teacher classifies as their target class.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps = min(columns, len(batch) // num_classes)
    idx = np.arange(reps)[None, :] * num_classes + np.arange(num_classes)[:, None]  # (C, reps)
    images = batch[idx.reshape(-1)].astype(np.float32) / 255.0
    preds = np.asarray(teacher.apply(images)).argmax(-1).reshape(num_classes, reps)
    agree = preds == np.arange(num_classes)[:, None]
    fig, axes = plt.subplots(num_classes, reps, figsize=(reps * 0.8 + 1.2, num_classes * 0.8 + 0.6),
                             squeeze=False)
    for c in range(num_classes):
        for j in range(reps):
            ax = axes[c, j]
            ax.imshow(images[c * reps + j, ..., 0] if images.shape[-1] == 1
                      else images[c * reps + j], cmap="gray_r", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if agree[c, j] else "tab:red")
        axes[c, 0].set_ylabel(str(c), rotation=0, labelpad=12, fontsize=12, va="center")
    fig.suptitle(f"NAYER: synthesized digits, one row per class (teacher agrees on "
                 f"{agree.mean():.0%}; red frame: it does not)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return float(agree.mean())


def write_accuracy_plot(path: Path, nayer: list[dict], noise: list[dict], teacher_top1: float,
                        warmup: int) -> None:
    """Student test accuracy after each epoch against the run's wall time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.axhline(100 * teacher_top1, color="black", ls="--", lw=1,
               label=f"teacher (real data) {100 * teacher_top1:.1f}%")
    for hist, label, color in ((nayer, "NAYER student (data-free)", "tab:blue"),
                               (noise, "noise control (same time)", "tab:orange")):
        if hist:
            ax.plot([r["seconds_total"] for r in hist], [100 * r["test_top1"] for r in hist],
                    "o-", ms=3, color=color,
                    label=f"{label} {100 * hist[-1]['test_top1']:.1f}%")
    if nayer and warmup > 0 and len(nayer) > warmup:
        ax.axvline(nayer[warmup - 1]["seconds_total"], color="tab:blue", lw=0.8, ls=":")
        ax.text(nayer[warmup - 1]["seconds_total"], 5, " NAYER warmup ends", color="tab:blue",
                fontsize=8)
    ax.set_xlabel("wall time of the distillation run (s, JAX compilation included)")
    ax.set_ylabel("student top-1 on the held-out digits (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------ the run

class QuickstartError(InputError):
    pass


def _read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_table(r: dict) -> str:
    t = r["teacher_top1"]
    rows = [("teacher   digits_cnn, trained on real digits", t, None, r["teacher_seconds"]),
            ("NAYER     digits_cnn_small, data-free", r["student_top1"], r["student_top1"] / t,
             r["nayer_seconds"]),
            ("control   digits_cnn_small, Gaussian noise", r["noise_top1"], r["noise_top1"] / t,
             r["noise_seconds"])]
    lines = [f"{'model':<46}{'test top-1':>11}{'/ teacher':>11}{'seconds':>9}"]
    for name, acc, ratio, sec in rows:
        lines.append(f"{name:<46}{100 * acc:>10.2f}%{'' if ratio is None else f'{100 * ratio:.1f}%':>11}"
                     f"{sec:>9.1f}")
    return "\n".join(lines)


def run_quickstart(workdir: str | Path = DEFAULT_WORKDIR, fast: bool = False, log=print) -> dict:
    """Teacher -> NAYER -> equal-time noise control -> table + pictures; returns the results."""
    from nayer_jax import classifier as clf_io, distill, synthesis, train_teacher
    from nayer_jax import pool as pool_lib
    from nayer_jax.models import registry
    from nayer_jax.synthesis import nayer as nayer_lib

    t_start = time.time()
    budget = FAST if fast else FULL
    mode = "fast" if fast else "full"
    workdir = Path(workdir).resolve()
    state_path = workdir / STATE_FILE
    if workdir.exists() and any(workdir.iterdir()):
        if not state_path.exists():
            raise QuickstartError(f"--workdir {workdir}: exists and was not written by the "
                                  "quickstart; choose a new --workdir")
        state = json.loads(state_path.read_text())
        if state.get("mode") != mode:
            raise QuickstartError(f"--workdir {workdir}: holds a {state.get('mode')!r} quickstart, "
                                  f"this is {mode!r}; choose a new --workdir")
        if state.get("finished"):
            log(f"{workdir}: finished earlier; its results:")
            log(format_table(state["results"]))
            return state["results"]
        log(f"{workdir}: resuming an interrupted quickstart")
    else:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QuickstartError(f"--workdir {workdir}: cannot be created ({e.strerror or e})"
                                  ) from None
        state = {"mode": mode, "finished": False}
        state_path.write_text(json.dumps(state, indent=2))

    def save_state():
        state_path.write_text(json.dumps(state, indent=2))

    # 1. the teacher, trained on real data (the only stage that sees training images)
    teacher_dir = workdir / "teacher"
    if "teacher" not in state:
        if teacher_dir.exists():  # interrupted while saving: train again
            import shutil
            shutil.rmtree(teacher_dir)
        log(f"[1/3] training the teacher {TEACHER_ARCH} on the real digits train split")
        res = train_teacher.train(TEACHER_ARCH, "digits", teacher_dir,
                                  epochs=budget.teacher_epochs, batch_size=64, lr=3e-3,
                                  optimizer="adam", weight_decay=0.0, log=log, progress=False)
        state["teacher"] = {"top1": res["test_top1"], "seconds": res["seconds"]}
        save_state()
    teacher = clf_io.load_classifier(teacher_dir)

    # Both distillation runs below start equally warm: the student's (eager, op by op)
    # initialization compiles here once, outside both timings, so the run that comes
    # first does not pay it for the other.
    student_model = registry.create_model(STUDENT_ARCH, teacher.meta.num_classes)
    jax.block_until_ready(clf_io.init_variables(student_model, teacher.meta.input_size,
                                                teacher.meta.channels))

    # 2. NAYER: teacher + label texts -> student, no training data
    log(f"[2/3] NAYER data-free distillation {TEACHER_ARCH} -> {STUDENT_ARCH}")
    config = nayer_config(teacher_dir, budget)
    recorder: dict = {}

    def build_nayer(cfg, teacher_, student_model, rng, mesh=None):
        t0 = time.time()
        method, method_state = nayer_lib.build(cfg, teacher_, student_model, rng, mesh=mesh)
        jax.block_until_ready(method_state)
        recorder["build_seconds"] = time.time() - t0
        return method, method_state

    nayer_summary, nayer_state = distill.train_and_evaluate(config, workdir / "nayer",
                                                            build_nayer)
    nayer_hist = _read_history(workdir / "nayer")
    # the last synthesized batch, from the returned pool (also for a run restored as done)
    last_batch = np.asarray(pool_lib.latest(nayer_state["method"].pool,
                                            config.synthesis_batch_size))
    agree = write_class_grid(workdir / "digits_per_class.png", last_batch,
                             teacher.meta.num_classes, teacher)
    state["synthesized_teacher_agreement"] = agree

    # 3. the control: Gaussian noise for the same wall time
    if "noise_kd_steps" not in state:
        state["noise_kd_steps"] = noise_kd_steps_for(nayer_hist, config.kd_steps,
                                                     recorder.get("build_seconds", 0.0))
        save_state()
    log(f"[3/3] control: the same student on Gaussian noise for NAYER's "
        f"{nayer_summary['seconds']:.0f} s ({config.epochs} epochs x {state['noise_kd_steps']} "
        f"KD steps instead of {config.kd_steps})")
    noise_summary, _ = distill.train_and_evaluate(
        noise_config(teacher_dir, budget, state["noise_kd_steps"]), workdir / "noise",
        synthesis.get_builder("noise"))
    noise_hist = _read_history(workdir / "noise")
    write_accuracy_plot(workdir / "accuracy_vs_time.png", nayer_hist, noise_hist,
                        state["teacher"]["top1"], config.warmup)

    results = {"teacher_top1": state["teacher"]["top1"],
               "student_top1": nayer_summary["final_top1"],
               "noise_top1": noise_summary["final_top1"],
               "teacher_seconds": state["teacher"]["seconds"],
               "nayer_seconds": nayer_summary["seconds"],
               "noise_seconds": noise_summary["seconds"],
               "seconds": time.time() - t_start}
    state.update(finished=True, results=results)
    save_state()
    log(format_table(results))
    shown = Path(os.path.relpath(workdir)) if workdir.is_relative_to(Path.cwd()) else workdir
    log(f"pictures: {shown / 'digits_per_class.png'}, {shown / 'accuracy_vs_time.png'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nayer_jax.quickstart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                        help=f"output directory (default ./{DEFAULT_WORKDIR}); an existing one "
                             "is resumed or, when finished, its results are printed")
    parser.add_argument("--fast", action="store_true",
                        help="tiny budgets (seconds): a smoke test, not the README's numbers")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    try:
        r = run_quickstart(args.workdir, fast=args.fast)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"teacher_top1={r['teacher_top1']:.4f} student_top1={r['student_top1']:.4f} "
          f"noise_top1={r['noise_top1']:.4f} seconds={r['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
