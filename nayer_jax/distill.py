"""Knowledge distillation shared by every synthesis method: the KD step and the epoch loop.

The epoch loop is the only place that sequences synthesis, KD, evaluation, logging and
checkpoints:  synthesize -> kd_steps x (sample -> augment -> teacher -> student update)
-> eval on the real test set -> metrics.jsonl + PNG grid -> orbax checkpoint.

A method plugs in through a small interface (see `SynthesisMethod`): it owns its state
(generator, pool, ...), synthesizes one epoch, says whether KD runs in an epoch, and
provides `sample(state, rng, batch_size)`, the KD batch source (a pool, a generator).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from nayer_jax import augment, losses, parallel
from nayer_jax.classifier import Classifier, normalize


class StudentState(train_state.TrainState):
    batch_stats: Any = None


class SynthesisMethod(Protocol):
    def synthesize_epoch(self, state, student_vars, epoch: int, rng) -> tuple[Any, dict]: ...
    def kd_active(self, epoch: int) -> bool: ...
    @staticmethod
    def sample(state, rng, batch_size: int) -> jax.Array: ...
    # Optional: `after_epoch(state, epoch, workdir) -> None`, called after the epoch's
    # preview, before its checkpoint (per-member grids, exports of a finished stage).


def epoch_cosine_schedule(base_lr: float, min_lr: float, steps_per_epoch: int,
                          num_epochs: int) -> optax.Schedule:
    """torch CosineAnnealingLR(T_max=num_epochs, eta_min=min_lr) stepped once per epoch."""
    def schedule(count):
        epoch = jnp.minimum(count // steps_per_epoch, num_epochs)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + jnp.cos(jnp.pi * epoch / num_epochs))
    return schedule


def create_student_state(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...],
                         lr: float | optax.Schedule, momentum: float = 0.9,
                         weight_decay: float = 1e-4) -> StudentState:
    """Fresh student with torch-style SGD (weight decay added to the gradient, then momentum)."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    tx = optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(lr, momentum=momentum))
    return StudentState.create(apply_fn=model.apply, params=variables["params"],
                               batch_stats=variables.get("batch_stats", {}), tx=tx)


def student_variables(state: StudentState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def make_kd_step(teacher: Classifier, sample_fn: Callable, batch_size: int,
                 temperature: float = 20.0, aug_pad: int = 4, aug_flip: bool = True,
                 mesh=None, compute_dtype=jnp.float32) -> Callable:
    """Jitted `(state, source, teacher_vars, rng) -> (state, loss)` with donated state.

    One batch from `sample_fn(source, rng, batch_size)` (images in [0, 1]), crop + flip,
    teacher logits in eval mode, KL(teacher || student) * T^2 on the student in train mode.
    The batch is split over the mesh's data axis (student BN statistics stay global);
    the forward passes run in `compute_dtype`, parameters and updates in float32.
    """
    mean, std = teacher.meta.mean, teacher.meta.std

    def step(state: StudentState, source, teacher_vars, rng):
        k_sample, k_aug = jax.random.split(rng)
        x = parallel.shard_batch(sample_fn(source, k_sample, batch_size), mesh)
        x = normalize(augment.random_crop_flip(k_aug, x, pad=aug_pad, flip=aug_flip), mean, std)
        x, teacher_vars = parallel.cast_compute((x, teacher_vars), compute_dtype)
        t_logits = jax.lax.stop_gradient(teacher.model.apply(teacher_vars, x, train=False))

        def loss_fn(params):
            params = parallel.cast_compute(params, compute_dtype)
            s_logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                               x, train=True, mutable=["batch_stats"])
            return losses.kl_divergence(s_logits, t_logits, temperature), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
        return state, loss

    return jax.jit(step, donate_argnums=(0,))


def run_kd_steps(step: Callable, state: StudentState, source, teacher_vars, rng: jax.Array,
                 num_steps: int) -> tuple[StudentState, jax.Array]:
    """A Python loop over one jitted step; the mean loss stays on device."""
    total = jnp.zeros((), jnp.float32)
    for key in jax.random.split(rng, num_steps):
        state, loss = step(state, source, teacher_vars, key)
        total = total + loss
    return state, total / max(num_steps, 1)


