"""Devices, meshes and shardings: one code path from 1 CPU to N accelerators and hosts.

Layout: a 2-D mesh ("data", "model"). Batches are split over "data"; parameters,
optimizer states, generators and the image pool are replicated (the "model" axis is
there for later tensor parallelism and has size 1 by default). Steps are ordinary jitted
functions over global arrays: XLA (GSPMD) inserts the collectives, so a BatchNorm
statistic inside a step is the statistic of the *global* batch, exactly as on one
device. Multi-host runs use JAX's own multi-controller runtime (`jax.distributed`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
MODEL = "model"

_ENV_COORDINATOR = ("NAYER_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
_ENV_NUM_PROCESSES = ("NAYER_NUM_PROCESSES", "JAX_NUM_PROCESSES")
_ENV_PROCESS_ID = ("NAYER_PROCESS_ID", "JAX_PROCESS_ID")


def _env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """`jax.distributed.initialize` from arguments or the environment; False on one process.

    Explicit: coordinator address + process count/id (arguments, or env
    NAYER_COORDINATOR_ADDRESS / NAYER_NUM_PROCESSES / NAYER_PROCESS_ID, or the JAX_*
    names). Otherwise JAX's cluster auto-detection (TPU pods, SLURM, ...) when such a
    cluster is detected; with none of these it does nothing (a single process).
    On CPU the collectives go through gloo.
    """
    coordinator_address = coordinator_address or _env(_ENV_COORDINATOR)
    n = num_processes if num_processes is not None else _env(_ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else _env(_ENV_PROCESS_ID)
    auto = any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                         "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE"))
    if coordinator_address is None and not auto:
        return False
    if coordinator_address is not None and (n is None or pid is None):
        raise ValueError(f"coordinator address {coordinator_address!r} given without the process "
                         "count and id: set NAYER_NUM_PROCESSES and NAYER_PROCESS_ID")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=int(n), process_id=int(pid))
    return True


def make_mesh(num_devices: int | None = None, model_parallel: int = 1) -> Mesh:
    """A (data, model) mesh over the first `num_devices` global devices (default: all)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices}, but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    if len(devices) % model_parallel:
        raise ValueError(f"{len(devices)} devices do not split into model_parallel={model_parallel}")
    grid = np.asarray(devices).reshape(len(devices) // model_parallel, model_parallel)
    return Mesh(grid, (DATA, MODEL))


def data_size(mesh: Mesh) -> int:
    return mesh.shape[DATA]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; the rest replicated."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Inside a jitted step: lay a batch-leading array out over the data axis."""
    if mesh is None or x.shape[0] % data_size(mesh):
        return x  # an indivisible batch stays as XLA chooses (still correct, less parallel)
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of a pytree, identical on every process, replicated on the mesh."""
    sharding = replicated(mesh)

    def put(x):
        if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            return jax.jit(lambda a: a, out_shardings=sharding)(x)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            return jax.random.wrap_key_data(
                jax.make_array_from_process_local_data(sharding, data, data.shape),
                impl=jax.random.key_impl(x))
        local = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, local, local.shape)

    return jax.tree.map(put, tree)


def replicate_like(tree: Any, ref: jax.Array) -> Any:
    """`tree` replicated on the mesh `ref` lives on (unchanged if `ref` has no mesh): fresh
    accumulators beside a replicated state, so that a jitted step sees the same input
    shardings on its first call as on the calls fed its own outputs (else it compiles twice)."""
    sharding = getattr(ref, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return replicate(tree, sharding.mesh)
    return tree


def gather_replicated(tree: Any, mesh: Mesh) -> Any:
    """Re-lay global arrays as fully replicated, so every process can read them whole."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def host_batch_to_global(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global batch that every host holds in full -> this host feeds only its rows.

    Rows are split evenly over processes in order; each process passes only its slice
    (jax.make_array_from_process_local_data), so per-host loaders need only local rows.
    """
    n, p = batch.shape[0], jax.process_count()
    if n % data_size(mesh):
        raise ValueError(f"batch of {n} rows does not split over {data_size(mesh)} data shards")
    rows = n // p
    local = batch[jax.process_index() * rows:(jax.process_index() + 1) * rows]
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local, batch.shape)


def is_main_process() -> bool:
    """Only process 0 writes logs, images and JSON (orbax saves involve every process)."""
    return jax.process_index() == 0


def cast_compute(tree: Any, dtype) -> Any:
    """Floating arrays of a pytree in the compute dtype (bf16 on GPU/TPU); f32 is a no-op.

    Used on the forward pass only: parameters and optimizer states stay float32, and the
    losses and BatchNorm statistics compute in float32 whatever the input dtype.
    """
    if jax.numpy.dtype(dtype) == jax.numpy.float32:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype)
                        if hasattr(a, "dtype") and jax.numpy.issubdtype(a.dtype, jax.numpy.floating)
                        else a, tree)
