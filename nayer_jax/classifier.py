"""A ready-to-use classifier on disk: flax variables + metadata, saved with orbax.

The converter, the teacher trainer and the distillation loop all write this format, so a
converted PyTorch teacher and a teacher trained here load the same way:

    clf = load_classifier("runs/teacher")
    logits = clf.apply(images_in_0_1)          # normalization included
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from nayer_jax.models import registry

META_FILE = "classifier.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1


class ClassifierFileError(ValueError):
    """A classifier directory is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class ClassifierMeta:
    arch: str
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""  # where the weights came from (checkpoint path, training run)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Classifier:
    """Module + variables ({'params', 'batch_stats'}) + how to feed it."""
    model: nn.Module
    variables: dict
    meta: ClassifierMeta

    def normalize(self, images: jax.Array) -> jax.Array:
        """Images in [0, 1], NHWC -> the model's input."""
        return normalize(images, self.meta.mean, self.meta.std)

    def apply(self, images: jax.Array) -> jax.Array:
        """Eval-mode logits of images in [0, 1]."""
        return self.model.apply(self.variables, self.normalize(images), train=False)


def normalize(images: jax.Array, mean, std) -> jax.Array:
    mean = jnp.asarray(mean, images.dtype)
    std = jnp.asarray(std, images.dtype)
    return (images - mean) / std


def meta_for(arch: str, num_classes: int | None = None, mean=None, std=None,
             source: str = "", **extra) -> ClassifierMeta:
    """Metadata for `arch` with the registry's defaults where not given."""
    spec = registry.get_spec(arch)
    return ClassifierMeta(arch=arch,
                          num_classes=spec.num_classes if num_classes is None else int(num_classes),
                          input_size=spec.input_size,
                          mean=tuple(float(m) for m in (spec.mean if mean is None else mean)),
                          std=tuple(float(s) for s in (spec.std if std is None else std)),
                          source=source, extra=dict(extra))


def save_classifier(directory: str | Path, variables: dict, meta: ClassifierMeta,
                    overwrite: bool = False) -> Path:
    """Write variables (orbax) and metadata (JSON). Refuses to replace an existing one."""
    directory = Path(directory).resolve()
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory}: already exists and is not empty; "
                              "choose a new --out directory (nothing was written)")
    directory.mkdir(parents=True, exist_ok=True)
    variables = jax.tree.map(lambda a: np.asarray(a), dict(variables))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory / VARIABLES_DIR, variables, force=overwrite)
    ckptr.wait_until_finished()
    meta_dict = dataclasses.asdict(meta)
    meta_dict["format_version"] = FORMAT_VERSION
    (directory / META_FILE).write_text(json.dumps(meta_dict, indent=2))
    return directory


def load_meta(directory: str | Path) -> ClassifierMeta:
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise ClassifierFileError(f"{meta_path}: missing; expected a classifier directory "
                                  "written by nayer_jax.convert or nayer_jax.train_teacher")
    try:
        raw = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ClassifierFileError(f"{meta_path}: not valid JSON ({e})") from None
    raw.pop("format_version", None)
    try:
        raw["mean"] = tuple(raw["mean"])
        raw["std"] = tuple(raw["std"])
        return ClassifierMeta(**raw)
    except (KeyError, TypeError) as e:
        raise ClassifierFileError(f"{meta_path}: bad metadata ({e}); expected fields "
                                  f"{[f.name for f in dataclasses.fields(ClassifierMeta)]}") from None


def init_variables(model: nn.Module, input_size: int, channels: int = 3, seed: int = 0) -> dict:
    """Fresh variables of `model` for one (1, H, W, C) input."""
    x = jnp.zeros((1, input_size, input_size, channels), jnp.float32)
    return dict(model.init(jax.random.key(seed), x, train=False))


def load_classifier(directory: str | Path) -> Classifier:
    """Restore a classifier written by `save_classifier` (structure checked against the arch)."""
    directory = Path(directory).resolve()
    meta = load_meta(directory)
    model = registry.create_model(meta.arch, meta.num_classes)
    spec = registry.get_spec(meta.arch)
    target = jax.eval_shape(lambda: init_variables(model, meta.input_size, spec.channels))
    try:
        variables = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR, target)
    except Exception as e:  # orbax raises several types for a bad tree/file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClassifierFileError(f"{directory / VARIABLES_DIR}: cannot restore variables "
                                  f"for arch '{meta.arch}' ({msg})") from None
    return Classifier(model=model, variables=dict(variables), meta=meta)
