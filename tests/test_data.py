"""Dataset loaders on real data: CIFAR-10 batches, npz, image folders, offline TFDS, digits."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nayer_jax.data import Dataset, DatasetError, load_dataset, padded_batches
from tests.conftest import require_shared

CIFAR_BATCHES = "data/cifar10-jpeg/cifar-10-batches-py"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def cifar_spec() -> str:
    return f"cifar10:{require_shared(CIFAR_BATCHES)}"


@pytest.fixture(scope="module")
def cifar10_test() -> Dataset:
    return load_dataset(cifar_spec(), "test")


@pytest.fixture(scope="module")
def real_subset(cifar10_test):
    """100 real CIFAR-10 test images (every class present) and their labels."""
    return cifar10_test.images[:100], cifar10_test.labels[:100]


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray,
                       names: list[str]) -> Path:
    """root/<class name>/<index>.png, lossless, so the pixels must come back exactly."""
    for i, (im, label) in enumerate(zip(images, labels)):
        d = root / names[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).save(d / f"{i:04d}.png")
    return root


def folder_order(labels: np.ndarray, names: list[str]) -> np.ndarray:
    """Index order the folder loader must return: classes by name, then file name."""
    return np.array(sorted(range(len(labels)), key=lambda i: (names[labels[i]], i)))


def write_cifar100_dir(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """CIFAR-100 python-batch layout (train/test/meta, fine labels) holding real pixels.

    No CIFAR-100 is available offline, so this writes real CIFAR-10 pixels with fine
    labels spread over 100 ids: it exercises the file format, not the class semantics.
    """
    root.mkdir(parents=True, exist_ok=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    fine = [int(label) * 10 + i % 10 for i, label in enumerate(labels)]
    for split in ("train", "test"):
        with open(root / split, "wb") as f:
            pickle.dump({b"data": rows, b"fine_labels": fine,
                         b"coarse_labels": [x // 5 for x in fine]}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)]}, f)
    return root


# ----------------------------------------------------------------------------- CIFAR

def test_cifar10_test_split_matches_lossless_order(cifar10_test, lossless_cifar10):
    x, y = lossless_cifar10
    d = cifar10_test
    assert d.images.shape == (10000, 32, 32, 3) and d.images.dtype == np.uint8
    assert d.labels.dtype == np.int32 and d.num_classes == 10
    assert d.class_names == CIFAR10_NAMES
    np.testing.assert_array_equal(np.bincount(d.labels, minlength=10), [1000] * 10)
    np.testing.assert_array_equal(d.labels[:846], y)
    # JPEG-lossy but the same pictures: a wrong channel/axis order would be far off.
    diff = np.abs(d.images[:846].astype(np.int16) - x.astype(np.int16)).mean()
    assert diff < 8.0, diff


def test_cifar10_train_split():
    d = load_dataset(cifar_spec(), "train")
    assert d.images.shape == (50000, 32, 32, 3) and d.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(d.labels, minlength=10), [5000] * 10)


def test_cifar100_layout(tmp_path, real_subset):
    x, y = real_subset
    root = write_cifar100_dir(tmp_path / "c100", x, y)
    d = load_dataset(f"cifar100:{root}", "test")
    assert d.num_classes == 100 and d.class_names[7] == "c07"
    np.testing.assert_array_equal(d.images, x)
    np.testing.assert_array_equal(d.labels, y * 10 + np.arange(100) % 10)


# ----------------------------------------------------------------------------- npz

def test_npz_file_and_split_directory(tmp_path, lossless_cifar10):
    x, y = lossless_cifar10
    d = load_dataset(f"npz:{require_shared('data/cifar10-jpeg/test_lossless_846.npz')}")
    np.testing.assert_array_equal(d.images, x)
    np.testing.assert_array_equal(d.labels, y)
    assert d.labels.dtype == np.int32 and d.num_classes == 10

    split_dir = tmp_path / "npzs"
    split_dir.mkdir()
    np.savez(split_dir / "train.npz", images=x[:500], labels=y[:500])
    np.savez(split_dir / "test.npz", images=x[500:], labels=y[500:],
             class_names=np.array(CIFAR10_NAMES))
    train = load_dataset(f"npz:{split_dir}", "train")
    test = load_dataset(f"npz:{split_dir}", "test")
    np.testing.assert_array_equal(train.images, x[:500])
    np.testing.assert_array_equal(test.labels, y[500:])
    assert test.class_names == CIFAR10_NAMES


# ----------------------------------------------------------------------------- folder

def test_folder_with_split_subfolder(tmp_path, real_subset):
    x, y = real_subset
    write_image_folder(tmp_path / "tree" / "test", x, y, CIFAR10_NAMES)
    d = load_dataset(f"folder:{tmp_path / 'tree'}", "test")
    order = folder_order(y, CIFAR10_NAMES)
    assert d.class_names == sorted(CIFAR10_NAMES) and d.num_classes == 10
    np.testing.assert_array_equal(d.images, x[order])  # PNG is lossless
    np.testing.assert_array_equal(np.array(d.class_names)[d.labels], np.array(CIFAR10_NAMES)[y[order]])


def test_folder_grayscale_without_split(tmp_path):
    digits = load_dataset("digits", "test")
    x, y = digits.images[:60], digits.labels[:60]
    names = [f"digit{i}" for i in range(10)]
    write_image_folder(tmp_path / "gray", x, y, names)
    d = load_dataset(f"folder:{tmp_path / 'gray'}", "anything")  # no split folders: whole tree
    assert d.images.shape == (60, 8, 8, 1)
    np.testing.assert_array_equal(d.images, x[folder_order(y, names)])


# ----------------------------------------------------------------------------- TFDS

@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, real_subset):
    """A TFDS dataset prepared offline (array_record, no TensorFlow) from real PNG files."""
    import tensorflow_datasets as tfds

    x, y = real_subset
    tmp = tmp_path_factory.mktemp("tfds")
    tree = write_image_folder(tmp / "pngs" / "test", x, y, CIFAR10_NAMES).parent

    class CifarPngSubset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Image-folder tree -> TFDS, files in sorted order (shuffling disabled)."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"), disable_shuffling=True,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(names=sorted(CIFAR10_NAMES))}))

        def _split_generators(self, dl_manager):
            return {s.name: self._generate_examples(s) for s in sorted(tree.iterdir())}

        def _generate_examples(self, split_dir):
            for i, f in enumerate(sorted(split_dir.glob("*/*.png"))):
                yield i, {"image": f, "label": f.parent.name}

    data_dir = tmp / "tfds_data"
    CifarPngSubset(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_offline_array_record(tfds_dir, real_subset):
    x, y = real_subset
    order = folder_order(y, CIFAR10_NAMES)
    # The builder class is not registered: tfds reads the prepared files on its own.
    d = load_dataset(f"tfds:cifar_png_subset@{tfds_dir}", "test")
    assert d.images.shape == (100, 32, 32, 3) and d.images.dtype == np.uint8
    assert d.num_classes == 10 and d.class_names == sorted(CIFAR10_NAMES)
    np.testing.assert_array_equal(d.images, x[order])
    np.testing.assert_array_equal(np.array(d.class_names)[d.labels], np.array(CIFAR10_NAMES)[y[order]])
    sliced = load_dataset(f"tfds:cifar_png_subset:1.0.0@{tfds_dir}", "test[:10]")
    np.testing.assert_array_equal(sliced.images, x[order[:10]])


# ----------------------------------------------------------------------------- digits

def test_digits_stratified_deterministic_split():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1347, 8, 8, 1) and test.images.shape == (450, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    ref = load_digits()
    both = np.concatenate([train.images, test.images])[..., 0].astype(np.float64)
    # 0..16 scaled to 0..255: every original image appears exactly once across the splits.
    ref_scaled = np.round(ref.images * 255 / 16)
    assert sorted(map(bytes, both.astype(np.uint8))) == sorted(map(bytes, ref_scaled.astype(np.uint8)))
    totals = np.bincount(ref.target, minlength=10)
    np.testing.assert_allclose(np.bincount(test.labels, minlength=10), totals * 0.25, atol=1)
    again = load_dataset("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)


# ----------------------------------------------------------------------------- batching

def test_padded_batches_masks_and_pads(lossless_cifar10):
    x, y = lossless_cifar10[0][:7], lossless_cifar10[1][:7].astype(np.int32)
    batches = list(padded_batches(x, y, 3))
    assert len(batches) == 3
    for bx, by, m in batches:
        assert bx.shape == (3, 32, 32, 3) and bx.dtype == np.uint8
        assert by.shape == (3,) and m.shape == (3,) and m.dtype == np.bool_
    assert [m.tolist() for *_, m in batches] == [[True] * 3, [True] * 3, [True, False, False]]
    real_x = np.concatenate([bx[m] for bx, _, m in batches])
    np.testing.assert_array_equal(real_x, x)
    np.testing.assert_array_equal(np.concatenate([by[m] for _, by, m in batches]), y)
    assert not batches[-1][0][1:].any()
    exact = list(padded_batches(x[:6], y[:6], 3))
    assert len(exact) == 2 and all(m.all() for *_, m in exact)


def test_padded_batches_rejects_bad_batch_size():
    with pytest.raises(DatasetError, match="batch_size"):
        next(padded_batches(np.zeros((2, 1, 1, 1), np.uint8), np.zeros(2), 0))


# ----------------------------------------------------------------------------- bad input

def _write_pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def _bad_cases(tmp: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """name -> (spec, split, substrings the one-line message must contain)."""
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    _write_pickle(tmp / "nodata" / "test_batch", {b"labels": y.tolist()})
    _write_pickle(tmp / "nolabels" / "test_batch", {b"data": rows})
    _write_pickle(tmp / "shortrows" / "test_batch", {b"data": rows[:, :1000], b"labels": y.tolist()})
    _write_pickle(tmp / "fewlabels" / "test_batch", {b"data": rows, b"labels": y[:3].tolist()})
    (tmp / "text").mkdir()
    (tmp / "text" / "test_batch").write_text("not a pickle")
    np.savez(tmp / "noxy.npz", pixels=x, targets=y)
    np.savez(tmp / "float.npz", x=x.astype(np.float32), y=y)
    (tmp / "empty" / "cat").mkdir(parents=True)
    (tmp / "empty" / "cat" / "notes.txt").write_text("no images here")
    (tmp / "splits" / "train" / "cat").mkdir(parents=True)
    (tmp / "splits" / "test" / "cat").mkdir(parents=True)
    return {
        "missing path": (f"cifar10:{tmp / 'nope'}", "test", [str(tmp / "nope"), "no such"]),
        "missing test_batch": (f"cifar10:{tmp / 'empty'}", "test", ["test_batch", "missing"]),
        "no b'data'": (f"cifar10:{tmp / 'nodata'}", "test", ["test_batch", "b'data'"]),
        "no b'labels'": (f"cifar10:{tmp / 'nolabels'}", "test", ["test_batch", "b'labels'"]),
        "wrong row length": (f"cifar10:{tmp / 'shortrows'}", "test", ["test_batch", "3072"]),
        "label count": (f"cifar10:{tmp / 'fewlabels'}", "test", ["test_batch", "b'labels'"]),
        "not a pickle": (f"cifar10:{tmp / 'text'}", "test", ["test_batch", "not a pickle"]),
        "cifar100 files": (f"cifar100:{tmp / 'nodata'}", "test", [str(tmp / "nodata" / "test"), "missing"]),
        "npz without x/y": (f"npz:{tmp / 'noxy.npz'}", "test", ["noxy.npz", "'x'", "pixels"]),
        "npz float images": (f"npz:{tmp / 'float.npz'}", "test", ["float.npz", "uint8"]),
        "unknown prefix": (f"mnist:{tmp}", "test", ["mnist:", "cifar10:PATH"]),
        "prefix without path": ("cifar10", "test", ["'cifar10'", "cifar10:PATH"]),
        "digits with a path": ("digits:/x", "test", ["digits:/x", "digits"]),
        "unknown split cifar": (cifar_spec(), "val", ["'val'", "['train', 'test']"]),
        "unknown split digits": ("digits", "validation", ["'validation'", "['train', 'test']"]),
        "unknown split folder": (f"folder:{tmp / 'splits'}", "val", ["'val'", "train"]),
        "empty folder": (f"folder:{tmp / 'empty'}", "test", [str(tmp / "empty"), "no images"]),
        "tfds missing data_dir": (f"tfds:x@{tmp / 'nope'}", "test", [str(tmp / "nope"), "data_dir"]),
    }


BAD_NAMES = ["missing path", "missing test_batch", "no b'data'", "no b'labels'",
             "wrong row length", "label count", "not a pickle", "cifar100 files",
             "npz without x/y", "npz float images", "unknown prefix", "prefix without path",
             "digits with a path", "unknown split cifar", "unknown split digits",
             "unknown split folder", "empty folder", "tfds missing data_dir"]


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory, real_subset):
    x, y = real_subset
    return _bad_cases(tmp_path_factory.mktemp("bad"), x[:8], y[:8])


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_one_line_error(bad_cases, name):
    spec, split, expected = bad_cases[name]
    with pytest.raises(DatasetError) as info:
        load_dataset(spec, split)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in expected:
        assert part in msg, (part, msg)


def test_bad_tfds_split_and_name(tfds_dir):
    with pytest.raises(DatasetError, match=r"unknown split 'train'.*\['test'\]"):
        load_dataset(f"tfds:cifar_png_subset@{tfds_dir}", "train")
    with pytest.raises(DatasetError, match="no_such_dataset_xyz") as info:
        load_dataset(f"tfds:no_such_dataset_xyz@{tfds_dir}", "test")
    assert "\n" not in str(info.value)


def test_label_out_of_range_names_the_spec(tmp_path, lossless_cifar10):
    x, y = lossless_cifar10
    np.savez(tmp_path / "bad.npz", x=x[:4], y=y[:4], num_classes=2)
    with pytest.raises(DatasetError, match=r"bad\.npz.*labels: expected values in \[0, 2\)"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
