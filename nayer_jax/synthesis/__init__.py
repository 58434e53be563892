"""Synthesis methods, one file each, and the contract the one loop drives them through.

A method module `nayer_jax/synthesis/<name>.py` provides

    default_config() -> ml_collections.ConfigDict
        `distill.default_config()` plus the method's own Settings fields (added, never
        deleted), so `--config.x=y` works for every field the method reads.
    build(config, teacher, student_model, rng, mesh=None) -> (method, state)
        The method object (a `SynthesisMethod`) and its initial state, a pytree that the
        loop checkpoints, restores and replicates on the mesh.

and joins the registry below in one line. `distill.train_and_evaluate` runs, per epoch:

    state, metrics = method.synthesize_epoch(state, student_vars, epoch, rng)
    if method.kd_active(epoch):            # kd_steps x, all jitted, nothing read back
        every `method.interleave_every` steps (if > 0):
            state, sums = method.interleave_step(state, student_vars, teacher_vars, rng, sums)
        student = kd_step(student, state, ...)   # batch = method.sample(state, rng, n)
    method.preview(state)                   # uint8 NHWC batch for the epoch's PNG, or None
    method.after_epoch(state, epoch, workdir)

`synthesize_epoch` and `interleave_step` may consume the state they are given (its
buffers donated to the jitted steps, as the KD step donates the student's): keep working
with the state they return; `jax.tree.map(jnp.copy, state)` first to keep the old one.
`sample` is always a bound method, jit-traced inside the KD step. `interleave_step` is
the hook of the adversarial/alternating methods (DAFL, DFAD): a jitted generator update
between student updates; its metric sums stay on the device until the epoch ends.
Subclass `MethodBase` to get the optional members' defaults.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import jax

from nayer_jax import parallel
from nayer_jax.errors import ConfigError

# name -> module; a new method joins with one line.
METHODS: dict[str, str] = {
    "nayer": "nayer_jax.synthesis.nayer",
    "luo": "nayer_jax.synthesis.luo",
    "noise": "nayer_jax.synthesis.noise",
    "deepinversion": "nayer_jax.synthesis.deepinversion",
    "dafl": "nayer_jax.synthesis.dafl",
    "dfad": "nayer_jax.synthesis.dfad",
    "fast": "nayer_jax.synthesis.fast",
}


class SynthesisMethod(Protocol):
    """What `distill.train_and_evaluate` calls; see the module docstring for the order."""

    interleave_every: int  # 0: no interleaved generator step during KD

    def synthesize_epoch(self, state: Any, student_vars: dict, epoch: int,
                         rng: jax.Array) -> tuple[Any, dict]:
        """The epoch's synthesis; metrics may be device values (read once per epoch).
        `state` may be consumed (donated): use the returned one."""

    def kd_active(self, epoch: int) -> bool:
        """Whether the epoch runs its kd_steps."""

    def sample(self, state: Any, rng: jax.Array, batch_size: int) -> jax.Array:
        """One KD batch (batch_size, H, W, C) float32 in [0, 1]; jit-safe."""

    def interleave_step(self, state: Any, student_vars: dict, teacher_vars: dict,
                        rng: jax.Array, sums: dict) -> tuple[Any, dict]:
        """A generator update between KD steps; returns (state, sums + its metrics)."""

    def interleave_zero_sums(self) -> dict:
        """Zero metric sums for `interleave_step` (device scalars)."""

    def preview(self, state: Any) -> jax.Array | None:
        """uint8 NHWC images for the epoch's grid (class k in column k), or None."""

    def after_epoch(self, state: Any, epoch: int, workdir: Path) -> None:
        """After the preview, before the checkpoint (extra grids, stage exports)."""


class MethodBase:
    """Defaults of the optional members: no interleaving, no preview, no epoch hook."""

    interleave_every: int = 0

    def _bind(self, settings, teacher, student_model: Any, mesh, compute_dtype) -> None:
        """The members most methods set alike: settings `s`, teacher, student model, mesh
        (default: one device), compute dtype, and the teacher's classes and image shape."""
        self.s = settings
        self.mesh = mesh or parallel.make_mesh(1)
        self.compute_dtype = compute_dtype
        self.teacher = teacher
        self.student_model = student_model
        self.num_classes = teacher.meta.num_classes
        self.img_shape = tuple(teacher.meta.image_shape)  # (H, W, C)

    def interleave_step(self, state, student_vars, teacher_vars, rng, sums):
        raise NotImplementedError(f"{type(self).__name__} has interleave_every=0")

    def interleave_zero_sums(self) -> dict:
        return {}

    def preview(self, state) -> jax.Array | None:
        return None

    def after_epoch(self, state, epoch: int, workdir: Path) -> None:
        return None


def get_method_module(name: str):
    """The module of method `name` (its `build` and `default_config`)."""
    if name not in METHODS:
        raise ConfigError(f"config.method={name!r}: expected one of {sorted(METHODS)}")
    return importlib.import_module(METHODS[name])


def get_builder(name: str):
    """The `build(config, teacher, student_model, rng, mesh=) -> (method, state)` of a method."""
    return get_method_module(name).build


def default_config(name: str):
    """The full default config of method `name` (loop base + the method's fields)."""
    return get_method_module(name).default_config()
