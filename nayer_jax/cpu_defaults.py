"""XLA:CPU flags nayer-jax sets by default because they measurably speed its steps on CPU.

`apply()` runs when `nayer_jax` is imported. It appends the flags to XLA_FLAGS, which XLA
reads once, when the first backend starts. Importing jax first is fine; running a jax
computation before importing nayer_jax leaves them off.
- `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions, so convolutions
  run on XLA's Eigen kernels). A/B in one invocation on 2 AMD EPYC cores: the KD step
  1.14x and the synthesis step 1.24x faster
  (experiments/results/profile_steps_no_ynn_cpu.json).
The flags apply only to the jaxlib versions they were measured on, since XLA aborts on
an unknown flag, and only to one host device: with YNNPACK fusions off, a train-mode
ResNet-20 gradient sharded over 8 forced host devices measured 1.1e-3 relative L2 from
f64, against 4e-7 with them on (experiments/precision_sharded_cpu.py), so when XLA_FLAGS
sets --xla_force_host_platform_device_count above 1 nothing is added. They only touch the
CPU backend. A flag already in XLA_FLAGS is left as the user set it; env
NAYER_JAX_XLA_DEFAULTS=0 turns all of this off.
"""

from __future__ import annotations

import os
from importlib import metadata

ENV = "NAYER_JAX_XLA_DEFAULTS"
FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": ""}  # flag -> value
MEASURED_ON = ((0, 10),)  # jaxlib (major, minor) versions
FORCED_DEVICES = "--xla_force_host_platform_device_count"


def _jaxlib_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return ()


def enabled(env_value: str | None) -> bool:
    """Whether env NAYER_JAX_XLA_DEFAULTS (its value, None if unset) leaves the defaults on."""
    return (env_value or "1").strip().lower() not in ("0", "off", "false", "no")


def flags_to_add(xla_flags: str, jaxlib_version: tuple[int, ...], env_value: str | None) -> list[str]:
    """The default flags missing from `xla_flags` (none when off or on another jaxlib)."""
    if not enabled(env_value):
        return []
    if jaxlib_version[:2] not in MEASURED_ON:
        return []
    given = dict((f.split("=", 1) + [""])[:2] for f in xla_flags.split())
    if given.get(FORCED_DEVICES, "1").strip() not in ("", "0", "1"):
        return []  # several host devices: see the module docstring (precision)
    set_already = set(given)
    return [f"{k}={v}" for k, v in FLAGS.items() if k not in set_already]


def apply() -> list[str]:
    """Append the missing default flags to os.environ["XLA_FLAGS"]; returns those added."""
    current = os.environ.get("XLA_FLAGS", "")
    added = flags_to_add(current, _jaxlib_version(), os.environ.get(ENV))
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
