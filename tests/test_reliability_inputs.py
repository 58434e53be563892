"""Bad inputs give one clear line (an InputError naming the file/field and what was expected),
and nothing saved is overwritten or lost. Real shared teachers and CIFAR-10 images throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from nayer_jax import classifier as clf_io
from nayer_jax import convert, data, evaluate, losses, teacher_source, train_teacher
from nayer_jax.errors import InputError, NonFiniteError
from tests.conftest import require_shared

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 16


def teacher_file(arch: str = "resnet20") -> Path:
    return require_shared(f"teachers/cifar10_{arch}.th")


def one_line(err: BaseException) -> str:
    """The message of an InputError, checked to be one clean line."""
    msg = str(err)
    assert isinstance(err, (InputError, NonFiniteError)), type(err)
    assert "\n" not in msg and "\x1b" not in msg, f"not one line: {msg!r}"
    return msg


def cli(module: str, *args: str) -> str:
    """Run `python -m nayer_jax.<module>`; assert a non-zero exit with one 'error:' line."""
    proc = subprocess.run([sys.executable, "-m", f"nayer_jax.{module}", *args], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def tree_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(directory)).encode() + p.read_bytes())
    return h.hexdigest()


def real_state_dict() -> dict:
    return torch.load(teacher_file(), map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def few_images(lossless_cifar10):
    x, y = lossless_cifar10
    return x[:N_IMAGES], np.asarray(y[:N_IMAGES])


@pytest.fixture(scope="module")
def teacher(converted_teacher):
    return clf_io.load_classifier(converted_teacher("resnet20"))


# --- 1. convert ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_convert_refuses_non_finite_weights_naming_the_tensor(tmp_path, bad):
    sd = real_state_dict()
    sd["module.layer2.1.conv1.weight"] = sd["module.layer2.1.conv1.weight"].clone()
    sd["module.layer2.1.conv1.weight"][0, 0, 0, 0] = float(bad)
    src = tmp_path / "diverged.th"
    torch.save({"state_dict": sd}, src)
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_checkpoint(src, "resnet20")
    msg = one_line(info.value)
    assert str(src) in msg and "'module.layer2.1.conv1.weight'" in msg and "NaN/inf" in msg, msg
    out = tmp_path / "out"
    line = cli("convert", "--arch", "resnet20", "--src", str(src), "--out", str(out))
    assert "'module.layer2.1.conv1.weight'" in line and "NaN/inf" in line
    assert not out.exists()


@pytest.mark.parametrize("n", ["0", "-3"])
def test_convert_refuses_non_positive_num_classes(tmp_path, n):
    out = tmp_path / "out"
    line = cli("convert", "--arch", "resnet20", "--num-classes", n, "--src",
               str(teacher_file()), "--out", str(out))
    assert f"--num-classes {n}" in line and "positive" in line, line
    assert not out.exists()
    with pytest.raises(convert.ConversionError, match="positive") as info:
        convert.convert_checkpoint(teacher_file(), "resnet20", int(n))
    one_line(info.value)


class _RunsCode:
    """Unpickling this calls os.system: the converter must refuse, never execute it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["torch_save", "plain_pickle"])
def test_pickled_python_objects_are_refused_for_safety_not_called_corrupt(tmp_path, kind):
    marker = tmp_path / "EXECUTED"
    src = tmp_path / "evil.th"
    payload = {"state_dict": real_state_dict(), "hook": _RunsCode(marker)}
    if kind == "torch_save":
        torch.save(payload, src)
    else:
        with open(src, "wb") as f:
            pickle.dump(payload, f, protocol=4)
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_checkpoint(src, "resnet20")
    msg = one_line(info.value)
    assert str(src) in msg and "pickled Python objects" in msg and "refused for safety" in msg
    for word in ("corrupt", "Re-running", "weights_only"):
        assert word not in msg, msg
    line = cli("convert", "--arch", "resnet20", "--src", str(src), "--out", str(tmp_path / "o"))
    assert "pickled Python objects" in line and "corrupt" not in line and "Re-running" not in line
    assert not marker.exists(), "loading the checkpoint ran pickled code"
    assert not (tmp_path / "o").exists()


# --- 2. evaluate --------------------------------------------------------------------------

