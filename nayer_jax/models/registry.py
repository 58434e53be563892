"""Model registry: name -> constructor, default classes, input size, input normalization.

Every classifier is a flax.linen Module called as `model(x, train: bool)` on NHWC float
images that are already normalized with the entry's mean/std.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
from nayer_jax.errors import InputError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a user needs to build and feed an architecture."""
    name: str
    constructor: Callable[[int], nn.Module]  # num_classes -> module
    num_classes: int
    input_size: int  # square H == W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(InputError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it one clean line
        return self.args[0]


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model '{spec.name}' registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # Importing the architecture modules registers them.
    from nayer_jax.models import zoo  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown architecture '{name}'; expected one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Instantiate architecture `name` with `num_classes` outputs (default: its spec's)."""
    spec = get_spec(name)
    return spec.constructor(spec.num_classes if num_classes is None else num_classes)


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)
