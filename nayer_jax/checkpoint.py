"""Orbax checkpoints of a whole run: every array of the state plus a JSON meta record.

The state is saved as a plain nested dict (flax.serialization.to_state_dict), so any
pytree of flax structs, optax states and named tuples round-trips; restoring needs a
template of the same structure (a freshly initialized run state), whose shardings the
restored arrays take. In a multi-process run every process calls save/restore.

Checkpoint steps are positions in the run (`position`), so a time-based or preemption
checkpoint inside an epoch orders between the epoch checkpoints around it. Orbax
writes each step to a temporary directory and renames it when complete, so a kill
during a save leaves the earlier steps intact; each finished step also lists its files
and sizes (`MANIFEST`), and `restore_latest` verifies the newest step against it (and by
restoring it), falls back to the newest intact one and names the damaged file. A write
that fails for lack of space (or a read-only disk) is one `CheckpointWriteError` line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization

from nayer_jax.errors import ConfigError, InputError


def position(epoch: int, kd_done: int | None, kd_steps: int) -> int:
    """Step number of a checkpoint: end of `epoch` (kd_done None) or after `kd_done` of its
    KD steps (mid-epoch; the epoch's synthesis is complete)."""
    sub = kd_steps + 1 if kd_done is None else kd_done
    return epoch * (kd_steps + 2) + sub


MANIFEST = "nayer_files.json"  # beside orbax's files in each step: name -> size


class CheckpointWriteError(InputError):
    """Writing a checkpoint failed (full disk, read-only directory); earlier ones are intact."""


def _quiet_orbax_leftovers(previous):
    """An unraisable-exception hook dropping what a failed write leaves behind: TensorStore
    callbacks into orbax's closed asyncio loops ("Event loop is closed") and its unawaited
    coroutines at exit, each a multi-line traceback after the one-line error."""
    def hook(unraisable):
        frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
        where = " ".join(f.filename for f in frames) + repr(unraisable.object)
        if "asyncio" in where or "orbax" in where or "Event loop is closed" in str(
                unraisable.exc_value):
            return
        previous(unraisable)
    return hook


def _os_error_reason(e: BaseException) -> str | None:
    """The OS error behind a failed write (e.g. 'No space left on device'), or None.

    Python writes raise OSError; TensorStore (the arrays) raises ValueError with
    "[os_error_code='28']" in its message instead."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    code = re.search(r"os_error_code='?(\d+)", str(e))
    return os.strerror(int(code.group(1))) if code else None


class RunCheckpointer:
    """Saves/restores (state, meta) under `directory`, keeping the newest `max_to_keep`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        if max_to_keep < 1:
            raise ConfigError(f"config.keep_checkpoints={max_to_keep}: expected >= 1 "
                              "(2 or more lets a damaged newest checkpoint fall back)")
        self.directory = Path(directory).resolve()
        self.max_to_keep = max_to_keep
        self.write_failed = False
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        # orbax logs a warning of its own for a step without metadata (a damaged one):
        # `restore_latest` reports that in one line, naming the file
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            return ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(
                    max_to_keep=self.max_to_keep, create=True))
        finally:
            absl_logger.setLevel(level)

    def _set_aside(self, step: int) -> Path:
        """Move a damaged step out of the manager's directory (kept, never deleted)."""
        dest = self.directory.parent / f"{self.directory.name}_damaged" / str(step)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest = dest.with_name(f"{step}_{len(list(dest.parent.iterdir()))}")
        (self.directory / str(step)).rename(dest)
        return dest

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        tree = serialization.to_state_dict(state)  # global arrays: orbax writes each shard once
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.CRITICAL)  # a failed write: our one line, not orbax's
        failed = False                          # tracebacks from each of its threads
        unraisable_hook = sys.unraisablehook
        sys.unraisablehook = _quiet_orbax_leftovers(unraisable_hook)
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
            self.manager.wait_until_finished()
            if jax.process_index() == 0:
                self._write_manifest(step)
        except Exception as e:  # orbax stays quiet after: its threads log it again at exit
            reason = _os_error_reason(e)
            if reason is None:
                raise
            failed = self.write_failed = True
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # its unawaited tasks
            # and its never-awaited write coroutines, which Python warns of when collected
            warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                                    category=RuntimeWarning)
            raise CheckpointWriteError(
                f"checkpoint {self.directory / str(step)}: write failed ({reason}); "
                "earlier checkpoints are intact") from None
        finally:
            if not failed:
                absl_logger.setLevel(level)
                sys.unraisablehook = unraisable_hook

    def _write_manifest(self, step: int) -> None:
        """Every file of a finished step with its size (written atomically, last), so that
        a truncated or missing file is named on restore. A step without one (a kill just
        before it) is still restored; a failing restore then marks it damaged."""
        step_dir = self.directory / str(step)
        files = {str(p.relative_to(step_dir)): p.stat().st_size
                 for p in sorted(step_dir.rglob("*")) if p.is_file()}
        tmp = step_dir / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(files, indent=0, sort_keys=True))
        os.replace(tmp, step_dir / MANIFEST)

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        target = serialization.to_state_dict(template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return serialization.from_state_dict(template, restored["state"]), dict(restored["meta"])

    def _damage(self, step: int) -> str | None:
        """Why step `step` cannot be restored (a file and a reason), or None if it looks whole."""
        step_dir = self.directory / str(step)
        meta = step_dir / "meta" / "metadata"
        if not meta.is_file():
            return f"{meta} missing"
        try:
            json.loads(meta.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            return f"{meta} is not valid JSON ({type(e).__name__})"
        state = step_dir / "state"
        if not state.is_dir() or not any(state.iterdir()):
            return f"{state} missing or empty"
        manifest = step_dir / MANIFEST
        if manifest.is_file():
            try:
                files = json.loads(manifest.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                return f"{manifest} is not valid JSON ({type(e).__name__})"
            for rel, size in files.items():
                path = step_dir / rel
                if not path.is_file():
                    return f"{path} missing"
                if path.stat().st_size != size:
                    return (f"{path} is {path.stat().st_size} bytes, {size} were written "
                            "(truncated or overwritten)")
        return None

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """(state, meta) of the newest intact checkpoint, or None when there is none.

        A damaged newer checkpoint is reported in one line on stderr and moved aside to
        `<directory>_damaged/` (so later saves number after the intact one).
        """
        damaged = False
        for step in reversed(self.steps()):
            reason = self._damage(step)
            if reason is None:
                try:
                    restored = self.restore(step, template)
                    if damaged:
                        self.manager.close()
                        self.manager = self._open()
                    return restored
                except Exception as e:  # noqa: BLE001 - any failure means "damaged"
                    first = (str(e).strip().splitlines() or [""])[0]
                    first = first.split(" See full TensorStore details")[0][:200]
                    reason = f"{self.directory / str(step)}: {type(e).__name__}: {first}"
            aside = self._set_aside(step) if jax.process_index() == 0 else None
            damaged = True
            print(f"warning: checkpoint {step} damaged ({reason}); moved to {aside}, "
                  "resuming from an older one", file=sys.stderr)
        if damaged:
            self.manager.close()
            self.manager = self._open()
        return None

    def reached_preemption(self, step: int) -> bool:
        """Orbax/JAX's multi-host preemption notice (False on one process)."""
        if jax.process_count() == 1:
            return False
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001
            if not self.write_failed:  # else: the failed write again, already reported
                raise