def test_evaluate_refuses_float_images_naming_the_expected_dtype(teacher, few_images):
    x, y = few_images
    uint8 = evaluate.evaluate(teacher.apply, x, y, progress=False)  # the contract that works
    assert uint8["top1"] > 0.8
    with pytest.raises(evaluate.EvaluationError) as info:
        evaluate.evaluate(teacher.apply, x.astype(np.float32) / 255.0, y, progress=False)
    msg = one_line(info.value)
    assert "images: float32" in msg and "uint8" in msg and "[0, 255]" in msg, msg


@pytest.mark.parametrize("bad,expected", [(10, ">= 10"), (-1, ">= 0")])
def test_evaluate_refuses_out_of_range_labels(teacher, few_images, bad, expected):
    x, y = few_images
    y = y.copy()
    y[3] = bad
    with pytest.raises(evaluate.EvaluationError) as info:
        evaluate.evaluate(teacher.apply, x, y, batch_size=5, progress=False)
    msg = one_line(info.value)
    assert msg.startswith("labels:") and expected in msg, msg
    with pytest.raises(evaluate.EvaluationError, match=expected):  # the variables form too
        evaluate.evaluate(lambda v, im: teacher.model.apply(v, teacher.normalize(im), train=False),
                          x, y, batch_size=5, progress=False, variables=teacher.variables)


# --- 3. losses ----------------------------------------------------------------------------

def test_kl_divergence_refuses_mismatched_batches_eagerly_and_under_jit(teacher, few_images):
    logits = np.asarray(teacher.apply(jnp.asarray(few_images[0][:4], jnp.float32) / 255.0))
    for fn in (losses.kl_divergence, jax.jit(losses.kl_divergence), jax.grad(losses.kl_divergence)):
        with pytest.raises(losses.LossInputError) as info:
            fn(logits, logits[:1])
        msg = one_line(info.value)
        assert "(4, 10)" in msg and "(1, 10)" in msg and "kl_divergence" in msg, msg


@pytest.mark.parametrize("temperature", [0.0, -2.0, 0, np.float32(-1.0), float("nan")])
def test_kl_divergence_refuses_non_positive_temperature(temperature):
    z = jnp.ones((4, 10))
    with pytest.raises(losses.LossInputError, match="temperature") as info:
        losses.kl_divergence(z, z, temperature)
    assert "positive" in one_line(info.value)


def test_kl_divergence_still_jit_and_grad_safe_with_traced_temperature(teacher, few_images):
    s = np.asarray(teacher.apply(jnp.asarray(few_images[0][:4], jnp.float32) / 255.0))
    t = s[::-1].copy()
    eager = losses.kl_divergence(s, t, 4.0)
    jitted = jax.jit(losses.kl_divergence)(s, t, jnp.float32(4.0))  # traced T: not checked
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    g = jax.grad(losses.kl_divergence)(jnp.asarray(s), jnp.asarray(t), 4.0)
    assert g.shape == s.shape and bool(jnp.all(jnp.isfinite(g)))


# --- 4. classifier ------------------------------------------------------------------------

@pytest.fixture
def saved_teacher(converted_teacher, tmp_path):
    """A private copy of the converted resnet20 teacher (tests edit it)."""
    out = tmp_path / "clf"
    shutil.copytree(converted_teacher("resnet20"), out)
    return out


def _edit_meta(directory: Path, **changes) -> None:
    path = directory / clf_io.META_FILE
    meta = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    path.write_text(json.dumps(meta))


def test_load_checks_shapes_against_num_classes(saved_teacher):
    _edit_meta(saved_teacher, num_classes=100)
    with pytest.raises(clf_io.ClassifierFileError) as info:
        clf_io.load_classifier(saved_teacher)
    msg = one_line(info.value)
    assert str(saved_teacher / clf_io.META_FILE) in msg and "num_classes=100" in msg
    assert "params/linear/bias has shape (10,)" in msg and "implies (100,)" in msg, msg


