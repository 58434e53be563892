"""Evaluation/training datasets held in memory as numpy, from one spec string.

The datasets of this project (CIFAR, digits, small image folders, eval splits) fit in
memory, so a loader returns uint8 NHWC images + int32 labels and the jitted steps see
fixed-shape batches from `padded_batches`. Spec forms accepted by `load_dataset`:

  cifar10:PATH      python-batches directory (data_batch_1..5 / test_batch, batches.meta)
  cifar100:PATH     python-batches directory (train / test, meta; fine labels)
  npz:PATH          a .npz with x (uint8 NHWC) and y (also images/labels); a directory
                    holding <split>.npz; a single file is that data whatever the split
  folder:PATH       PATH[/<split>]/<class>/<image>.png|jpg..., classes sorted by name
  tfds:NAME[@DIR]   a TFDS dataset already prepared in DIR (default: TFDS_DATA_DIR or
                    ~/tensorflow_datasets); never downloads. NAME may carry tfds'
                    '/config' and ':version'; the split may use tfds slicing ('test[:1000]')
  digits            scikit-learn's bundled 8x8 digits, (N, 8, 8, 1), stratified 75/25
                    train/test split with a fixed seed

TFDS without TensorFlow: datasets prepared with file_format='array_record' are read
through `builder.as_data_source` (numpy only); tfrecord-prepared datasets need
`tensorflow` installed (we fall back to `as_dataset` then, with a clear error otherwise).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np
from nayer_jax.errors import InputError

CIFAR_ROW = 32 * 32 * 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DIGITS_TEST_FRACTION = 0.25
DIGITS_SEED = 0
_PREFIXES = ("cifar10", "cifar100", "npz", "folder", "tfds", "digits")


class DatasetError(InputError):
    """A dataset spec, path or file does not hold what the loader expects (one line)."""


class _FieldError(DatasetError):
    """A `Dataset` field is inconsistent; `load_dataset` prefixes the spec."""


@dataclasses.dataclass
class Dataset:
    """Images uint8 (N, H, W, C) NHWC, labels int32 (N,), class count and optional names."""
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise _FieldError(f"images: expected uint8 (N, H, W, C), got {self.images.dtype} "
                               f"{self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise _FieldError(f"labels: expected shape ({self.images.shape[0]},) to match the "
                               f"images, got {self.labels.shape}")
        self.labels = self.labels.astype(np.int32, copy=False)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise _FieldError(f"labels: expected values in [0, {self.num_classes}), got range "
                               f"[{self.labels.min()}, {self.labels.max()}]")

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ----------------------------------------------------------------------------- dispatch

def load_dataset(spec: str, split: str = "test") -> Dataset:
    """Load the `split` of the dataset named by `spec` (see the module docstring)."""
    try:
        return _dispatch(spec, split)
    except _FieldError as e:  # a Dataset invariant broke: say which spec it came from
        raise DatasetError(f"{spec}: {e}") from None


def _dispatch(spec: str, split: str) -> Dataset:
    prefix, _, arg = spec.partition(":")
    if prefix == "digits" and not arg:
        return _load_digits(split)
    if prefix not in _PREFIXES or prefix == "digits" or not arg:
        raise DatasetError(f"dataset spec '{spec}': expected one of cifar10:PATH, cifar100:PATH, "
                           "npz:PATH, folder:PATH, tfds:NAME[@DATA_DIR], digits")
    if prefix == "tfds":
        name, _, data_dir = arg.partition("@")
        return _load_tfds(name, split, data_dir or None)
    path = Path(arg).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory (dataset spec '{spec}')")
    if prefix == "cifar10":
        return _load_cifar(path, split, cifar100=False)
    if prefix == "cifar100":
        return _load_cifar(path, split, cifar100=True)
    if prefix == "npz":
        return _load_npz(path, split)
    return _load_folder(path, split)


def _check_split(split: str, allowed: tuple[str, ...], where: str) -> None:
    if split not in allowed:
        raise DatasetError(f"{where}: unknown split '{split}'; expected one of {list(allowed)}")


# ----------------------------------------------------------------------------- CIFAR

def _os_reason(e: OSError) -> str:
    """'permission denied' / 'is a directory' ...: the OS's reason without the path."""
    return e.strerror.lower() if e.strerror else type(e).__name__


