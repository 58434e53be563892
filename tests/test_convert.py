"""PyTorch -> Flax conversion on the real shared teachers, its wrappers, its errors, its CLI.

The real checks: the converted resnet20/resnet32 give PyTorch's logits on real CIFAR-10
test images and exactly the accuracy the shared README states. Every bad input must raise
ConversionError with a one-line message naming the file, and must never execute code.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from nayer_jax import classifier as clf_io
from nayer_jax import convert
from nayer_jax.models import registry
from tests import torch_refs
from tests.conftest import require_shared

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-4
# Correct predictions on the 846 lossless test images: 91.73% / 93.03% in shared/README.md.
README_CORRECT = {"resnet20": 776, "resnet32": 787}
DEPTH = {"resnet20": 20, "resnet32": 32}


def teacher_file(arch: str) -> Path:
    return require_shared(f"teachers/cifar10_{arch}.th")


@pytest.fixture(scope="module")
def images(lossless_cifar10):
    """The 846 lossless test images in [0, 1], NHWC float32, and their labels."""
    x, y = lossless_cifar10
    return x.astype(np.float32) / 255.0, np.asarray(y)


def torch_logits(arch: str, x01: np.ndarray) -> np.ndarray:
    """The real teacher run by PyTorch on images in [0, 1] (normalized as the README says)."""
    spec = registry.get_spec(arch)
    model = torch_refs.load_shared_teacher(teacher_file(arch), DEPTH[arch])
    x = (x01 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()


def flax_logits(directory: Path, x01: np.ndarray) -> np.ndarray:
    clf = clf_io.load_classifier(directory)
    return np.asarray(jax.jit(clf.apply)(x01))


def flat(variables: dict) -> dict:
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(variables)))


# --- the real teachers ---------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet20", "resnet32"])
def test_real_teacher_matches_pytorch(arch, converted_teacher, images):
    x, y = images
    ref = torch_logits(arch, x)
    out = flax_logits(converted_teacher(arch), x)
    diff = np.abs(out - ref).max()
    assert diff < TOL, f"{arch}: max |flax - torch| = {diff:.3g} on real CIFAR-10"
    torch_correct = int((ref.argmax(-1) == y).sum())
    flax_correct = int((out.argmax(-1) == y).sum())
    assert torch_correct == README_CORRECT[arch], f"torch {torch_correct}/846"
    assert flax_correct == torch_correct, f"flax {flax_correct} vs torch {torch_correct}/846"


# --- accepted wrappers ---------------------------------------------------------------------

def _real_state_dict(arch: str = "resnet20") -> dict:
    """The file's state_dict as stored: 'module.' prefixes, no num_batches_tracked."""
    return torch.load(teacher_file(arch), map_location="cpu", weights_only=True)["state_dict"]


def _wrapper_variants(sd: dict) -> dict:
    bare = {k.removeprefix("module."): v for k, v in sd.items()}
    with_nbt = dict(bare)
    for k in bare:
        if k.endswith("running_var"):
            with_nbt[k.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    return {
        "file_as_is": {"state_dict": sd, "best_prec1": 91.73},
        "prefixed_bare": sd,
        "bare": bare,
        "model_wrapper": {"model": bare},
        "state_dict_with_nbt": {"state_dict": with_nbt},
        "module_with_nbt": {f"module.{k}": v for k, v in with_nbt.items()},
    }


@pytest.mark.parametrize("variant", list(_wrapper_variants({})))
def test_wrappers_and_prefixes_accepted(variant, tmp_path):
    sd = _real_state_dict()
    expected = flat(convert.convert_checkpoint(teacher_file("resnet20"), "resnet20"))
    path = tmp_path / f"{variant}.pt"
    torch.save(_wrapper_variants(sd)[variant], path)  # through a file, as users have them
    got = flat(convert.convert_checkpoint(path, "resnet20"))
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=str(k))


# --- bad input: one-line ConversionError naming the file --------------------------------

def _conversion_error(src, arch: str = "resnet20", num_classes: int | None = None) -> str:
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_checkpoint(src, arch, num_classes)
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg, f"not one clean line: {msg!r}"
    assert str(src) in msg, f"file not named: {msg}"
    return msg


