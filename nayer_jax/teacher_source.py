"""Where a run's teacher comes from: a classifier directory, or a PyTorch checkpoint.

`config.teacher` is either a directory written by nayer_jax.convert / train_teacher, or
"torch:ARCH:PATH[:NUM_CLASSES]", converted once into WORKDIR/teacher and reused after.
The conversion is saved atomically (a temporary sibling renamed into place); a
half-written WORKDIR/teacher left by an older, killed run is removed and redone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax

from nayer_jax import classifier as clf_io
from nayer_jax import convert
from nayer_jax.errors import InputError


class TeacherSpecError(InputError):
    """config.teacher is empty or malformed."""


def parse_torch_spec(spec: str) -> tuple[str, str, int | None]:
    """'torch:ARCH:PATH[:NUM_CLASSES]' -> (arch, path, num_classes or None)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or not parts[1] or not parts[2]:
        raise TeacherSpecError(f"config.teacher={spec!r}: expected 'torch:ARCH:PATH[:NUM_CLASSES]' "
                               "or a classifier directory")
    num_classes = None
    if len(parts) == 4:
        if not parts[3].isdigit() or int(parts[3]) <= 0:
            raise TeacherSpecError(f"config.teacher={spec!r}: NUM_CLASSES {parts[3]!r} must be a "
                                   "positive integer")
        num_classes = int(parts[3])
    return parts[1], parts[2], num_classes


def _is_complete(directory: Path) -> bool:
    """True when `directory` holds a classifier.json that parses into full metadata."""
    try:
        clf_io.load_meta(directory)
    except clf_io.ClassifierFileError:
        return False
    return True


_OURS = (clf_io.META_FILE, clf_io.VARIABLES_DIR)


def _remove_half_written(out: Path) -> None:
    """Delete a teacher directory a killed conversion left incomplete (only our own files)."""
    if not out.exists() or (out.is_dir() and _is_complete(out)):
        return
    names = [p.name for p in out.iterdir()] if out.is_dir() else [out.name]
    foreign = [n for n in names if not n.startswith(_OURS)]
    if not out.is_dir() or foreign:
        raise TeacherSpecError(f"{out}: exists but is not a complete converted teacher and holds "
                               f"other files {sorted(foreign)[:5]}; move it away to reconvert")
    if jax.process_index() == 0:
        shutil.rmtree(out)
    clf_io.sync_processes(f"teacher_cleanup:{out}")


def resolve_teacher(spec: str, workdir: str | Path) -> clf_io.Classifier:
    """The teacher named by `spec`: a classifier directory, or a torch checkpoint converted
    once into WORKDIR/teacher."""
    if not spec:
        raise TeacherSpecError("config.teacher is empty: pass --config.teacher=DIR (a converted "
                               "classifier) or --config.teacher=torch:ARCH:PATH")
    if not spec.startswith("torch:"):
        return clf_io.load_classifier(spec)
    arch, src, num_classes = parse_torch_spec(spec)
    out = Path(workdir) / "teacher"
    _remove_half_written(out)
    if not out.exists():
        variables = convert.convert_checkpoint(src, arch, num_classes)
        clf_io.save_classifier(out, variables, clf_io.meta_for(
            arch, num_classes, source=str(Path(src).resolve())))
    return clf_io.load_classifier(out)
