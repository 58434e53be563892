"""The one epoch loop every method runs through: setup/restore, one epoch, the loop.

Per epoch:  synthesize -> kd_steps x ([interleaved generator step] -> sample -> augment
-> teacher -> student update) -> eval on the real test set -> metrics.jsonl (+
TensorBoard) + PNG grid -> orbax checkpoint. Values are read back from the device once
per phase, where the non-finite guard looks at them; nothing is read inside a step loop.

Interruptions: every checkpoint is a position in the run (`checkpoint.position`): the
end of an epoch or, with `config.checkpoint_every_s` or on SIGTERM, a KD step inside
one (its synthesis done). A run resumes from the newest intact checkpoint bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nayer_jax import config_check, distill, parallel
from nayer_jax.checkpoint import RunCheckpointer, position
from nayer_jax.errors import ConfigError, ConfigMismatchError, NonFiniteError

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpointed on SIGTERM, rerun to resume


class Preempted(Exception):
    """SIGTERM (or a multi-host preemption notice) arrived; a checkpoint was written."""


# ------------------------------------------------------------------------ small pieces

def _write_config(workdir: Path, config_dict: dict, write: bool) -> None:
    """Store the run's config; on resume refuse a different one (epochs may grow).

    Written atomically, only once every input and the method are built, so a run that
    failed on a bad input can be rerun fixed in the same workdir.
    """
    path = workdir / "config.json"
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            print(f"warning: {path} is empty or not JSON (a write was interrupted); rewriting it",
                  file=sys.stderr)
    if old is not None:
        diffs = [k for k in sorted(set(old) | set(config_dict))
                 if k != "epochs" and old.get(k) != config_dict.get(k)]
        if diffs:
            k = diffs[0]
            raise ConfigMismatchError(
                f"{path}: the run in this workdir used {k}={old.get(k)!r}, now {k}="
                f"{config_dict.get(k)!r} ({len(diffs)} field(s) differ); use a new --workdir")
    if write:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config_dict, indent=2, sort_keys=True))
        os.replace(tmp, path)


def _check_workdir(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir}: is a file; expected a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        # a name unique to this process: the processes of one multi-host run share the
        # workdir, and a fixed name let one process delete the other's probe
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe."):
            pass
    except OSError as e:
        raise ConfigError(f"--workdir {workdir}: not writable ({e.strerror or e})") from None


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _check_finite(values: dict, epoch: int, phase: str) -> None:
    for name, value in values.items():
        if value is not None and not np.isfinite(value):
            raise NonFiniteError(f"epoch {epoch}: {phase} loss term {name!r} is {value}; "
                                 "the run stopped, the last finite checkpoint is kept "
                                 "(lower the learning rate or loss weights)")


class _Signals:
    """SIGTERM sets a flag (the loop checkpoints at the next step boundary and exits).

    Installed before `setup` too: one arriving while the inputs load or the teacher
    converts stops the run right after setup (nothing to checkpoint yet), not the process
    in the middle of a write.
    """

    def __init__(self):
        self.terminated = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.terminated = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


# ------------------------------------------------------------------------ setup / restore

@dataclasses.dataclass
class Run:
    """Everything a run needs, built once: inputs, method, compiled steps, live state."""
    config: Any
    workdir: Path
    mesh: Any
    teacher: Any
    test: Any
    method: Any
    schedule: Callable
    kd_step: Callable
    student_apply: Callable
    put_batch: Callable | None
    ckpt: RunCheckpointer
    log: Any
    main_process: bool
    student: Any
    method_state: Any
    history: list
    start_epoch: int
    partial: dict | None      # a mid-epoch checkpoint's position, or None
    seconds_before: float
    t_start: float
    last_save: float = 0.0


def setup(config, workdir: str | Path, build_method: Callable | None = None) -> Run:
    """Check the config, load the inputs, build method and student, restore a checkpoint."""
    from nayer_jax import synthesis
    from nayer_jax.data import load_dataset
    from nayer_jax.evaluate import check_compatible
    from nayer_jax.metrics_log import MetricsLog
    from nayer_jax.models import registry
    from nayer_jax.teacher_source import resolve_teacher

    t_start = time.time()
    config_check.check_run_config(config)
    build_method = build_method or synthesis.get_builder(config.method)
    main_process = parallel.is_main_process()
    workdir = Path(workdir).resolve()
    _check_workdir(workdir)
    _enable_compile_cache(workdir)
    mesh = parallel.make_mesh(config.num_devices or None)
    compute_dtype = jnp.dtype(config.compute_dtype)
    teacher = resolve_teacher(config.teacher, workdir)
    teacher.variables = parallel.replicate(teacher.variables, mesh)
    num_classes = teacher.meta.num_classes
    image_shape = teacher.meta.image_shape
    test = load_dataset(config.eval_data, "test")
    if config.eval_limit:
        test.images, test.labels = test.images[:config.eval_limit], test.labels[:config.eval_limit]
    check_compatible(test, image_shape[0], image_shape[2], num_classes, where="config.eval_data")

    rng = jax.random.key(config.seed)
    k_student, k_method = jax.random.split(rng)
    student_model = registry.create_model(config.student, num_classes)
    method, method_state = build_method(config, teacher, student_model, k_method, mesh=mesh)
    kd_epochs = max(config.epochs - config.warmup, 1)
    schedule = distill.epoch_cosine_schedule(config.lr, config.lr_min, config.kd_steps,
                                             kd_epochs)
    student = distill.create_student_state(student_model, k_student, image_shape, schedule,
                                           config.momentum, config.weight_decay)
    kd_step = distill.make_kd_step(teacher, method.sample, config.batch_size,
                                   config.temperature, config.aug_pad, config.aug_flip,
                                   mesh=mesh, compute_dtype=compute_dtype,
                                   kd_loss=config.kd_loss)
    put_batch = None  # several data shards: each host feeds only its rows of an eval batch
    if parallel.data_size(mesh) > 1:
        eval_batch = min(config.eval_batch_size, len(test.labels))
        if eval_batch % parallel.data_size(mesh):
            raise ConfigError(
                f"config.eval_batch_size={config.eval_batch_size} (or the test set size) must "
                f"divide over the {parallel.data_size(mesh)} data shards of the mesh")
        put_batch = lambda a: parallel.host_batch_to_global(a, mesh)  # noqa: E731
    ckpt = RunCheckpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    # every input and the method are built: now the config may be recorded
    _write_config(workdir, config.to_dict(), write=main_process)

    history, start_epoch, partial = [], 0, None
    state = {"student": student, "method": method_state}
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state, meta = restored
        history, partial = meta["history"], meta.get("partial")
        start_epoch = partial["epoch"] if partial else meta["epoch"] + 1
        where = f"KD step {partial['kd_done']}" if partial else "its start"
        print(f"resuming {workdir} at epoch {start_epoch}, {where}")
    state = parallel.replicate(state, mesh)  # one layout for fresh and restored state
    log = MetricsLog(workdir, history, tensorboard=config.tensorboard, enabled=main_process)
    return Run(config=config, workdir=workdir, mesh=mesh, teacher=teacher, test=test,
               method=method, schedule=schedule, kd_step=kd_step,
               student_apply=distill.make_student_apply(student_model, teacher.meta.mean,
                                                        teacher.meta.std),
               put_batch=put_batch, ckpt=ckpt, log=log, main_process=main_process,
               student=state["student"], method_state=state["method"], history=history,
               start_epoch=start_epoch, partial=partial,
               seconds_before=history[-1]["seconds_total"] if history else 0.0,
               t_start=t_start, last_save=time.time())


def _enable_compile_cache(workdir: Path) -> None:
    """JAX's persistent compilation cache (a rerun skips compiling the steps)."""
    try:
        from nayer_jax import compile_cache
    except ImportError:
        return
    compile_cache.enable()


