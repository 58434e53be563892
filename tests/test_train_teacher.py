"""Teacher training on real data: digits end to end, the saved format, refusals, CIFAR smoke."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from nayer_jax import train_teacher
from nayer_jax.classifier import load_classifier
from nayer_jax.data import load_dataset
from nayer_jax.evaluate import evaluate
from tests.conftest import require_shared


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """3 epochs of digits_cnn (batches of 100: 47 images left over each epoch)."""
    out = tmp_path_factory.mktemp("teacher") / "digits_cnn"
    records = _Records()
    logger = logging.getLogger("jax")
    logger.addHandler(records)
    try:
        with jax.log_compiles(True):
            result = train_teacher.train("digits_cnn", "digits", out, epochs=3, batch_size=100,
                                         lr=3e-3, optimizer="adam", weight_decay=0.0,
                                         log=lambda *_: None, progress=False)
    finally:
        logger.removeHandler(records)
    compiles = [m for m in records.messages if m.startswith("Finished XLA compilation of jit(train_step)")]
    return out, result, compiles


def test_digits_teacher_learns_and_reloads_with_the_same_accuracy(digits_teacher):
    out, result, _ = digits_teacher
    assert result["epochs"] == 3 and result["seconds"] > 0
    assert result["test_top1"] > 0.9  # chance is 0.1
    clf = load_classifier(out)
    assert clf.meta.arch == "digits_cnn" and clf.meta.num_classes == 10
    assert clf.meta.mean == (0.5,) and clf.meta.input_size == 8
    assert clf.meta.extra["test_top1"] == pytest.approx(result["test_top1"])
    test = load_dataset("digits", "test")
    ev = evaluate(clf.apply, test.images, test.labels, 128, progress=False)
    assert ev["top1"] == pytest.approx(result["test_top1"], abs=1e-6)


def test_one_compiled_train_step_despite_a_partial_last_batch(digits_teacher):
    _, _, compiles = digits_teacher
    assert len(compiles) == 1, compiles


def test_refuses_to_overwrite_an_existing_out(digits_teacher, tmp_path, capsys):
    out, _, _ = digits_teacher
    with pytest.raises(train_teacher.TrainTeacherError, match="already exists"):
        train_teacher.train("digits_cnn", "digits", out, epochs=1)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    rc = train_teacher.main(["--arch", "digits_cnn", "--data", "digits", "--out",
                             str(tmp_path / "x"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and err.count("\n") == 1
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_cli_one_line_errors(tmp_path, capsys):
    assert train_teacher.main(["--arch", "nope", "--data", "digits", "--out",
                               str(tmp_path / "a")]) == 2
    assert "unknown architecture 'nope'" in capsys.readouterr().err
    # 8x8x1 digits do not fit a 32x32x3 CIFAR network
    assert train_teacher.main(["--arch", "resnet20", "--data", "digits", "--out",
                               str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "8x8x1" in err and "32x32x3" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cifar10_smoke_on_real_images(tmp_path, capsys):
    """A few hundred real CIFAR-10 images through the CLI: flips on, the saved teacher loads."""
    root = require_shared("data/cifar10-jpeg/cifar-10-batches-py")
    train = load_dataset(f"cifar10:{root}", "test")  # one 10k batch file: quick to read
    npz = tmp_path / "cifar_small"
    npz.mkdir()
    np.savez(npz / "train.npz", x=train.images[:256], y=train.labels[:256])
    np.savez(npz / "test.npz", x=train.images[9800:], y=train.labels[9800:])
    out = tmp_path / "resnet20"
    rc = train_teacher.main(["--arch", "resnet20", "--data", f"npz:{npz}", "--out", str(out),
                             "--epochs", "1", "--batch-size", "64", "--no-progress"])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "flip on" in stdout and "crop pad 4" in stdout
    last = stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert set(fields) == {"test_top1", "epochs", "seconds"} and fields["epochs"] == "1"
    assert 0.0 <= float(fields["test_top1"]) <= 1.0
    assert load_classifier(out).meta.arch == "resnet20"
