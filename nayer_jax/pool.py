"""Device-resident ring buffer of synthesized images (uint8, like NAYER's PNG pool).

Pure functions over an explicit `ImagePool` pytree: `add` writes a batch at the ring
position, `sample` draws uniformly from what has been written. Both jit; nothing leaves
the device. Images are stored quantized to uint8 (4x smaller than float32, and exactly
what the PyTorch original keeps when it saves its pool as PNG files).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from nayer_jax.images import to_uint8


@struct.dataclass
class ImagePool:
    images: jax.Array  # (capacity, H, W, C) uint8
    count: jax.Array   # int32 scalar: images written so far (may exceed capacity)

    @property
    def capacity(self) -> int:
        return self.images.shape[0]


def create_pool(capacity: int, image_shape: tuple[int, int, int]) -> ImagePool:
    """An empty pool for `capacity` images of shape (H, W, C)."""
    if capacity <= 0:
        raise ValueError(f"pool capacity must be positive, got {capacity}")
    return ImagePool(images=jnp.zeros((capacity, *image_shape), jnp.uint8),
                     count=jnp.zeros((), jnp.int32))


def add(pool: ImagePool, images: jax.Array) -> ImagePool:
    """Write a batch (N, H, W, C) in [0, 1] at the ring position; oldest images go first."""
    n = images.shape[0]
    idx = (pool.count + jnp.arange(n, dtype=jnp.int32)) % pool.capacity
    return ImagePool(images=pool.images.at[idx].set(to_uint8(images)),
                     count=pool.count + n)


def size(pool: ImagePool) -> jax.Array:
    """Number of valid images (int32 scalar)."""
    return jnp.minimum(pool.count, pool.capacity)


def sample(pool: ImagePool, rng: jax.Array, batch_size: int) -> jax.Array:
    """Uniformly sample `batch_size` valid images (with replacement) as float32 in [0, 1]."""
    idx = jax.random.randint(rng, (batch_size,), 0, jnp.maximum(size(pool), 1))
    return pool.images[idx].astype(jnp.float32) / 255.0


def latest(pool: ImagePool, n: int) -> jax.Array:
    """The `n` most recently written images (oldest first), uint8; for previews."""
    idx = (pool.count - n + jnp.arange(n, dtype=jnp.int32)) % pool.capacity
    return pool.images[idx]
