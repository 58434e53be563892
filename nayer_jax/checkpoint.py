"""Orbax checkpoints of a whole run: every array of the state plus a JSON meta record.

The state is saved as a plain nested dict (flax.serialization.to_state_dict), so any
pytree of flax structs, optax states and named tuples round-trips; restoring needs a
template of the same structure (a freshly initialized run state), whose shardings the
restored arrays take. In a multi-process run every process calls save/restore.

Checkpoint steps are positions in the run (`position`), so a time-based or preemption
checkpoint inside an epoch orders between the epoch checkpoints around it. Orbax
writes each step to a temporary directory and renames it when complete, so a kill
during a save leaves the earlier steps intact; `restore_latest` verifies the newest
step and falls back to the newest intact one, saying which one was damaged and why.
"""

from __future__ import annotations

import json
import sys
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


class CheckpointWriteError(InputError):
    """Writing a checkpoint failed (full disk, read-only directory); earlier ones are intact."""


class RunCheckpointer:
    """Saves/restores (state, meta) under `directory`, keeping the newest `max_to_keep`."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        if max_to_keep < 1:
            raise ConfigError(f"config.keep_checkpoints={max_to_keep}: expected >= 1 "
                              "(2 or more lets a damaged newest checkpoint fall back)")
        self.directory = Path(directory).resolve()
        self.max_to_keep = max_to_keep
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep,
                                                                 create=True))

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
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
            self.manager.wait_until_finished()
        except OSError as e:
            raise CheckpointWriteError(
                f"checkpoint {self.directory / str(step)}: write failed ({e.strerror or e}); "
                "earlier checkpoints are intact") from None

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
                    first = (str(e).strip().splitlines() or [""])[0][:200]
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
        self.manager.close()
