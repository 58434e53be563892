"""evaluate() and its CLI on the converted shared resnet20 teacher and real CIFAR-10."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from nayer_jax import classifier as clf_io
from nayer_jax.evaluate import EvaluationError, check_compatible, evaluate, main
from nayer_jax.data import load_dataset
from tests.conftest import require_shared
from tests.test_data import CIFAR_BATCHES, write_cifar100_dir

LAST_LINE = re.compile(r"^top1=(\S+) top5=(\S+) n=(\d+)$")
REPO = Path(__file__).resolve().parent.parent


def parse_last_line(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1]
    m = LAST_LINE.match(last)
    assert m, f"last stdout line not machine-readable: {last!r}"
    return {"top1": float(m[1]), "top5": float(m[2]), "n": int(m[3])}


@pytest.fixture(scope="module")
def teacher_dir(converted_teacher):
    return converted_teacher("resnet20")


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return clf_io.load_classifier(teacher_dir)


@pytest.fixture(scope="module")
def jpeg_cli_run(teacher_dir):
    """The CLI as a user runs it, once per module: full 10k JPEG test set (~30 s on CPU)."""
    cmd = [sys.executable, "-m", "nayer_jax.evaluate", "--model", str(teacher_dir),
           "--data", f"cifar10:{require_shared(CIFAR_BATCHES)}", "--split", "test"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ),
                          timeout=900)


def test_cli_jpeg_test_set_matches_pytorch(jpeg_cli_run):
    assert jpeg_cli_run.returncode == 0, jpeg_cli_run.stderr[-2000:]
    result = parse_last_line(jpeg_cli_run.stdout)
    assert result["n"] == 10000
    assert result["top1"] == 0.8103  # 8103 images, PyTorch's figure in shared/README.md
    assert result["top1"] <= result["top5"] <= 1.0


def test_cli_lossless_846(teacher_dir, capsys):
    npz = require_shared("data/cifar10-jpeg/test_lossless_846.npz")
    rc = main(["--model", str(teacher_dir), "--data", f"npz:{npz}", "--batch-size", "500",
               "--no-progress"])
    assert rc == 0
    result = parse_last_line(capsys.readouterr().out)
    assert result["n"] == 846
    assert abs(result["top1"] - 0.9173) <= 0.5 / 846  # 776/846 = 0.91726, PyTorch 91.73%


def test_last_partial_batch_does_not_recompile(teacher, lossless_cifar10):
    x, y = lossless_cifar10
    traces = []

    def apply_fn(images):  # Python body runs only while jax traces
        traces.append(images.shape)
        return teacher.apply(images)

    small = evaluate(apply_fn, x, y, batch_size=100, progress=False)  # 8 full + 46 real rows
    assert traces == [(100, 32, 32, 3)]
    assert small["n"] == 846 and round(small["top1"] * 846) == 776  # padding never counted
    big = evaluate(teacher.apply, x, y, batch_size=500, progress=False)
    assert big == small


def test_variables_argument_reuses_the_compiled_step(teacher, lossless_cifar10):
    x, y = lossless_cifar10
    traces = []

    def apply_fn(variables, images):
        traces.append(1)
        return teacher.model.apply(variables, teacher.normalize(images), train=False)

    first = evaluate(apply_fn, x[:300], y[:300], batch_size=128, progress=False,
                     variables=teacher.variables)
    # Other weights of the same shapes (as in the next epoch of training): same program.
    zeroed = jax.tree.map(np.zeros_like, teacher.variables)
    second = evaluate(apply_fn, x[:300], y[:300], batch_size=128, progress=False, variables=zeroed)
    assert len(traces) == 1
    assert first["top1"] > 0.8 and second["top1"] < 0.2


def test_top5_is_top1_below_five_classes(teacher, lossless_cifar10):
    x, y = lossless_cifar10
    keep = y < 3
    three = evaluate(lambda im: teacher.apply(im)[:, :3], x[keep], y[keep], progress=False)
    assert three["top5"] == three["top1"] and 0.8 < three["top1"] < 1.0
    ten = evaluate(teacher.apply, x[keep], y[keep], progress=False)
    assert ten["top5"] > ten["top1"]


def test_cli_image_size_mismatch(teacher_dir, capsys):
    assert main(["--model", str(teacher_dir), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "8x8x1" in err and "32x32x3" in err, err


def test_cli_cifar100_on_ten_class_model(teacher_dir, lossless_cifar10, tmp_path, capsys):
    x, y = lossless_cifar10
    root = write_cifar100_dir(tmp_path / "c100", x[:50], y[:50])
    assert main(["--model", str(teacher_dir), "--data", f"cifar100:{root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "100 classes" in err and "10" in err and str(root) in err, err


def test_check_compatible_accepts_matching_data():
    ds = load_dataset(f"npz:{require_shared('data/cifar10-jpeg/test_lossless_846.npz')}")
    check_compatible(ds, 32, 3, 10)
    with pytest.raises(EvaluationError, match="images are 32x32x3; the model expects 32x32x1"):
        check_compatible(ds, 32, 1, 10)


def test_resnet32_jpeg_test_set_matches_pytorch(converted_teacher):
    """The second shared teacher on the full JPEG test set: PyTorch's 82.56% exactly."""

    clf = clf_io.load_classifier(converted_teacher("resnet32"))
    test = load_dataset(f"cifar10:{require_shared(CIFAR_BATCHES)}", "test")
    result = evaluate(lambda v, x: clf.model.apply(v, clf.normalize(x), train=False),
                      test.images, test.labels, batch_size=500, progress=False,
                      variables=clf.variables)
    assert result["n"] == 10000 and result["top1"] == 0.8256
