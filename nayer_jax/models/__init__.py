"""Flax classifiers (NHWC) whose parameter names mirror their PyTorch originals."""

from nayer_jax.models.registry import (ModelSpec, create_model, get_spec, list_models,
                                       register)

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register"]
