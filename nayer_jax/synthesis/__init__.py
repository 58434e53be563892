"""Synthesis methods, one file each; `METHODS[name].build(config, teacher, student, rng)`."""

from __future__ import annotations


def get_builder(name: str):
    """The `build(config, teacher, student_model, rng) -> (method, state)` of a method."""
    if name == "nayer":
        from nayer_jax.synthesis import nayer
        return nayer.build
    if name == "luo":
        from nayer_jax.synthesis import generative
        return generative.build
    if name == "noise":
        from nayer_jax.synthesis import noise
        return noise.build
    raise ValueError(f"config.method={name!r}: expected one of ['luo', 'nayer', 'noise']")