def make_student_apply(model: nn.Module, mean, std) -> Callable:
    """`(variables, images in [0, 1]) -> eval-mode logits`, for nayer_jax.evaluate."""
    def apply(variables, x):
        return model.apply(variables, normalize(x, mean, std), train=False)
    return apply


# ------------------------------------------------------------------------ the epoch loop

def _write_grid(path: Path, images: np.ndarray, columns: int) -> None:
    """Save uint8 NHWC images as one PNG grid (1 px gaps)."""
    from PIL import Image

    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = img
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)


class ConfigError(ValueError):
    """A run config field has a value the run cannot use."""


class ConfigMismatchError(ConfigError):
    """A workdir holds a run started with a different configuration."""


def _check_config(workdir: Path, config_dict: dict, write: bool = True) -> None:
    """Store the run's config; on resume refuse a different one (epochs may grow)."""
    path = workdir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diffs = [k for k in sorted(set(old) | set(config_dict))
                 if k != "epochs" and old.get(k) != config_dict.get(k)]
        if diffs:
            k = diffs[0]
            raise ConfigMismatchError(
                f"{path}: the run in this workdir used {k}={old.get(k)!r}, now {k}="
                f"{config_dict.get(k)!r} ({len(diffs)} field(s) differ); use a new --workdir")
    if write:
        path.write_text(json.dumps(config_dict, indent=2, sort_keys=True))


