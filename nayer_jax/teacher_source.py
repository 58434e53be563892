"""Where a run's teacher comes from: a classifier directory, or a PyTorch checkpoint.

`config.teacher` is either a directory written by nayer_jax.convert / train_teacher, or
"torch:ARCH:PATH[:NUM_CLASSES]", converted once into WORKDIR/teacher and reused after.
"""

from __future__ import annotations

from pathlib import Path

from nayer_jax import classifier as clf_io
from nayer_jax import convert


class TeacherSpecError(ValueError):
    """config.teacher is empty or malformed."""


def resolve_teacher(spec: str, workdir: str | Path) -> clf_io.Classifier:
    if not spec:
        raise TeacherSpecError("config.teacher is empty: pass --config.teacher=DIR (a converted "
                         "classifier) or --config.teacher=torch:ARCH:PATH")
    if spec.startswith("torch:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise TeacherSpecError(f"config.teacher={spec!r}: expected 'torch:ARCH:PATH[:NUM_CLASSES]' "
                             "or a classifier directory")
        arch, src = parts[1], parts[2]
        num_classes = int(parts[3]) if len(parts) == 4 else None
        out = Path(workdir) / "teacher"
        if not (out / clf_io.META_FILE).exists():
            variables = convert.convert_checkpoint(src, arch, num_classes)
            clf_io.save_classifier(out, variables, clf_io.meta_for(
                arch, num_classes, source=str(Path(src).resolve())))
        return clf_io.load_classifier(out)
    return clf_io.load_classifier(spec)
