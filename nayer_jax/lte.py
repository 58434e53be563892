"""Label-text embeddings (LTE): one text-encoder vector per class, the input of NAYER's generator.

NAYER conditions its generator on the embedding of the prompt "a image of {class}" for
every class (CLIP ViT-B/32 text tower in the paper). This module

* computes such tables with a local Hugging Face model directory (`compute_embeddings`):
  a CLIP text tower (`kind="clip"`: `CLIPTextModelWithProjection.text_embeds`) or a
  sentence encoder (`kind="sentence"`: token states mean-pooled over the attention mask,
  as sentence-transformers does);
* stores them as `.npy` + a JSON sidecar that says how they were made (`save_embeddings`,
  `load_embeddings`);
* reads the precomputed CLIP tables of the shared material (`load_shared_table`) and the
  tables shipped with the package (`nayer_jax/assets/`);
* resolves the one string a config holds (`resolve_lte`): "shared:cifar10",
  "asset:digits_minilm" or a path to a `.npy`.

Only computing needs torch + transformers (optional extras, imported lazily); loading
tables needs numpy alone, so training runs never import torch. Models are always read
from a local directory (`local_files_only=True`): nothing is fetched from a hub.

CLI::

    python -m nayer_jax.lte --model-dir DIR --kind clip|sentence \\
        --labels FILE_OR_COMMA_LIST --prompt "a image of {}" --out PATH.npy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from nayer_jax.paths import shared_path
from nayer_jax.errors import InputError

KINDS = ("clip", "sentence")
DEFAULT_PROMPT = "a image of {}"
SHARED_TABLES = ("cifar10", "cifar100", "tiny_imagenet", "imagenet")
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SIDECAR_FORMAT = "nayer_jax.lte/1"
# Keys a sidecar must carry so a table says how it was made (dim/num_classes are filled in).
REQUIRED_META = ("model", "kind", "prompt", "labels", "normalization")


class LTEError(InputError):
    """Bad label-text-embedding input or file; the message is one line naming the culprit."""


# ----------------------------------------------------------------------------- prompts


def clean_label(label: str) -> str:
    """Label as it goes into the prompt: underscores and hyphens become spaces (as in the
    shared CLIP tables: "aquarium_fish" -> "aquarium fish"), whitespace collapsed."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


def format_prompts(labels: Sequence[str], prompt: str = DEFAULT_PROMPT) -> list[str]:
    """The text encoded for each label: `prompt` with its single "{}" replaced by the
    cleaned label. Raises LTEError on empty labels or a prompt without exactly one "{}"."""
    if isinstance(labels, str):
        raise LTEError(f"labels must be a list of class names, got the string {labels!r} "
                       "(use parse_labels for a comma list or a file)")
    labels = list(labels)
    if not labels:
        raise LTEError("labels is empty: give at least one class name")
    if prompt.count("{}") != 1:
        raise LTEError(f"prompt must contain exactly one '{{}}' for the label, got {prompt!r}")
    texts = []
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not clean_label(label):
            raise LTEError(f"label {i} is empty or not a string: {label!r}")
        texts.append(prompt.replace("{}", clean_label(label)))
    return texts


def parse_labels(spec: str) -> list[str]:
    """Labels from a file (one per line, blank lines skipped) if `spec` names an existing
    file, else from a comma-separated list ("cat,dog,truck")."""
    path = Path(spec).expanduser()
    if path.is_file():
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not labels:
            raise LTEError(f"{path}: labels file holds no labels")
        return labels
    labels = [s.strip() for s in spec.split(",") if s.strip()]
    if not labels:
        raise LTEError(f"no labels in {spec!r}: give a file (one per line) or a comma list")
    return labels


# ----------------------------------------------------------------------------- compute


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise LTEError(f"computing label-text embeddings needs torch and transformers ({e.name} "
                       "is missing): pip install -r requirements-torch.txt") from None
    return torch, transformers


