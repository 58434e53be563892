"""JAX's persistent compilation cache for nayer-jax runs: a rerun skips compiling its steps.

    from nayer_jax import compile_cache
    compile_cache.enable()              # ~/.cache/nayer_jax/xla, or env NAYER_JAX_CACHE
    ...
    compile_cache.stats()               # {'hits': 2, 'misses': 0, ...} in this process

`enable()` sets `jax_compilation_cache_dir` and lowers JAX's thresholds (by default only
programs that took >= 1 s to compile are written) so that every jitted step of the
loop is cached, whatever its compile time. It is idempotent: a second call with the same
directory does nothing, a call with another directory moves the cache there. It also
registers a listener on JAX's monitoring events, so a process can tell whether its
compilations were served from disk (`stats()`), and `entries()` counts the files.

Directory resolution: the `cache_dir` argument, else env NAYER_JAX_CACHE, else
$XDG_CACHE_HOME/nayer_jax/xla (default ~/.cache/nayer_jax/xla). Setting
NAYER_JAX_CACHE to "0", "off" or "" disables it (`enable()` then returns None).
The cache key covers the program, the jax/jaxlib version, the backend and the XLA
flags, so stale entries are never used; delete the directory to reclaim space.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import jax
from jax import monitoring

__all__ = ["enable", "default_dir", "stats", "entries", "cache_dir"]

ENV = "NAYER_JAX_CACHE"
_OFF = ("0", "off", "false", "no", "none", "")

_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"

_lock = threading.Lock()
_counts = {"hits": 0, "misses": 0, "requests": 0}
_listening = False
_dir: Path | None = None


def default_dir() -> Path | None:
    """The directory `enable()` uses without an argument (None: disabled by the env)."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nayer_jax" / "xla"


def _on_event(event: str, **_kwargs) -> None:
    key = {_HIT: "hits", _MISS: "misses", _REQUEST: "requests"}.get(event)
    if key is not None:
        with _lock:
            _counts[key] += 1


def enable(cache_dir: str | Path | None = None, min_compile_time_secs: float = 0.0,
           min_entry_size_bytes: int = 0) -> Path | None:
    """Turn on the persistent cache in `cache_dir` (see the module doc); returns the path.

    Safe to call any number of times, before or after the first compilation (programs
    compiled before the call are simply not cached).
    """
    global _listening, _dir
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_dir()
    if path is None:
        return None
    path = path.resolve()
    with _lock:
        if not _listening:
            monitoring.register_event_listener(_on_event)
            _listening = True
        if _dir == path:
            return path
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
        if _dir is not None:  # moving an initialized cache: JAX reads the dir only once
            from jax._src import compilation_cache as _cc
            _cc.reset_cache()
        jax.config.update("jax_compilation_cache_dir", str(path))
        _dir = path
    return path


def cache_dir() -> Path | None:
    """The directory set by the last `enable()` in this process (None: not enabled)."""
    return _dir


def stats() -> dict[str, int]:
    """Persistent-cache events seen in this process since `enable()` was first called:
    hits (executables loaded from disk), misses (compiled, then written), requests."""
    with _lock:
        return dict(_counts)


def entries(path: str | Path | None = None) -> int:
    """Number of cached executables in `path` (default: the enabled directory)."""
    path = Path(path) if path is not None else _dir
    if path is None or not path.is_dir():
        return 0
    return sum(1 for p in path.iterdir() if p.is_file() and p.name.endswith("-cache"))