# ------------------------------------------------------------------------ one epoch

def _save(run: Run, epoch: int, partial: dict | None = None) -> None:
    """Checkpoint the live state at the end of `epoch` or, with `partial`, after its
    `partial['kd_done']` KD steps; refuses non-finite state."""
    kd_done = partial["kd_done"] if partial else None
    state = {"student": run.student, "method": run.method_state}
    if not bool(_all_finite(state)):
        raise NonFiniteError(f"epoch {epoch}: the student or method state holds NaN/inf; "
                             "no checkpoint written, the last finite one is kept")
    last_complete = epoch if kd_done is None else epoch - 1
    meta = {"epoch": last_complete, "history": run.history, "partial": partial}
    run.ckpt.save(position(epoch, kd_done, run.config.kd_steps), state, meta)
    run.last_save = time.time()


def _interrupt_due(run: Run, signals: _Signals, step: int) -> tuple[bool, bool]:
    """(save now, then stop): time-based checkpoint, SIGTERM or a preemption notice."""
    stop = signals.terminated or run.ckpt.reached_preemption(step)
    every = run.config.checkpoint_every_s
    timed = every > 0 and time.time() - run.last_save >= every
    return stop or timed, stop


def _kd_phase(run: Run, epoch: int, rng: jax.Array, partial: dict, signals: _Signals) -> dict:
    """The epoch's KD steps from `partial['kd_done']` on; returns the updated partial."""
    method, config = run.method, run.config
    keys = jax.random.split(rng, config.kd_steps)
    total = jnp.asarray(partial["kd_loss_sum"], jnp.float32)
    # placed as the generator step returns them, once per epoch: host floats would make
    # the step's first call compile a second program
    gen_sums = parallel.replicate(
        {k: jnp.asarray(v, jnp.float32) for k, v in partial["gen_sums"].items()}, run.mesh)
    t0 = time.time()
    for i in range(partial["kd_done"], config.kd_steps):
        if i > partial["kd_done"]:
            save, stop = _interrupt_due(run, signals, position(epoch, i, config.kd_steps))
            if save:
                _save(run, epoch, {
                    **partial, "kd_done": i, "kd_loss_sum": float(total),
                    "kd_seconds_before": partial["kd_seconds_before"] + time.time() - t0,
                    "gen_sums": {k: float(v) for k, v in gen_sums.items()}})
                if stop:
                    raise Preempted(f"epoch {epoch}, KD step {i}; checkpoint written")
        if method.interleave_every and i % method.interleave_every == 0:
            run.method_state, gen_sums = method.interleave_step(
                run.method_state, distill.student_variables(run.student),
                run.teacher.variables, jax.random.fold_in(keys[i], 1), gen_sums)
        run.student, loss = run.kd_step(run.student, run.method_state, run.teacher.variables,
                                        keys[i])
        total = total + loss
    return {**partial, "kd_done": config.kd_steps, "kd_loss_sum": float(total),
            "gen_sums": {k: float(v) for k, v in gen_sums.items()}}


