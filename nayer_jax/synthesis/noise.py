"""Control for data-free KD: distill on Gaussian noise instead of synthesized images.

No generator and no synthesis: every KD batch is fresh noise, N(mean, std) per pixel
clipped to [0, 1] (default N(0.5, 0.25)), fed through the same loop, augmentation and
KD step as every other method (`distill.train_and_evaluate`), with KD from epoch 0.
What a method gains over this baseline is what its synthesis is worth.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from nayer_jax.classifier import Classifier
from nayer_jax.images import to_uint8
from nayer_jax.synthesis import MethodBase

PREVIEW_ROWS = 2


@dataclasses.dataclass(frozen=True)
class NoiseSettings:
    noise_mean: float = 0.5
    noise_std: float = 0.25

    POSITIVE: ClassVar[tuple[str, ...]] = ("noise_std",)


@struct.dataclass
class NoiseState:
    preview: jax.Array  # (rows * C, H, W, C) uint8: some noise images; its shape is the image shape


def noise_images(rng: jax.Array, shape: tuple[int, ...], mean: float, std: float) -> jax.Array:
    """clip(mean + std * N(0, 1), 0, 1): float32 images of `shape` (N, H, W, C)."""
    return jnp.clip(mean + std * jax.random.normal(rng, shape, jnp.float32), 0.0, 1.0)


class GaussianNoise(MethodBase):
    """The method object the loop drives (the contract: nayer_jax.synthesis)."""

    def __init__(self, settings: NoiseSettings, num_classes: int):
        self.s = settings
        self.num_classes = num_classes

    def init_state(self, rng: jax.Array, image_shape: tuple[int, int, int]) -> NoiseState:
        n = PREVIEW_ROWS * self.num_classes
        return NoiseState(preview=to_uint8(self.sample_shape(rng, (n, *image_shape))))

    def sample_shape(self, rng, shape):
        return noise_images(rng, shape, self.s.noise_mean, self.s.noise_std)

    def synthesize_epoch(self, state: NoiseState, student_vars, epoch: int, rng: jax.Array):
        del student_vars, epoch
        return state.replace(preview=to_uint8(self.sample_shape(rng, state.preview.shape))), {}

    def kd_active(self, epoch: int) -> bool:
        return True

    def sample(self, state: NoiseState, rng: jax.Array, batch_size: int) -> jax.Array:
        """KD batch: `batch_size` fresh noise images shaped like the preview's."""
        return self.sample_shape(rng, (batch_size, *state.preview.shape[1:]))

    def preview(self, state: NoiseState) -> jax.Array:
        return state.preview


def default_config():
    """The noise control's config: the loop's base fields plus `NoiseSettings`, KD from
    epoch 0 (warmup 0)."""
    from nayer_jax import distill

    c = distill.add_settings(distill.default_config(), NoiseSettings)
    c.method = "noise"
    c.warmup = 0
    return c


def build(config, teacher: Classifier, student_model: nn.Module, rng: jax.Array, mesh=None):
    """Noise control + initial state from a run config (fields noise_mean/noise_std optional).

    The state is a small preview, kept on the default device: the KD step shards the noise
    batches it draws over `mesh` itself.
    """

    del student_model, mesh
    from nayer_jax import distill

    settings = distill.settings_from(config, NoiseSettings)
    method = GaussianNoise(settings, teacher.meta.num_classes)
    return method, method.init_state(rng, teacher.meta.image_shape)