def train_and_evaluate(config, workdir: str | Path, build_method: Callable,
                       stop_after_epoch: int | None = None) -> dict:
    """Run (or resume) a data-free distillation; returns the final summary.

    `build_method(config, teacher, student_model, rng, mesh=)` -> (method, initial state).
    Runs unchanged on 1..N devices and several processes (nayer_jax.parallel).
    `stop_after_epoch`: checkpoint and return after that epoch, as a preempted job would
    (a later call with the same workdir resumes).
    """
    from tqdm import tqdm

    from nayer_jax import classifier as clf_io
    from nayer_jax.checkpoint import RunCheckpointer
    from nayer_jax.data import load_dataset
    from nayer_jax.evaluate import evaluate
    from nayer_jax.models import registry
    from nayer_jax.teacher_source import resolve_teacher

    t_start = time.time()
    main_process = parallel.is_main_process()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh(config.get("num_devices", 0) or None)
    compute_dtype = jnp.dtype(config.get("compute_dtype", "float32"))
    teacher = resolve_teacher(config.teacher, workdir)
    teacher.variables = parallel.replicate(teacher.variables, mesh)
    num_classes = teacher.meta.num_classes
    image_shape = (teacher.meta.input_size, teacher.meta.input_size,
                   registry.get_spec(teacher.meta.arch).channels)
    test = load_dataset(config.eval_data, "test")
    if config.get("eval_limit", 0):
        test.images, test.labels = test.images[:config.eval_limit], test.labels[:config.eval_limit]
    # recorded only once the inputs load: a run that failed on a bad path can be rerun fixed
    _check_config(workdir, config.to_dict(), write=main_process)

    rng = jax.random.key(config.seed)
    k_student, k_method = jax.random.split(rng)
    student_model = registry.create_model(config.student, num_classes)
    method, method_state = build_method(config, teacher, student_model, k_method, mesh=mesh)
    kd_epochs = max(config.epochs - config.warmup, 1)
    schedule = epoch_cosine_schedule(config.lr, config.lr_min, config.kd_steps, kd_epochs)
    student = create_student_state(student_model, k_student, image_shape, schedule,
                                   config.momentum, config.weight_decay)
    run = {"student": student, "method": method_state}

    ckpt = RunCheckpointer(workdir / "checkpoints", max_to_keep=config.get("keep_checkpoints", 2))
    history: list[dict] = []
    start_epoch = 0
    if ckpt.latest_epoch() is not None:
        run, meta = ckpt.restore(ckpt.latest_epoch(), run)
        history, start_epoch = meta["history"], meta["epoch"] + 1
        print(f"resuming {workdir} at epoch {start_epoch} (checkpoint of epoch {meta['epoch']})")
    run = parallel.replicate(run, mesh)  # one layout for fresh and restored state
    student, method_state = run["student"], run["method"]
    log_path = workdir / "metrics.jsonl"
    if main_process:
        log_path.write_text("".join(json.dumps(r) + "\n" for r in history))
        (workdir / "images").mkdir(exist_ok=True)
    seconds_before = history[-1]["seconds_total"] if history else 0.0

    kd_step = make_kd_step(teacher, method.sample, config.batch_size, config.temperature,
                           config.get("aug_pad", 4), config.get("aug_flip", True), mesh=mesh,
                           compute_dtype=compute_dtype)
    student_apply = make_student_apply(student_model, teacher.meta.mean, teacher.meta.std)
    put_batch = None  # several data shards: each host feeds only its rows of an eval batch
    if parallel.data_size(mesh) > 1:
        eval_batch = min(config.eval_batch_size, len(test.labels))
        if eval_batch % parallel.data_size(mesh):
            raise ConfigError(
                f"config.eval_batch_size={config.eval_batch_size} (or the test set size) must "
                f"divide over the {parallel.data_size(mesh)} data shards of the mesh")
        put_batch = lambda a: parallel.host_batch_to_global(a, mesh)  # noqa: E731
    base = jax.random.key(config.seed + 1)
    bar = tqdm(range(start_epoch, config.epochs), desc="epochs", initial=start_epoch,
               total=config.epochs, dynamic_ncols=True, disable=not main_process)
    for epoch in bar:
        k_syn, k_kd = jax.random.split(jax.random.fold_in(base, epoch))
        t0 = time.time()
        method_state, syn_metrics = method.synthesize_epoch(
            method_state, student_variables(student), epoch, k_syn)
        syn_metrics = {k: float(v) for k, v in jax.device_get(syn_metrics).items()}
        t1 = time.time()
        kd_loss, lr = None, float(schedule(student.step))
        if method.kd_active(epoch):
            student, loss = run_kd_steps(kd_step, student, method_state, teacher.variables, k_kd,
                                         config.kd_steps)
            kd_loss = float(loss)
        t2 = time.time()
        ev = evaluate(student_apply, test.images, test.labels, config.eval_batch_size,
                      progress=False, variables=student_variables(student), put_batch=put_batch)
        t3 = time.time()
        record = {"epoch": epoch, "test_top1": ev["top1"], "test_top5": ev["top5"],
                  "kd_loss": kd_loss, "lr": lr,
                  "synthesis_seconds": t1 - t0, "kd_seconds": t2 - t1, "eval_seconds": t3 - t2,
                  **{f"syn_{k}": v for k, v in syn_metrics.items()}}
        preview = method.preview(method_state)
        if preview is not None and main_process:
            _write_grid(workdir / "images" / f"epoch_{epoch:04d}.png", np.asarray(preview),
                        columns=num_classes)
        after_epoch = getattr(method, "after_epoch", None)  # optional hook (Luo: stage-1 export)
        if after_epoch is not None:
            after_epoch(method_state, epoch, workdir)
        record["seconds_total"] = seconds_before + time.time() - t_start
        history.append(record)
        if main_process:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        stopping = stop_after_epoch is not None and epoch >= stop_after_epoch
        if ((epoch + 1) % config.get("checkpoint_every", 1) == 0 or epoch + 1 == config.epochs
                or stopping):
            ckpt.save(epoch, {"student": student, "method": method_state},
                      {"epoch": epoch, "history": history})
        bar.set_postfix(top1=f"{ev['top1']:.4f}", syn=f"{t1 - t0:.1f}s", kd=f"{t2 - t1:.1f}s")
        if stopping:
            break
    ckpt.close()

    clf_io.save_classifier(workdir / "student",
                           parallel.gather_replicated(student_variables(student), mesh),
                           clf_io.meta_for(config.student, num_classes, teacher.meta.mean,
                                           teacher.meta.std, source=str(workdir)),
                           overwrite=True)
    top1s = [r["test_top1"] for r in history] or [float("nan")]
    summary = {"final_top1": top1s[-1], "best_top1": max(top1s), "epochs": len(history),
               "seconds": history[-1]["seconds_total"] if history else 0.0}
    return summary
