"""A ready-to-use classifier on disk: flax variables + metadata, saved with orbax.

The converter, the teacher trainer and the distillation loop all write this format, so a
converted PyTorch teacher and a teacher trained here load the same way:

    clf = load_classifier("runs/teacher")
    logits = clf.apply(images_in_0_1)          # normalization included

A save is atomic (written to a hidden sibling, then renamed), and classifier.json holds a
sha256 of the variables that a load verifies, as it checks every array's shape against
what arch/num_classes imply: damaged or mismatched weights fail on load, in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from nayer_jax.models import registry
from nayer_jax.errors import InputError

META_FILE = "classifier.json"
VARIABLES_DIR = "variables"
FORMAT_VERSION = 1
HASH_FIELD = "variables_sha256"  # absent in classifiers saved before it existed
PARTIAL_SUFFIX = ".partial"      # sibling a save writes before renaming it into place


class ClassifierFileError(InputError):
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

    @property
    def channels(self) -> int:
        """Input channels of the architecture (3 for RGB, 1 for the grayscale digits)."""
        return registry.get_spec(self.arch).channels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one input image, NHWC."""
        return (self.input_size, self.input_size, self.channels)


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


def variables_sha256(variables: dict) -> str:
    """sha256 over every leaf (path, shape, bytes as float32 when floating), in sorted path order."""
    h = hashlib.sha256()
    flat = traverse_util.flatten_dict(dict(variables))
    for path in sorted(flat):
        a = np.asarray(flat[path])
        if np.issubdtype(a.dtype, np.floating):  # bf16/f16 -> f32 is exact: one hash per value
            a = a.astype(np.float32)
        h.update("/".join(map(str, path)).encode() + b"\0" + str(a.shape).encode() + b"\0")
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def partial_path(directory: str | Path) -> Path:
    """The temporary sibling a save of `directory` is written to before its rename."""
    directory = Path(directory)
    return directory.with_name(f".{directory.name}{PARTIAL_SUFFIX}")


def sync_processes(name: str) -> None:
    """Barrier across JAX processes (a no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def save_classifier(directory: str | Path, variables: dict, meta: ClassifierMeta,
                    overwrite: bool = False) -> Path:
    """Write variables (orbax) + metadata (JSON, with a content hash), atomically.

    Everything goes to a temporary sibling first and is renamed into place at the end, so
    a crash (kill -9) never leaves a half-written classifier under `directory`. Refuses to
    replace an existing non-empty one unless `overwrite`.
    """
    directory = Path(directory).resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())) and not overwrite:
        raise FileExistsError(f"{directory}: already exists and is not empty; "
                              "choose a new --out directory (nothing was written)")
    tmp = partial_path(directory)
    main = jax.process_index() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed save
    sync_processes(f"save_classifier_clean:{directory}")
    tmp.mkdir(parents=True, exist_ok=True)
    variables = jax.tree.map(lambda a: np.asarray(a), dict(variables))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / VARIABLES_DIR, variables)
    ckptr.wait_until_finished()
    if main:
        meta_dict = dataclasses.asdict(meta)
        meta_dict["format_version"] = FORMAT_VERSION
        meta_dict[HASH_FIELD] = variables_sha256(variables)
        (tmp / META_FILE).write_text(json.dumps(meta_dict, indent=2))
        _replace_dir(tmp, directory)
    sync_processes(f"save_classifier_done:{directory}")
    return directory


def _replace_dir(new: Path, directory: Path) -> None:
    """Rename `new` to `directory`; an existing one is moved aside first, deleted last."""
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.rename(directory, old)
    os.rename(new, directory)
    shutil.rmtree(old, ignore_errors=True)


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
    raw.pop(HASH_FIELD, None)
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
    """Restore a classifier written by `save_classifier`: shapes checked against the arch,
    contents against the stored hash (when the file has one)."""
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
    variables = dict(variables)
    _check_shapes(variables, target, directory, meta)
    _check_hash(variables, directory)
    return Classifier(model=model, variables=variables, meta=meta)


def _check_shapes(variables: dict, target: dict, directory: Path, meta: ClassifierMeta) -> None:
    """One-line error at the first leaf whose stored shape is not what the metadata implies."""
    got = traverse_util.flatten_dict(variables)
    want = traverse_util.flatten_dict(dict(target))
    for path in sorted(set(got) | set(want)):
        g, w = got.get(path), want.get(path)
        g_shape = None if g is None else tuple(np.shape(g))
        w_shape = None if w is None else tuple(w.shape)
        if g_shape != w_shape:
            raise ClassifierFileError(
                f"{directory / VARIABLES_DIR}: leaf {'/'.join(path)} has shape {g_shape}; "
                f"{directory / META_FILE} (arch '{meta.arch}', num_classes={meta.num_classes}) "
                f"implies {w_shape}")


def _check_hash(variables: dict, directory: Path) -> None:
    """One-line error when the stored content hash does not match the restored variables."""
    meta_path = directory / META_FILE
    expected = json.loads(meta_path.read_text()).get(HASH_FIELD)
    if expected is None:  # saved before hashes existed
        return
    actual = variables_sha256(variables)
    if actual != expected:
        raise ClassifierFileError(
            f"{directory / VARIABLES_DIR}: content hash {actual[:12]}... does not match "
            f"{HASH_FIELD} {str(expected)[:12]}... in {meta_path}; the weights were modified "
            "or damaged after saving")