def _read_pickle(path: Path) -> dict:
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory; expected a CIFAR python-batch pickle file")
    if not path.is_file():
        raise DatasetError(f"{path}: missing; expected a CIFAR python-batch pickle")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({_os_reason(e)}); expected a readable "
                           "CIFAR python-batch file") from None
    except Exception as e:  # UnpicklingError, EOFError, ... on a non-pickle file
        raise DatasetError(f"{path}: not a pickle ({type(e).__name__}); expected a CIFAR "
                           "python-batch file") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: holds a {type(obj).__name__}; expected a CIFAR batch dict")
    return obj


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One python batch -> (uint8 NHWC, int32 labels); channel-major rows of 3072."""
    batch = _read_pickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            raise DatasetError(f"{path}: key {key!r} missing; expected a CIFAR batch with "
                               f"b'data' and {label_key!r} (has {sorted(batch)[:6]})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != CIFAR_ROW:
        raise DatasetError(f"{path}: b'data' has shape {data.shape}; expected (N, {CIFAR_ROW}) "
                           "rows of 3x32x32 channel-major pixels")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {label_key!r} has {labels.size} entries; expected "
                           f"{data.shape[0]} (one per row of b'data')")
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _load_cifar(root: Path, split: str, cifar100: bool) -> Dataset:
    kind = "cifar100" if cifar100 else "cifar10"
    _check_split(split, ("train", "test"), f"{kind}:{root}")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory; expected the {kind} python-batches folder")
    if cifar100:
        files, label_key = [root / split], b"fine_labels"
        meta_file, names_key, num_classes = root / "meta", b"fine_label_names", 100
    else:
        files = ([root / f"data_batch_{i}" for i in range(1, 6)] if split == "train"
                 else [root / "test_batch"])
        label_key = b"labels"
        meta_file, names_key, num_classes = root / "batches.meta", b"label_names", 10
    parts = [_read_cifar_batch(f, label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    class_names = None
    if meta_file.exists():
        meta = _read_pickle(meta_file)
        if names_key not in meta:
            raise DatasetError(f"{meta_file}: key {names_key!r} missing; expected the class names")
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
        if len(class_names) != num_classes:
            raise DatasetError(f"{meta_file}: {len(class_names)} class names; expected {num_classes}")
    return Dataset(images, labels, num_classes, class_names)


# ----------------------------------------------------------------------------- npz

def _load_npz(path: Path, split: str) -> Dataset:
    if path.is_dir():
        file = path / f"{split}.npz"
        if not file.is_file():
            have = sorted(p.stem for p in path.glob("*.npz"))
            if not have:
                raise DatasetError(f"{path}: holds no .npz files; expected {file.name} (or "
                                   "npz:FILE for a single file)")
            raise DatasetError(f"{path}: unknown split '{split}' (no {file.name}); expected one "
                               f"of {have}")
        path = file
    if path.is_file() and path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (0 bytes); expected a .npz with arrays x "
                           "(uint8 NHWC) and y")
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({_os_reason(e)}); expected a readable "
                           ".npz") from None
    except Exception as e:
        raise DatasetError(f"{path}: not a readable .npz ({type(e).__name__}); expected arrays "
                           "x (uint8 NHWC) and y") from None
    if not keys:
        raise DatasetError(f"{path}: holds no arrays; expected 'x' (uint8 NHWC) and 'y'")
    pair = next(((a, b) for a, b in (("x", "y"), ("images", "labels")) if {a, b} <= keys), None)
    if pair is None:
        raise DatasetError(f"{path}: has arrays {sorted(keys)}; expected 'x' and 'y' "
                           "(or 'images' and 'labels')")
    images, labels = _npz_array(arrays, pair[0], path), _npz_array(arrays, pair[1], path)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DatasetError(f"{path}: '{pair[0]}' is {images.dtype} {images.shape}; expected "
                           "uint8 (N, H, W, C)")
    if len(images) == 0:
        raise DatasetError(f"{path}: '{pair[0]}' holds 0 images; expected at least one")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: '{pair[1]}' is {labels.dtype} {labels.shape}; expected "
                           "integer labels of shape (N,)")
    class_names = ([str(n) for n in _npz_array(arrays, "class_names", path)]
                   if "class_names" in keys else None)
    if class_names is not None:
        num_classes = len(class_names)
    elif "num_classes" in keys:
        num_classes = int(_npz_array(arrays, "num_classes", path))
    else:  # inferred: a subset that lacks the top classes would undercount
        num_classes = int(labels.max()) + 1 if labels.size else 0
    return Dataset(images, labels.astype(np.int32), num_classes, class_names)


def _npz_array(arrays, key: str, path: Path) -> np.ndarray:
    """One member of an open .npz; object arrays (pickles) and damaged members: one line."""
    try:
        return arrays[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DatasetError(f"{path}: array '{key}' is an object array (pickled Python "
                               "objects, refused for safety); expected a plain numeric "
                               "array") from None
        raise DatasetError(f"{path}: array '{key}' is not readable ({e})") from None
    except Exception as e:  # a truncated or damaged member
        raise DatasetError(f"{path}: array '{key}' is not readable ({type(e).__name__})") from None


# ----------------------------------------------------------------------------- folder

_SPLIT_NAMES = ("train", "test", "val", "validation")


def _load_folder(root: Path, split: str) -> Dataset:
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory; expected PATH/<class>/<image> folders")
    try:
        return _read_folder(root, split)
    except OSError as e:
        where = e.filename or root
        raise DatasetError(f"{where}: cannot be read ({_os_reason(e)}); expected a readable "
                           "image folder") from None


def _read_folder(root: Path, split: str) -> Dataset:
    from PIL import Image

    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if (root / split).is_dir():
        root = root / split
    elif subdirs and all(p.name in _SPLIT_NAMES for p in subdirs):
        raise DatasetError(f"{root}: unknown split '{split}'; expected one of "
                           f"{[p.name for p in subdirs]}")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"{root}: no images found; expected <class>/<image>"
                           f"{'|'.join(IMAGE_SUFFIXES)} below it")
    pil = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                pil.append(im.copy())
        except Exception as e:  # OSError (permissions), PIL's UnidentifiedImageError, ...
            reason = _os_reason(e) if isinstance(e, OSError) else type(e).__name__
            raise DatasetError(f"{f}: not a readable image ({reason})") from None
    gray = all(im.mode in ("L", "1") for im in pil)
    arrays = [np.asarray(im.convert("L" if gray else "RGB")) for im in pil]
    shape = arrays[0].shape
    for f, a in zip(files, arrays):
        if a.shape != shape:
            raise DatasetError(f"{f}: image of size {a.shape[1]}x{a.shape[0]}; expected "
                               f"{shape[1]}x{shape[0]} like {files[0].name} (one size per dataset)")
    images = np.stack(arrays)
    if gray:
        images = images[..., None]
    return Dataset(images, np.asarray(labels, np.int32), len(class_dirs),
                   [d.name for d in class_dirs])


# ----------------------------------------------------------------------------- digits

def _load_digits(split: str) -> Dataset:
    """scikit-learn's 1797 8x8 digits (0..16 -> 0..255), deterministic stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split, ("train", "test"), "digits")
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    idx_train, idx_test = train_test_split(np.arange(len(d.target)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=d.target, random_state=DIGITS_SEED)
    idx = np.sort(idx_train if split == "train" else idx_test)
    return Dataset(images[idx], d.target[idx].astype(np.int32), 10,
                   [str(n) for n in d.target_names])


# ----------------------------------------------------------------------------- TFDS

def _load_tfds(name: str, split: str, data_dir: str | None) -> Dataset:
    """A prepared TFDS split (never downloaded), read without TensorFlow when possible."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetError(f"tfds:{name}: tensorflow-datasets is not installed; "
                           "pip install 'nayer-jax[tfds]'") from None

    where = f"tfds:{name}" + (f"@{data_dir}" if data_dir else "")
    if not name:
        raise DatasetError(f"dataset spec '{where}': expected tfds:NAME[@DATA_DIR]")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DatasetError(f"{data_dir}: no such directory (TFDS data_dir of '{where}')")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DatasetError(f"{where}: no TFDS dataset found ({first})") from None
    if not builder.is_prepared():
        raise DatasetError(f"{where}: not prepared in {builder.data_dir}; prepare it first "
                           "(download_and_prepare), this loader never downloads")
    base_split = split.split("[")[0]
    if base_split not in builder.info.splits:
        raise DatasetError(f"{where}: unknown split '{split}'; expected one of "
                           f"{sorted(builder.info.splits)}")
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    features = builder.info.features
    if image_key not in features or label_key not in features:
        raise DatasetError(f"{where}: features {sorted(features)}; expected an image feature "
                           f"'{image_key}' and a label '{label_key}'")
    label_feature = features[label_key]
    class_names = list(getattr(label_feature, "names", None) or []) or None
    num_classes = int(getattr(label_feature, "num_classes", 0) or 0)

    try:
        source = builder.as_data_source(split=split)
        images, labels = _read_source(source, image_key, label_key, where)
    except NotImplementedError:  # tfrecord: random access unsupported, needs tf.data
        try:
            arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        except ImportError:
            raise DatasetError(f"{where}: prepared as {builder.info.file_format}, which needs "
                               "tensorflow to read; install tensorflow-cpu or prepare it with "
                               "file_format='array_record'") from None
        images, labels = np.asarray(arrays[image_key]), np.asarray(arrays[label_key])
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise DatasetError(f"{where}: image feature '{image_key}' is {images.dtype}; expected uint8")
    if not num_classes:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    return Dataset(images, labels.astype(np.int32), num_classes, class_names)


def _read_source(source, image_key: str, label_key: str, where: str,
                 chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """All records of a random-access source, read in chunks, stacked."""
    n = len(source)
    images, labels = [], []
    for start in range(0, n, chunk):
        keys = list(range(start, min(start + chunk, n)))
        records = source.__getitems__(keys) if hasattr(source, "__getitems__") else [source[k] for k in keys]
        for r in records:
            images.append(np.asarray(r[image_key]))
            labels.append(int(r[label_key]))
    if not images:
        raise DatasetError(f"{where}: the split is empty; expected at least one example")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DatasetError(f"{where}: images of {len(shapes)} different shapes (e.g. "
                           f"{sorted(shapes)[:2]}); expected one size (resize it when preparing)")
    return np.stack(images), np.asarray(labels, np.int64)


# ----------------------------------------------------------------------------- batching

def padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (x, y, mask) batches of exactly `batch_size` rows, in order.

    The last batch is zero-padded and `mask` (bool) marks its real rows, so a jitted step
    sees one static shape and never recompiles for the remainder.
    """
    if batch_size <= 0:
        raise DatasetError(f"batch_size: expected a positive integer, got {batch_size}")
    n = len(images)
    if len(labels) != n:
        raise DatasetError(f"labels: {len(labels)} entries; expected {n} (one per image)")
    for start in range(0, n, batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        real = len(x)
        mask = np.zeros(batch_size, bool)
        mask[:real] = True
        if real < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - real, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - real, y.dtype)])
        yield x, y, mask
