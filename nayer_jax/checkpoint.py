"""Orbax checkpoints of a whole run: every array of the state plus a JSON meta record.

The state is saved as a plain nested dict (flax.serialization.to_state_dict), so any
pytree of flax structs, optax states and named tuples round-trips; restoring needs a
template of the same structure (a freshly initialized run state), whose shardings the
restored arrays take. In a multi-process run every process calls save/restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization


class RunCheckpointer:
    """Saves/restores (state, meta) per epoch under `directory`, keeping the newest few."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                 create=True))

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        tree = serialization.to_state_dict(state)  # global arrays: orbax writes each shard once
        self.manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def restore(self, epoch: int, template: Any) -> tuple[Any, dict]:
        target = serialization.to_state_dict(template)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return serialization.from_state_dict(template, restored["state"]), dict(restored["meta"])

    def close(self) -> None:
        self.manager.close()
