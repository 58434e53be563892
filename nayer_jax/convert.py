"""PyTorch state_dict -> Flax variables, strict like `load_state_dict(strict=True)`.

One rule serves every architecture of the zoo, because Flax module names mirror the
PyTorch keys (numeric segments merged into the one before: "layer1.0.conv1.weight" ->
params/layer1_0/conv1/kernel). Leaves map by name and rank:
  weight (4-D, OIHW) -> kernel (HWIO);  weight (2-D, out x in) -> kernel (in x out)
  weight (1-D)       -> scale;           bias -> bias
  running_mean/var   -> batch_stats mean/var;  num_batches_tracked -> dropped

CLI:  python -m nayer_jax.convert --arch resnet20 --num-classes 10 --src X.th --out DIR
"""

from __future__ import annotations

import argparse
import numbers
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from nayer_jax import classifier as clf_io
from nayer_jax.models import registry
from nayer_jax.errors import InputError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "student", "teacher")


class ConversionError(InputError):
    """The checkpoint does not fit the requested architecture, or is not readable."""


def torch_key_to_path(key: str) -> tuple[str, tuple[str, ...]]:
    """'layer1.0.bn1.running_mean' -> ('batch_stats', ('layer1_0', 'bn1', 'mean'))."""
    *modules, leaf = key.split(".")
    merged: list[str] = []
    for seg in modules:
        if seg.isdigit() and merged:
            merged[-1] = f"{merged[-1]}_{seg}"
        else:
            merged.append(seg)
    if leaf == "running_mean":
        return "batch_stats", (*merged, "mean")
    if leaf == "running_var":
        return "batch_stats", (*merged, "var")
    return "params", (*merged, leaf)  # weight/bias: final name fixed by rank below


def _convert_leaf(leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    if leaf == "weight":
        if value.ndim == 4:
            return "kernel", np.transpose(value, (2, 3, 1, 0))
        if value.ndim == 2:
            return "kernel", value.T
        if value.ndim == 1:
            return "scale", value
        raise ConversionError(f"weight of rank {value.ndim} is not supported")
    return leaf, value


def unwrap_state_dict(obj: Any, src: str = "checkpoint") -> dict[str, np.ndarray]:
    """Accept {'state_dict': ...}/{'model': ...} wrappers and 'module.' prefixes."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _looks_like_state_dict(obj):
        got = (f"a {type(obj).__name__} with keys {list(obj)[:5]}" if isinstance(obj, Mapping)
               else f"a {type(obj).__name__}")
        raise ConversionError(f"{src}: no state_dict found (got {got}); "
                              f"expected a dict of tensors, optionally under one of {list(_WRAPPER_KEYS)}")
    out = {}
    for key, v in obj.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float32)
        _check_finite(out[k], key, src)
    return out


def _check_finite(value: np.ndarray, key: str, src: str) -> None:
    """One-line error naming the tensor when it holds NaN/inf (a diverged or damaged save)."""
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    if bad:
        raise ConversionError(f"{src}: tensor '{key}' holds {bad} NaN/inf value(s) of "
                              f"{value.size}; expected finite weights (a diverged or damaged "
                              "checkpoint)")


def check_num_classes(num_classes: int | None, name: str = "num_classes") -> None:
    """Refuse a class count that is not a positive integer (None: the arch's default)."""
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes <= 0
                                    or not isinstance(num_classes, numbers.Integral)):
        raise ConversionError(f"{name} {num_classes}: expected a positive number of classes")


def _looks_like_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, num_classes: int | None = None,
                       src: str = "checkpoint") -> dict:
    """Strictly convert a PyTorch state_dict to {'params', 'batch_stats'} for `arch`.

    Raises ConversionError listing missing keys, unexpected keys and shape mismatches.
    """
    check_num_classes(num_classes)
    sd = unwrap_state_dict(state_dict, src)
    spec = registry.get_spec(arch)
    model = registry.create_model(arch, num_classes)
    expected_tree = jax.eval_shape(lambda: clf_io.init_variables(model, spec.input_size, spec.channels))
    expected = {k: v.shape for k, v in traverse_util.flatten_dict(dict(expected_tree)).items()}

    converted: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, mismatched, mismatched_flat = [], [], set()
    for key, value in sd.items():
        collection, path = torch_key_to_path(key)
        try:
            leaf, arr = _convert_leaf(path[-1], value)
        except ConversionError as e:
            raise ConversionError(f"{src}: key '{key}': {e}") from None
        flat = (collection, *path[:-1], leaf)
        if flat not in expected:
            unexpected.append(key)
            continue
        if tuple(arr.shape) != tuple(expected[flat]):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model "
                              f"{_torch_shape(leaf, expected[flat])}")
            mismatched_flat.add(flat)
            continue
        converted[flat] = arr
    missing = [_flax_to_torch_key(p) for p in expected
               if p not in converted and p not in mismatched_flat]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches [{'; '.join(mismatched[:5])}"
                         f"{'; ...' if len(mismatched) > 5 else ''}]")
        raise ConversionError(f"{src} does not fit arch '{arch}' "
                              f"(num_classes={num_classes or spec.num_classes}): " + ", ".join(parts))
    return traverse_util.unflatten_dict(converted)


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _flax_to_torch_key(flat: tuple[str, ...]) -> str:
    collection, *mods, leaf = flat
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
            "var": "running_var"}.get(leaf, leaf)
    parts = []
    for m in mods:
        head, _, tail = m.rpartition("_")
        parts.extend([head, tail] if head and tail.isdigit() else [m])
    return ".".join([*parts, leaf])


