"""nayer_jax.compile_cache: a second process compiling the same jitted function hits the disk cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys
from nayer_jax import compile_cache
path = compile_cache.enable(sys.argv[1])
assert compile_cache.enable(sys.argv[1]) == path  # idempotent
import jax, jax.numpy as jnp

@jax.jit
def step(w, x):  # a small training-like step: compiles in well under JAX's default 1 s bar
    loss, g = jax.value_and_grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)
    return w - 0.1 * g, loss

w, loss = step(jnp.ones((16, 4)), jnp.ones((8, 16)))
jax.block_until_ready(loss)
print(json.dumps({**compile_cache.stats(), "entries": compile_cache.entries(), "dir": str(path)}))
"""


def _run(cache_dir: Path, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(cache_dir)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first = _run(cache)
    assert first["dir"] == str(cache.resolve())
    assert first["hits"] == 0 and first["misses"] >= 1
    assert first["entries"] >= 1
    second = _run(cache)
    assert second["hits"] >= 1, second
    assert second["misses"] == 0, second  # every program of the child came from disk
    assert second["entries"] == first["entries"]


def test_default_dir_from_env(tmp_path, monkeypatch):
    from nayer_jax import compile_cache

    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.default_dir() == tmp_path / "c"
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.default_dir() is None
    assert compile_cache.enable() is None  # disabled: nothing set
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == tmp_path / "xdg" / "nayer_jax" / "xla"