def test_saved_hash_detects_bit_flipped_weights(saved_teacher, few_images):
    meta = json.loads((saved_teacher / clf_io.META_FILE).read_text())
    assert len(meta[clf_io.HASH_FIELD]) == 64
    clf = clf_io.load_classifier(saved_teacher)  # verifies
    # one bit of one weight flipped, the rest of the directory untouched
    flipped = jax.tree.map(np.array, clf.variables)
    k = flipped["params"]["conv1"]["kernel"]
    k.view(np.uint32).flat[5] ^= 1 << 3
    shutil.rmtree(saved_teacher / clf_io.VARIABLES_DIR)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(saved_teacher / clf_io.VARIABLES_DIR, flipped)
    ckptr.wait_until_finished()
    with pytest.raises(clf_io.ClassifierFileError) as info:
        clf_io.load_classifier(saved_teacher)
    msg = one_line(info.value)
    assert str(saved_teacher / clf_io.VARIABLES_DIR) in msg and "does not match" in msg, msg


def test_flipped_bytes_on_disk_fail_on_load(saved_teacher):
    blobs = sorted((p for p in (saved_teacher / clf_io.VARIABLES_DIR).rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    raw = bytearray(blobs[-1].read_bytes())
    raw[len(raw) // 2] ^= 0x10
    blobs[-1].write_bytes(bytes(raw))
    with pytest.raises(clf_io.ClassifierFileError) as info:
        clf_io.load_classifier(saved_teacher)
    assert str(saved_teacher / clf_io.VARIABLES_DIR) in one_line(info.value)


def test_classifier_without_hash_still_loads(saved_teacher, teacher, few_images):
    _edit_meta(saved_teacher, **{clf_io.HASH_FIELD: None})
    old = clf_io.load_classifier(saved_teacher)
    x = jnp.asarray(few_images[0], jnp.float32) / 255.0
    np.testing.assert_array_equal(np.asarray(old.apply(x)), np.asarray(teacher.apply(x)))


# --- 5. data ------------------------------------------------------------------------------

def _write_cifar_test_batch(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
                     b"labels": y.tolist()}, f)


def test_unreadable_dataset_directories(tmp_path, few_images):
    x, y = few_images
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    batches = tmp_path / "batches"
    batches.mkdir()
    _write_cifar_test_batch(batches / "data_batch_1", x, y)  # train files incomplete
    nested = tmp_path / "nested"
    (nested / "test_batch").mkdir(parents=True)  # a directory where a file belongs
    cases = [(f"cifar10:{a_file}", "test", [str(a_file), "not a directory"]),
             (f"folder:{a_file}", "test", [str(a_file), "not a directory"]),
             (f"cifar10:{batches}", "train", [str(batches / "data_batch_2"), "missing"]),
             (f"cifar10:{nested}", "test", [str(nested / "test_batch"), "is a directory"]),
             (f"npz:{batches}", "test", [str(batches), "no .npz"])]
    for spec, split, parts in cases:
        with pytest.raises(data.DatasetError) as info:
            data.load_dataset(spec, split)
        msg = one_line(info.value)
        assert all(p in msg for p in parts), (parts, msg)


def test_empty_and_object_array_npz(tmp_path, few_images, converted_teacher):
    x, y = few_images
    zero = tmp_path / "zero.npz"
    zero.write_bytes(b"")
    np.savez(tmp_path / "noarrays.npz")
    np.savez(tmp_path / "noimages.npz", x=x[:0], y=y[:0])
    np.savez(tmp_path / "objects.npz", x=np.array(list(x[:3]) + [None], dtype=object), y=y[:4])
    cases = {"zero.npz": "empty file", "noarrays.npz": "holds no arrays",
             "noimages.npz": "0 images",
             "objects.npz": "'x' is an object array (pickled Python objects"}
    for name, expected in cases.items():
        with pytest.raises(data.DatasetError) as info:
            data.load_dataset(f"npz:{tmp_path / name}")
        msg = one_line(info.value)
        assert str(tmp_path / name) in msg and expected in msg, msg
    line = cli("evaluate", "--model", str(converted_teacher("resnet20")),
               "--data", f"npz:{tmp_path / 'objects.npz'}")
    assert "objects.npz" in line and "object array" in line


# --- 6. train_teacher ---------------------------------------------------------------------

def test_train_teacher_refuses_to_save_a_nan_teacher(tmp_path):
    out = tmp_path / "teacher"
    with pytest.raises(NonFiniteError) as info:
        train_teacher.train("digits_cnn", "digits", out, epochs=2, batch_size=256, lr=1e9,
                            log=lambda *_: None, progress=False)
    msg = one_line(info.value)
    assert "epoch 1/2" in msg and "non-finite" in msg and "not saved" in msg, msg
    assert not out.exists() and not clf_io.partial_path(out).exists()


def test_train_teacher_cli_nan_keeps_existing_output(tmp_path, converted_teacher):
    """An empty --out made beforehand stays empty; another saved teacher is untouched."""
    out = tmp_path / "teacher"
    out.mkdir()
    line = cli("train_teacher", "--arch", "digits_cnn", "--data", "digits", "--out", str(out),
               "--epochs", "1", "--batch-size", "256", "--lr", "1e9", "--no-progress")
    assert "epoch 1/1" in line and "non-finite" in line, line
    assert list(out.iterdir()) == []
    # a non-empty --out is refused before training, byte for byte unchanged
    existing = converted_teacher("resnet20")
    digest = tree_digest(existing)
    line = cli("train_teacher", "--arch", "digits_cnn", "--data", "digits", "--out",
               str(existing), "--epochs", "1", "--lr", "1e9")
    assert "already exists" in line and tree_digest(existing) == digest


# --- 7. teacher_source --------------------------------------------------------------------

def _torch_spec() -> str:
    return f"torch:resnet20:{teacher_file()}"


def _check_redone(workdir: Path, teacher, few_images) -> None:
    clf = teacher_source.resolve_teacher(_torch_spec(), workdir)
    x = jnp.asarray(few_images[0], jnp.float32) / 255.0
    np.testing.assert_array_equal(np.asarray(clf.apply(x)), np.asarray(teacher.apply(x)))
    assert sorted(p.name for p in workdir.iterdir()) == ["teacher"], list(workdir.iterdir())
    assert sorted(p.name for p in (workdir / "teacher").iterdir()) == [clf_io.META_FILE,
                                                                       clf_io.VARIABLES_DIR]


def test_half_written_teacher_dirs_are_removed_and_redone(tmp_path, teacher, few_images):
    # what a kill -9 during the old, in-place save left: orbax's tmp dir, no classifier.json
    w1 = tmp_path / "killed_in_orbax"
    tmp_dir = w1 / "teacher" / "variables.orbax-checkpoint-tmp-1733000000"
    tmp_dir.mkdir(parents=True)
    (tmp_dir / "_CHECKPOINT_METADATA").write_text("{")
    _check_redone(w1, teacher, few_images)
    # variables written, classifier.json cut short
    w2 = tmp_path / "killed_in_meta"
    shutil.copytree(w1 / "teacher", w2 / "teacher")
    (w2 / "teacher" / clf_io.META_FILE).write_text('{"arch": "resnet20", "num_cl')
    _check_redone(w2, teacher, few_images)
    # the atomic save's own temporary sibling, left by a kill before its rename
    w3 = tmp_path / "killed_before_rename"
    shutil.copytree(w1 / "teacher", clf_io.partial_path(w3 / "teacher"))
    _check_redone(w3, teacher, few_images)


def test_interrupted_save_leaves_no_teacher_dir(tmp_path, teacher, few_images, monkeypatch):
    """An interruption mid-save (here: while hashing) never leaves WORKDIR/teacher behind."""
    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(clf_io, "variables_sha256", interrupted)
    with pytest.raises(KeyboardInterrupt):
        teacher_source.resolve_teacher(_torch_spec(), tmp_path)
    assert not (tmp_path / "teacher").exists()
    monkeypatch.undo()
    _check_redone(tmp_path, teacher, few_images)


def test_teacher_dir_with_foreign_files_is_kept(tmp_path):
    mine = tmp_path / "teacher" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    with pytest.raises(teacher_source.TeacherSpecError) as info:
        teacher_source.resolve_teacher(_torch_spec(), tmp_path)
    msg = one_line(info.value)
    assert str(tmp_path / "teacher") in msg and "notes.txt" in msg
    assert mine.read_text() == "mine"


@pytest.mark.parametrize("suffix", ["abc", "0"])
def test_torch_spec_bad_num_classes(tmp_path, suffix):
    with pytest.raises(teacher_source.TeacherSpecError, match="NUM_CLASSES") as info:
        teacher_source.resolve_teacher(f"{_torch_spec()}:{suffix}", tmp_path)
    one_line(info.value)
