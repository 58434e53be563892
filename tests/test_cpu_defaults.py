"""The XLA:CPU default flags: added when missing on a measured jaxlib, never over a
user's own value, off by env, on other jaxlib versions or on several forced host devices,
and live in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nayer_jax import cpu_defaults

YNN = "--xla_cpu_experimental_ynn_fusion_type"


@pytest.mark.parametrize("xla_flags, version, env, expected", [
    ("", (0, 10), None, [f"{YNN}="]),
    ("--xla_force_host_platform_device_count=1", (0, 10), None, [f"{YNN}="]),
    ("--xla_force_host_platform_device_count=8", (0, 10), None, []),  # sharded: precision
    (f"{YNN}=dot", (0, 10), None, []),          # the user's value wins
    ("", (0, 10), "0", []),                      # turned off
    ("", (0, 10), "off", []),
    ("", (0, 10), "1", [f"{YNN}="]),
    ("", (0, 4), None, []),                      # a jaxlib it was not measured on
    ("", (), None, []),                          # jaxlib version unknown
])
def test_flags_to_add(xla_flags, version, env, expected):
    assert cpu_defaults.flags_to_add(xla_flags, version, env) == expected


def test_importing_nayer_jax_sets_the_flags_before_the_backend_starts():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    env.pop(cpu_defaults.ENV, None)
    code = ("import jax, nayer_jax, os; print(os.environ['XLA_FLAGS']); "
            "print(len(jax.devices()), float(jax.numpy.ones(3).sum()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, devices = out.stdout.split("\n")[:2]
    added = cpu_defaults.flags_to_add("", cpu_defaults._jaxlib_version(), None)
    assert flags.split() == ["--xla_force_host_platform_device_count=1", *added]
    assert devices == "1 3.0"
