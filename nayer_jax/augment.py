"""Jittable, differentiable batch augmentation: random crop (zero pad) + horizontal flip.

Per-sample randomness (one key per image, vmapped dm-pix ops), NHWC float images in
[0, 1]. Differentiable w.r.t. the images, so synthesis can backpropagate through it.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp


def random_crop_flip(rng: jax.Array, images: jax.Array, pad: int = 4,
                     flip: bool = True) -> jax.Array:
    """torchvision RandomCrop(size, padding=pad) + RandomHorizontalFlip, per image.

    images: (N, H, W, C) -> (N, H, W, C).
    """
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(rng)
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        keys = jax.random.split(crop_key, n)
        images = jax.vmap(lambda k, x: pix.random_crop(k, x, (h, w, c)))(keys, padded)
    if flip:
        keys = jax.random.split(flip_key, n)
        images = jax.vmap(lambda k, x: pix.random_flip_left_right(k, x))(keys, images)
    return images
