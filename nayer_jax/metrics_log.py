"""A run's logs: metrics.jsonl (one JSON record per epoch), the per-epoch PNG grids and,
with `config.tensorboard`, a TensorBoard event file beside them.

`MetricsLog` is the one writer the loop calls; on a resumed run it rewrites
metrics.jsonl from the restored history first, so the file always matches the
checkpoint the run continues from. The event file is written with tensorboardX (no
TensorFlow): every numeric field of a record is a scalar under its metrics.jsonl name
at step = epoch, every preview grid an image. A resumed run opens a new event file
that only receives the epochs after the checkpoint; it starts with a purge marker at
that epoch, so TensorBoard hides whatever an interrupted run had logged past its last
checkpoint and each epoch appears once. View with `tensorboard --logdir WORKDIR`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from numbers import Real
from pathlib import Path

import numpy as np

from nayer_jax import images

_WRITERS = itertools.count()  # tensorboardX names files by the second: keep each distinct

def scalars(record: dict) -> dict[str, float]:
    """The record's numeric fields as floats (not `epoch`, the step; no None or bool)."""
    return {key: float(value) for key, value in record.items()
            if key != "epoch" and isinstance(value, Real) and not isinstance(value, bool)}


def grid(batch: np.ndarray, columns: int) -> np.ndarray:
    """uint8 NHWC -> one HWC grid, row-major, 1 px white gaps (the PNG's layout)."""
    batch = np.asarray(batch)
    n, h, w, c = batch.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, c), 255, np.uint8)
    for i, img in enumerate(batch):
        r, col = divmod(i, columns)
        out[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = img
    return out


def image_tag(name: str) -> str:
    """One TensorBoard tag per image series: 'epoch_0007' -> 'preview', 'x_epoch_3' -> 'x'."""
    return re.sub(r"_?epoch_\d+$", "", name) or "preview"


class MetricsLog:
    """Per-epoch records and image grids under `workdir` (a no-op off the main process)."""

    def __init__(self, workdir: str | Path, history: list[dict], tensorboard: bool = False,
                 enabled: bool = True):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in history))
            (self.workdir / "images").mkdir(exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                first_new = history[-1]["epoch"] + 1 if history else 0
                self._tb = SummaryWriter(
                    logdir=str(self.workdir), purge_step=first_new, flush_secs=30,
                    filename_suffix=f".{os.getpid()}.{next(_WRITERS)}")

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self._tb is not None:
                step = int(record["epoch"])
                for key, value in scalars(record).items():
                    self._tb.add_scalar(key, value, global_step=step)
                self._tb.flush()  # one epoch's worth: a crash loses nothing written

    def image(self, name: str, batch: np.ndarray, columns: int, step: int) -> None:
        """A uint8 NHWC batch as images/<name>.png (class k in column k)."""
        if self.enabled:
            images.write_grid(self.workdir / "images" / f"{name}.png", batch, columns)
            if self._tb is not None:
                self._tb.add_image(image_tag(name), grid(batch, columns), global_step=step,
                                   dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
