"""Locating the shared real material (CIFAR-10, PyTorch teachers, CLIP label embeddings)."""

from __future__ import annotations

import os
from pathlib import Path
from nayer_jax.errors import InputError

_DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared"


class SharedMissingError(InputError, FileNotFoundError):
    """A file of the shared material is not where NAYER_SHARED points."""


def shared_dir() -> Path:
    """Root of the shared material: env NAYER_SHARED, else `../shared` beside the checkout,
    else (an installed package) `./shared` or `../shared` of the working directory."""
    if "NAYER_SHARED" in os.environ:
        return Path(os.environ["NAYER_SHARED"]).expanduser().resolve()
    for candidate in (_DEFAULT, Path.cwd() / "shared", Path.cwd().parent / "shared"):
        if candidate.is_dir():
            return candidate.resolve()
    return _DEFAULT.resolve()


def shared_path(relative: str) -> Path:
    """Path of `relative` inside the shared material; a clear error if it is missing."""
    path = shared_dir() / relative
    if not path.exists():
        raise SharedMissingError(
            f"shared material missing: {path} (set NAYER_SHARED to the folder holding "
            f"data/, teachers/ and lte/; expected '{relative}' inside it)")
    return path