def _short(keys: list[str], n: int = 8) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"


def load_torch_checkpoint(src: str | Path) -> Any:
    """torch.load with weights_only=True (never runs pickled code); one-line errors."""
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"{src}: no such file; expected a PyTorch checkpoint (.th/.pt/.pth)")
    try:
        import torch
    except ImportError:
        raise ConversionError("reading PyTorch checkpoints needs torch: "
                              "pip install torch==2.13.0 (see README, optional extras)") from None
    try:
        with warnings.catch_warnings():  # e.g. its pickle-protocol warning: errors say enough
            warnings.simplefilter("ignore")
            return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - damaged files raise IndexError, KeyError, ... too
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        plain = _plain_pickle_global(src)
        found = _pickled_global(text) or plain
        if found:
            raise ConversionError(
                f"{src}: refused for safety: the file holds pickled Python objects ({found}), "
                "not only tensors and plain containers, and loading them could run code; "
                "only a saved state_dict is accepted (torch.save(model.state_dict(), PATH))"
            ) from None
        if plain == "":
            raise ConversionError(f"{src}: a plain Python pickle, not a torch.save checkpoint; "
                                  "expected a state_dict saved with torch.save") from None
        raise ConversionError(f"{src}: not a readable PyTorch weights file "
                              f"(truncated, corrupt or not a state_dict): "
                              f"{_load_failure_reason(text, e)[:200]}") from None


def _pickled_global(text: str) -> str | None:
    """The class/function name torch's weights-only loader refused, if that is the error."""
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    return m.group(1) if m else None


_OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
_TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # first pickle of a pre-zip torch.save file


def _plain_pickle_global(src: Path) -> str | None:
    """For a non-torch file that is one whole pickle: the first Python object it pickles
    (e.g. 'posix.system'), or "" when it holds plain containers only; None when it is no
    pickle or a torch.save file. Only parses opcodes: never imports or runs anything."""
    try:
        if zipfile.is_zipfile(src):
            return None
        with open(src, "rb") as f:
            first, strings, legacy_torch = "", [], False
            for op, arg, _ in pickletools.genops(f):
                legacy_torch = legacy_torch or (isinstance(arg, int) and arg == _TORCH_LEGACY_MAGIC)
                if isinstance(arg, str):
                    strings = [*strings[-1:], arg]  # STACK_GLOBAL's module and name
                if op.name in _OBJECT_OPCODES and not first:
                    first = (arg.replace(" ", ".") if op.name in ("GLOBAL", "INST")
                             else ".".join(strings[-2:]) if op.name == "STACK_GLOBAL" else op.name)
                if op.name == "STOP":
                    break
            else:
                return None
    except Exception:  # noqa: BLE001 - not a pickle: genops fails on unknown opcodes
        return None
    return None if legacy_torch else first


def _load_failure_reason(text: str, e: Exception) -> str:
    """One clean line from torch.load's error, without its 'weights_only=False' advice."""
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not re.search(r"weights_only|Re-running|file an issue|documentation", ln)]
    return lines[0] if lines else type(e).__name__


def convert_checkpoint(src: str | Path, arch: str, num_classes: int | None = None) -> dict:
    return convert_state_dict(load_torch_checkpoint(src), arch, num_classes, src=str(src))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help=f"one of {registry.list_models()}")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--src", required=True, help="PyTorch checkpoint (state_dict, possibly wrapped)")
    p.add_argument("--out", required=True, help="new directory for the Flax classifier")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="input normalization mean")
    p.add_argument("--std", type=float, nargs=3, default=None, help="input normalization std")
    args = p.parse_args(argv)
    try:
        check_num_classes(args.num_classes, "--num-classes")
        variables = convert_checkpoint(args.src, args.arch, args.num_classes)
        meta = clf_io.meta_for(args.arch, args.num_classes, args.mean, args.std,
                               source=str(Path(args.src).resolve()))
        out = clf_io.save_classifier(args.out, variables, meta)
    except (InputError, registry.UnknownModelError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    n = sum(np.size(v) for v in jax.tree.leaves(variables))
    print(f"converted {args.src} -> {out} (arch={args.arch}, num_classes={meta.num_classes}, "
          f"{n} values)")


if __name__ == "__main__":
    main()