def run_epoch(run: Run, epoch: int, signals: _Signals) -> dict:
    """Synthesis (unless restored past it), KD, eval, preview; returns the epoch's record."""
    config, method = run.config, run.method
    base = jax.random.key(config.seed + 1)
    k_syn, k_kd = jax.random.split(jax.random.fold_in(base, epoch))
    partial = run.partial if run.partial and run.partial["epoch"] == epoch else None
    run.partial = None
    t0 = time.time()
    if partial is None:
        run.method_state, syn = method.synthesize_epoch(
            run.method_state, distill.student_variables(run.student), epoch, k_syn)
        syn = {k: float(v) for k, v in jax.device_get(syn).items()}
        _check_finite(syn, epoch, "synthesis")
        partial = {"epoch": epoch, "kd_done": 0, "kd_loss_sum": 0.0, "syn": syn,
                   "synthesis_seconds": time.time() - t0, "kd_seconds_before": 0.0,
                   "gen_sums": {k: float(v) for k, v in method.interleave_zero_sums().items()}}
        save, stop = _interrupt_due(run, signals, position(epoch, 0, config.kd_steps))
        if save and method.kd_active(epoch):
            _save(run, epoch, partial)
            if stop:
                raise Preempted(f"epoch {epoch}, after synthesis; checkpoint written")
    t1 = time.time()
    kd_loss, lr = None, float(run.schedule(run.student.step))
    gen = {}
    if method.kd_active(epoch):
        partial = _kd_phase(run, epoch, k_kd, partial, signals)
        kd_loss = partial["kd_loss_sum"] / config.kd_steps
        calls = -(-config.kd_steps // method.interleave_every) if method.interleave_every else 0
        gen = {f"gen_{k}": v / calls for k, v in partial["gen_sums"].items()} if calls else {}
        _check_finite({"kd_loss": kd_loss, **gen}, epoch, "KD")
    t2 = time.time()
    from nayer_jax.evaluate import evaluate

    ev = evaluate(run.student_apply, run.test.images, run.test.labels, config.eval_batch_size,
                  progress=False, variables=distill.student_variables(run.student),
                  put_batch=run.put_batch)
    t3 = time.time()
    record = {"epoch": epoch, "test_top1": ev["top1"], "test_top5": ev["top5"],
              "kd_loss": kd_loss, "lr": lr, "synthesis_seconds": partial["synthesis_seconds"],
              "kd_seconds": partial["kd_seconds_before"] + t2 - t1, "eval_seconds": t3 - t2,
              **{f"syn_{k}": v for k, v in partial["syn"].items()}, **gen}
    preview = method.preview(run.method_state)
    if preview is not None:
        run.log.image(f"epoch_{epoch:04d}", np.asarray(preview),
                      columns=run.teacher.meta.num_classes, step=epoch)
    method.after_epoch(run.method_state, epoch, run.workdir)
    return record


# ------------------------------------------------------------------------ the loop

def train_and_evaluate(config, workdir: str | Path, build_method: Callable | None = None,
                       stop_after_epoch: int | None = None,
                       stop_after_seconds: float | None = None) -> tuple[dict, dict]:
    """Run (or resume) a data-free distillation; returns (summary, final run state).

    The run state is {"student": StudentState, "method": the method's state} (e.g. the
    NAYER pool), also after a run restored from a checkpoint.
    `build_method(config, teacher, student_model, rng, mesh=)` -> (method, initial state);
    default: the builder registered for `config.method`. Runs unchanged on 1..N devices
    and several processes (nayer_jax.parallel). `stop_after_epoch`: checkpoint and return
    after that epoch, as a time-sliced job would; `stop_after_seconds`: the same after the
    first epoch that ends past that run time (compilation included; resumed runs count
    their earlier time), for equal-time comparisons. Raises `Preempted` after checkpointing
    on SIGTERM and `NonFiniteError` when a loss goes non-finite.
    """
    with _Signals() as signals:
        run = setup(config, workdir, build_method)
        if signals.terminated:
            run.ckpt.close()
            run.log.close()
            raise Preempted("setup, before the first step (nothing to checkpoint yet)")
        return _train(run, signals, stop_after_epoch, stop_after_seconds)


def _train(run: Run, signals: _Signals, stop_after_epoch: int | None,
           stop_after_seconds: float | None) -> tuple[dict, dict]:
    """The epoch loop and the final student of `train_and_evaluate` (SIGTERM: a flag; one
    after the last epoch's checkpoint lets the run finish)."""
    from tqdm import tqdm

    from nayer_jax import classifier as clf_io

    config = run.config
    bar = tqdm(range(run.start_epoch, config.epochs), desc="epochs", initial=run.start_epoch,
               total=config.epochs, dynamic_ncols=True, disable=not run.main_process)
    try:
        for epoch in bar:
            record = run_epoch(run, epoch, signals)
            record["seconds_total"] = run.seconds_before + time.time() - run.t_start
            run.history.append(record)
            run.log.write(record)
            stopping = ((stop_after_epoch is not None and epoch >= stop_after_epoch)
                        or (stop_after_seconds is not None
                            and record["seconds_total"] >= stop_after_seconds))
            save, preempted = _interrupt_due(
                run, signals, position(epoch, None, config.kd_steps))
            if ((epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
                    or stopping or save):
                _save(run, epoch)
            if preempted:
                raise Preempted(f"end of epoch {epoch}; checkpoint written")
            bar.set_postfix(top1=f"{record['test_top1']:.4f}",
                            syn=f"{record['synthesis_seconds']:.1f}s",
                            kd=f"{record['kd_seconds']:.1f}s")
            if stopping:
                break
    finally:
        run.ckpt.close()
        run.log.close()

    student_vars = parallel.gather_replicated(distill.student_variables(run.student), run.mesh)
    if not bool(_all_finite(student_vars)):
        raise NonFiniteError("the final student holds NaN/inf; not saved")
    clf_io.save_classifier(run.workdir / "student", student_vars,
                           clf_io.meta_for(config.student, run.teacher.meta.num_classes,
                                           run.teacher.meta.mean, run.teacher.meta.std,
                                           source=str(run.workdir)),
                           overwrite=True)
    top1s = [r["test_top1"] for r in run.history] or [float("nan")]
    summary = {"final_top1": top1s[-1], "best_top1": max(top1s), "epochs": len(run.history),
               "seconds": run.history[-1]["seconds_total"] if run.history else 0.0}
    return summary, {"student": run.student, "method": run.method_state}