def _check_model_dir(model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise LTEError(f"model dir not found: {path} (give a local Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise LTEError(f"{path}: no config.json; not a Hugging Face model folder")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LTEError(f"{path}: unreadable JSON ({type(e).__name__}: {e})") from None


def _st_modules(model_dir: Path) -> list[dict]:
    """The sentence-transformers module list of a model folder ([] if it has none)."""
    f = model_dir / "modules.json"
    return _read_json(f) if f.is_file() else []


def resolve_normalize(kind: str, model_dir: str | os.PathLike,
                      normalize: bool | None = None) -> bool:
    """Whether rows get L2-normalized. An explicit True/False wins. The default (None)
    reproduces what the model itself defines as its embedding:

    * clip: raw `text_embeds`, not normalized (the shared paper tables are unnormalized,
      row norms about 6-14);
    * sentence: normalized iff the folder's sentence-transformers `modules.json` lists a
      `Normalize` module (all-MiniLM-L6-v2 does, so its default is L2-normalized).
    """
    if kind not in KINDS:
        raise LTEError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    if normalize is not None:
        return bool(normalize)
    if kind == "clip":
        return False
    return any(str(m.get("type", "")).endswith("Normalize")
               for m in _st_modules(_check_model_dir(model_dir)))


def _check_mean_pooling(model_dir: Path) -> None:
    """Refuse sentence encoders whose sentence-transformers pooling is not a plain mean."""
    for m in _st_modules(model_dir):
        if str(m.get("type", "")).endswith("Pooling"):
            cfg_file = model_dir / m.get("path", "") / "config.json"
            if not cfg_file.is_file():
                continue
            cfg = _read_json(cfg_file)
            modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
            if modes and modes != ["pooling_mode_mean_tokens"]:
                raise LTEError(f"{cfg_file}: pools by {', '.join(modes)}; only mean pooling "
                               "(pooling_mode_mean_tokens) is implemented")


def compute_embeddings(labels: Sequence[str], model_dir: str | os.PathLike,
                       kind: str = "clip", prompt: str = DEFAULT_PROMPT,
                       batch_size: int = 64, normalize: bool | None = None,
                       device: str = "cpu") -> np.ndarray:
    """Embed `prompt` filled with each label: float32 array (len(labels), dim).

    kind="clip": `CLIPTextModelWithProjection(...).text_embeds` (the projected EOS state,
    what `CLIPModel.get_text_features` returns); a full CLIP checkpoint folder works too,
    its vision weights are ignored. kind="sentence": `AutoModel` last hidden states
    mean-pooled over the attention mask (sentence-transformers' mean pooling, truncation
    at its `max_seq_length` when the folder says so). `normalize`: see `resolve_normalize`
    (default: CLIP raw, sentence encoders as their sentence-transformers config says).

    The model is loaded from the local folder only, in float32 eval mode, so two calls give
    identical rows; batching does not change the result (padding is masked out).
    """
    texts = format_prompts(labels, prompt)
    if kind not in KINDS:
        raise LTEError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LTEError(f"batch_size must be a positive int, got {batch_size!r}")
    path = _check_model_dir(model_dir)
    do_norm = resolve_normalize(kind, path, normalize)
    if kind == "sentence":
        _check_mean_pooling(path)
    torch, transformers = _import_torch_transformers()

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if kind == "clip":
            model = transformers.CLIPTextModelWithProjection.from_pretrained(
                str(path), local_files_only=True)
            max_len = model.config.max_position_embeddings
        else:
            model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
            st_cfg = path / "sentence_bert_config.json"
            max_len = (_read_json(st_cfg).get("max_seq_length") if st_cfg.is_file() else None) \
                or min(tokenizer.model_max_length, model.config.max_position_embeddings)
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LTEError(f"{path}: cannot load a {kind} text model + tokenizer: {first[:300]}") \
            from None
    model = model.float().to(device).eval()

    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_len, return_tensors="pt").to(device)
            if kind == "clip":
                emb = model(input_ids=enc["input_ids"],
                            attention_mask=enc["attention_mask"]).text_embeds
            else:
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if do_norm:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            rows.append(emb.float().cpu().numpy())
    return np.ascontiguousarray(np.concatenate(rows, axis=0), dtype=np.float32)


def table_meta(labels: Sequence[str], model_dir: str | os.PathLike, kind: str,
               prompt: str = DEFAULT_PROMPT, normalize: bool | None = None,
               model_name: str | None = None) -> dict[str, Any]:
    """Sidecar description of a table made by `compute_embeddings` with these arguments.
    `model_name` (e.g. the hub id) is recorded instead of the local folder path if given."""
    meta: dict[str, Any] = {
        "model": model_name or str(Path(model_dir).expanduser()),
        "kind": kind,
        "prompt": prompt,
        "labels": list(labels),
        "normalization": "l2" if resolve_normalize(kind, model_dir, normalize) else "none",
    }
    torch, transformers = _import_torch_transformers()
    meta["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    return meta


# ----------------------------------------------------------------------------- files


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a table: same path with .json instead of .npy."""
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through a temporary file beside `path`, then rename: no half-written tables."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_embeddings(path: str | os.PathLike, emb: np.ndarray, meta: dict[str, Any],
                    overwrite: bool = False) -> Path:
    """Write `emb` (float32) to `path` (.npy) and `meta` + dim/num_classes to its .json
    sidecar. `meta` needs model, kind, prompt, labels (one per row) and normalization.
    Refuses to replace an existing .npy or .json unless `overwrite`. Returns the .npy path."""
    path = Path(path).expanduser()
    if path.suffix != ".npy":
        raise LTEError(f"{path}: an LTE table path must end in .npy")
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] == 0 or not np.issubdtype(emb.dtype, np.floating):
        raise LTEError(f"{path}: embeddings must be a non-empty 2-D float array, "
                       f"got shape {emb.shape} dtype {emb.dtype}")
    if not np.all(np.isfinite(emb)):
        raise LTEError(f"{path}: embeddings contain NaN or inf")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise LTEError(f"{path}: meta lacks {', '.join(missing)} (needs {', '.join(REQUIRED_META)})")
    if len(meta["labels"]) != emb.shape[0]:
        raise LTEError(f"{path}: {len(meta['labels'])} labels for {emb.shape[0]} rows")
    side = sidecar_path(path)
    if not overwrite:
        for p in (path, side):
            if p.exists():
                raise LTEError(f"{p} exists; refusing to overwrite (pass overwrite=True / --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": SIDECAR_FORMAT, **meta, "labels": list(meta["labels"]),
            "dim": int(emb.shape[1]), "num_classes": int(emb.shape[0])}
    text = json.dumps(full, indent=1, sort_keys=True) + "\n"
    _atomic_write(path, lambda f: np.save(f, emb.astype(np.float32), allow_pickle=False))
    _atomic_write(side, lambda f: f.write(text.encode()))
    return path


def load_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a table: (float32 (num_classes, dim), sidecar dict or {} when there is none).
    Checks the sidecar agrees with the array (dim, one label per row). Needs numpy only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LTEError(f"LTE table not found: {path}")
    try:
        emb = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LTEError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if emb.ndim != 2 or emb.shape[0] == 0 or not np.issubdtype(emb.dtype, np.floating):
        raise LTEError(f"{path}: expected a non-empty 2-D float array (num_classes, dim), "
                       f"got shape {emb.shape} dtype {emb.dtype}")
    meta: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.is_file():
        meta = _read_json(side)
        if not isinstance(meta, dict):
            raise LTEError(f"{side}: sidecar must be a JSON object")
        if "dim" in meta and meta["dim"] != emb.shape[1]:
            raise LTEError(f"{side}: says dim {meta['dim']} but {path.name} has {emb.shape[1]}")
        if "labels" in meta and len(meta["labels"]) != emb.shape[0]:
            raise LTEError(f"{side}: lists {len(meta['labels'])} labels but {path.name} has "
                           f"{emb.shape[0]} rows")
    return np.ascontiguousarray(emb, dtype=np.float32), meta


def load_shared_table(name: str) -> tuple[np.ndarray, list[str]]:
    """A precomputed CLIP ViT-B/32 table of the shared material: (float32 (C, 512), labels)
    from `lte/{name}_clip_vitb32.npy` and `lte/{name}_labels.txt` (one label per line)."""
    if name not in SHARED_TABLES:
        raise LTEError(f"unknown shared LTE table {name!r}: expected one of {', '.join(SHARED_TABLES)}")
    npy = shared_path(f"lte/{name}_clip_vitb32.npy")  # SharedMissingError names the file
    txt = shared_path(f"lte/{name}_labels.txt")
    emb, _ = load_embeddings(npy)
    labels = [line.strip() for line in txt.read_text().splitlines() if line.strip()]
    if len(labels) != emb.shape[0]:
        raise LTEError(f"{npy} has {emb.shape[0]} rows but {txt} lists {len(labels)} labels")
    return emb, labels


def resolve_lte(spec: str, num_classes: int) -> np.ndarray:
    """The LTE table a config names, checked to have one row per class.

    `spec`: "shared:NAME" (a shared CLIP table, NAME in SHARED_TABLES), "asset:NAME"
    (`nayer_jax/assets/NAME.npy`, shipped with the package, e.g. "asset:digits_minilm"),
    or a path to a .npy (its sidecar is checked when present). Needs numpy only.
    """
    if not isinstance(spec, str) or not spec:
        raise LTEError(f"LTE spec must be 'shared:NAME', 'asset:NAME' or a .npy path, got {spec!r}")
    if spec.startswith("shared:"):
        source = f"shared:{spec[7:]}"
        emb, _ = load_shared_table(spec[7:])
    elif spec.startswith("asset:"):
        source = str(ASSETS_DIR / f"{spec[6:]}.npy")
        emb, _ = load_embeddings(source)
    else:
        source = str(Path(spec).expanduser())
        emb, _ = load_embeddings(source)
    if emb.shape[0] != num_classes:
        raise LTEError(f"{source}: LTE table has {emb.shape[0]} rows but num_classes is {num_classes}")
    if not np.all(np.isfinite(emb)):
        raise LTEError(f"{source}: LTE table contains NaN or inf")
    return emb


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Compute a table with a local model and save it with its sidecar."""
    p = argparse.ArgumentParser(prog="python -m nayer_jax.lte", description=main.__doc__)
    p.add_argument("--model-dir", required=True, help="local Hugging Face model folder")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--labels", required=True,
                   help="file with one label per line, or a comma list 'cat,dog'")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="text with one {} for the label")
    p.add_argument("--out", required=True, help="output .npy (a .json sidecar goes beside it)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalize rows (default: clip no; sentence as modules.json says)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model-name", default=None,
                   help="name recorded in the sidecar instead of the local folder path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        out = Path(args.out).expanduser()
        if not args.overwrite:  # cheap checks first: fail before importing torch
            for f in (out, sidecar_path(out)):
                if f.exists():
                    raise LTEError(f"{f} exists; refusing to overwrite (pass --overwrite)")
        labels = parse_labels(args.labels)
        format_prompts(labels, args.prompt)
        _check_model_dir(args.model_dir)
        try:  # keep the CLI output to its one result line
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        except ImportError:
            pass  # compute_embeddings raises the one-line install hint
        emb = compute_embeddings(labels, args.model_dir, args.kind, args.prompt,
                                 args.batch_size, args.normalize, args.device)
        meta = table_meta(labels, args.model_dir, args.kind, args.prompt, args.normalize,
                          args.model_name)
        save_embeddings(out, emb, meta, overwrite=args.overwrite)
    except (InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} {emb.shape} ({meta['normalization']}) + {sidecar_path(out).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
