"""Image helpers shared by the loop and the methods: uint8 quantization and PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def to_uint8(images: jax.Array) -> jax.Array:
    """[0, 1] float -> uint8 with rounding (the PNG quantization of the PyTorch originals)."""
    return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def write_grid(path: str | Path, images: np.ndarray, columns: int) -> None:
    """Save uint8 NHWC images as one PNG grid, row-major, 1 px white gaps."""
    from PIL import Image

    images = np.asarray(images)
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = img
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)