def test_wrong_arch_lists_unexpected_keys():
    msg = _conversion_error(teacher_file("resnet32"), "resnet20")
    assert "does not fit arch 'resnet20'" in msg
    assert "unexpected keys [layer1.3.conv1.weight" in msg and "(60 in all)" in msg
    assert "missing keys" not in msg


def test_shallower_checkpoint_lists_missing_keys():
    msg = _conversion_error(teacher_file("resnet20"), "resnet32")
    assert "missing keys" in msg and "layer1.3." in msg


def test_num_classes_mismatch_lists_shapes():
    msg = _conversion_error(teacher_file("resnet20"), "resnet20", num_classes=100)
    assert "num_classes=100" in msg
    assert "linear.weight: checkpoint (10, 64) vs model (100, 64)" in msg
    assert "linear.bias: checkpoint (10,) vs model (100,)" in msg


def test_truncated_file(tmp_path):
    raw = teacher_file("resnet20").read_bytes()
    path = tmp_path / "half.th"
    path.write_bytes(raw[: len(raw) // 2])
    assert "not a readable PyTorch weights file" in _conversion_error(path)


def test_truncated_zip_file(tmp_path):
    """The same for the zip format torch.save writes today (the shared files are legacy)."""
    full = tmp_path / "full.pt"
    torch.save(_real_state_dict(), full)
    raw = full.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(raw[: len(raw) // 2])
    assert "not a readable PyTorch weights file" in _conversion_error(path)


@pytest.mark.parametrize("seed", range(4))
def test_corrupt_bytes(tmp_path, seed):
    path = tmp_path / "noise.th"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, np.uint8).tobytes())
    assert "not a readable PyTorch weights file" in _conversion_error(path)


def test_missing_file(tmp_path):
    assert "no such file" in _conversion_error(tmp_path / "nope.th")


@pytest.mark.parametrize("obj,shown", [({"a": "b", "c": "d"}, "got a dict with keys ['a', 'c']"),
                                       ([1, 2, 3], "got a list)"),
                                       ({"state_dict": {"w": "x"}}, "got a dict with keys ['w']")])
def test_pickle_without_state_dict(tmp_path, obj, shown):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    msg = _conversion_error(path)
    assert "no state_dict found" in msg and shown in msg


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): the converter must refuse, not execute it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_arbitrary_object_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv1.weight": _WritesMarker(marker)}}, path)
    msg = _conversion_error(path)
    assert "refused" in msg and "only a saved state_dict is accepted" in msg
    assert not marker.exists(), "loading the checkpoint executed pickled code"
    # The payload is real: an unsafe load does run it (so the assertion above can fail).
    torch.load(path, weights_only=False)
    assert marker.exists()


# --- the CLI -------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nayer_jax.convert", *args], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _tree_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(directory)).encode() + p.read_bytes())
    return h.hexdigest()


def test_cli_converts_and_refuses_to_overwrite(tmp_path, images, converted_teacher):
    src = teacher_file("resnet20")
    out = tmp_path / "clf"
    args = ("--arch", "resnet20", "--num-classes", "10", "--src", str(src), "--out", str(out))
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "converted" in first.stdout
    x = images[0][:64]
    logits = flax_logits(out, x)
    np.testing.assert_array_equal(logits, flax_logits(converted_teacher("resnet20"), x))
    assert np.abs(logits - torch_logits("resnet20", x)).max() < TOL
    meta = clf_io.load_meta(out)
    assert (meta.arch, meta.num_classes) == ("resnet20", 10)

    digest = _tree_digest(out)
    line = _assert_one_line_error(_cli(*args))
    assert str(out) in line and "already exists" in line
    assert _tree_digest(out) == digest, "the failed second run changed the first result"
    np.testing.assert_array_equal(flax_logits(out, x), logits)


def test_cli_bad_checkpoint(tmp_path):
    bad = tmp_path / "half.th"
    raw = teacher_file("resnet20").read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "never"
    line = _assert_one_line_error(_cli("--arch", "resnet20", "--src", str(bad), "--out", str(out)))
    assert str(bad) in line and "not a readable PyTorch weights file" in line
    assert not out.exists(), "a failed conversion left an output directory"
