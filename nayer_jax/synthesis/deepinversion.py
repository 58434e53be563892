"""DeepInversion (Yin et al., CVPR 2020, "Dreaming to Distill"): invert the teacher into pixels.

The algorithm, top to bottom (one synthesis batch per epoch, then KD from the pool):
1. Targets: the classes [0..C-1] cycled over the batch (remainder random), as the
   reference CIFAR code's `[0..9] * 25 + [0..5]`.
2. Pixels: x ~ N(0, 1) in the teacher's *normalized* input space (both reference codes
   start there), optimized directly with a fresh Adam(lr_g, b1_g, b2_g) for `iterations`
   steps (DeepInv-2k: 2000).
3. Every step: one random jitter (a circular roll by (dy, dx) in [-jitter, jitter]², the
   same for the whole batch) and, with `flip`, a horizontal flip with probability 1/2,
   then the loss on the jittered batch x̃:
       bn_weight * L_bn + oh_weight * CE(teacher(x̃), y) + tv_weight * TV(x̃)
       + l2_weight * ||x̃||  [+ adv_weight * L_comp  with `adaptive` (ADI)]
   L_bn: sum over the teacher's BN layers of ||batch mean - running mean||_2 +
   ||batch var - running var||_2; TV: the four-neighbour L2 total variation; ||x̃||: the
   mean per-image L2 norm; L_comp (Adaptive DeepInversion's competition) =
   1 - JS(student(x̃), teacher(x̃)) at T = 3 with the student in eval mode: minimizing it
   pushes the images to where student and teacher disagree.
4. After every Adam step the pixels are clipped to the valid image range
   ([-mean/std, (1 - mean)/std] per channel).
5. The batch of the lowest-loss step (the pixels that step saw, before its update)
   goes into the image pool, mapped back to [0, 1]; KD samples the pool uniformly.

Every step is one jitted function with the carry donated; the loss sums and the best
batch stay on the device until the batch is done.

Where the two reference codes (NVlabs/DeepInversion cifar10/deepinversion_cifar10.py,
zju-vipa/Fast-Datafree datafree/synthesis/deepinversion.py, the latter the "DeepInv-2k"
baseline of the Fast paper) and the paper differ, this follows:
- Adam betas (0.5, 0.99), clipping to the pixel range, jitter 4 px (= 1/8 of 32) with
  flip, one batch per epoch, KD on the growing pool: Fast-Datafree (its CIFAR script
  `scripts/deepinv_cifar.sh`: lr_g 0.1, bn 10, oh 1, adv 1, batch 256, KD lr 0.1,
  200 epochs, 400 KD steps). The NVlabs CIFAR script uses Adam's default betas, a 2 px
  jitter without flip and no clipping.
- iterations 2000 (the paper's and NVlabs' CIFAR count, the Fast paper's "DeepInv-2k";
  Fast-Datafree's script runs 1000) and tv_weight 2.5e-5 (NVlabs' CIFAR default, L2 TV
  on the jittered batch; Fast-Datafree passes tv = 0).
- L_comp = 1 - clip(JS, 0, 1) as the paper and NVlabs (Fast-Datafree uses -JS: the same
  gradient). Fast-Datafree also subtracts 0.001 x the student's own BN-statistics loss;
  neither the paper nor NVlabs has that term, and it is left out.
- The pooled batch is the pixels of the best step. Both reference codes keep
  `inputs.data` without a copy, which the in-place Adam step then overwrites, so what
  they pool is (close to) the last iterate rather than the best one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from nayer_jax import losses, parallel, pool as pool_lib
from nayer_jax.classifier import Classifier
from nayer_jax.synthesis import common
from nayer_jax.teacher import apply_with_bn_stats


# ------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class DeepInversionSettings:
    """CIFAR defaults (see the module docstring for where each comes from)."""
    synthesis_batch_size: int = 256
    iterations: int = 2000      # Adam steps per batch (DeepInv-2k)
    lr_g: float = 0.1
    b1_g: float = 0.5
    b2_g: float = 0.99
    bn_weight: float = 10.0
    oh_weight: float = 1.0
    tv_weight: float = 2.5e-5
    l2_weight: float = 0.0
    adaptive: bool = True       # ADI: add the competition loss against the student
    adv_weight: float = 1.0
    adv_temperature: float = 3.0
    jitter: int = 4             # max |roll| in pixels along H and W
    flip: bool = True

    POSITIVE: ClassVar[tuple[str, ...]] = ("synthesis_batch_size", "iterations", "lr_g",
                                           "adv_temperature")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("b1_g", "b2_g", "bn_weight", "oh_weight",
                                               "tv_weight", "l2_weight", "adv_weight", "jitter")


def default_config():
    """DeepInversion as in Fast-Datafree's CIFAR script: the loop's base fields with its KD
    (batch 256, lr 0.1, 200 epochs, KD from epoch 0) plus `DeepInversionSettings`."""
    from nayer_jax import distill

    c = distill.add_settings(distill.default_config(), DeepInversionSettings)
    c.method = "deepinversion"
    c.epochs = 200
    c.warmup = 0
    c.batch_size = 256
    c.lr = 0.1
    c.pool_capacity = 0  # 0: every batch the run synthesizes
    return c


# ------------------------------------------------------------------------ jitter / flip

def draw_jitter(rng: jax.Array, jitter: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dy, dx, flip): offsets uniform in [-jitter, jitter], flip a fair coin."""
    k_y, k_x, k_f = jax.random.split(rng, 3)
    dy = jax.random.randint(k_y, (), -jitter, jitter + 1)
    dx = jax.random.randint(k_x, (), -jitter, jitter + 1)
    return dy, dx, jax.random.bernoulli(k_f)


def roll_flip(x: jax.Array, dy, dx, flip) -> jax.Array:
    """NHWC batch rolled by (dy, dx) along (H, W) (torch.roll on NCHW dims (2, 3)), then
    flipped along W where `flip`."""
    x = jnp.roll(x, (dy, dx), axis=(1, 2))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def jitter_and_flip(rng: jax.Array, x: jax.Array, jitter: int, flip: bool = True) -> jax.Array:
    """One random jitter (and flip, if `flip`) shared by the whole batch."""
    dy, dx, f = draw_jitter(rng, jitter)
    return roll_flip(x, dy, dx, jnp.logical_and(f, flip))


# ---------------------------------------------------------------------------- the state

@struct.dataclass
class DeepInversionState:
    pool: pool_lib.ImagePool


@struct.dataclass
class InversionCarry:
    """What one batch's optimization threads through its iterations (all on device)."""
    pixels: jax.Array        # (N, H, W, C) in the teacher's normalized space
    opt_state: Any
    best_loss: jax.Array
    best_pixels: jax.Array
    sums: dict               # running sums of the loss terms, for logging


LOSS_TERMS = ("loss", "bn", "ce", "tv", "l2", "adv")


class DeepInversion(common.PoolMethod):
    """DeepInversion / ADI bound to a teacher and a student architecture."""

    def __init__(self, settings: DeepInversionSettings, teacher: Classifier,
                 student_model: nn.Module, warmup: int = 0, mesh=None,
                 compute_dtype=jnp.float32):
        self._bind(settings, teacher, student_model, mesh, compute_dtype)
        self.warmup = warmup  # epochs without KD (config.warmup; 0 in the reference)
        mean = jnp.asarray(teacher.meta.mean, jnp.float32)
        std = jnp.asarray(teacher.meta.std, jnp.float32)
        self._mean, self._std = mean, std
        self._lo, self._hi = -mean / std, (1.0 - mean) / std  # [0, 1] in normalized space
        self.optimizer = optax.adam(settings.lr_g, b1=settings.b1_g, b2=settings.b2_g)
        self._init = jax.jit(self.init_batch)
        self._step = jax.jit(self._inversion_step, donate_argnums=(0,))
        self._finish = jax.jit(self._finish_batch, donate_argnums=(0,))

    # -- one Adam step on the pixels ---------------------------------------------------
    def _loss(self, pixels, onehot, teacher_vars, student_vars, rng):
        pixels = parallel.shard_batch(pixels, self.mesh)
        x = jitter_and_flip(rng, pixels, self.s.jitter, self.s.flip)
        xc, teacher_vars, student_vars = parallel.cast_compute((x, teacher_vars, student_vars),
                                                               self.compute_dtype)
        t_logits, stats = apply_with_bn_stats(self.teacher.model, teacher_vars, xc)
        terms = {"bn": losses.bn_moment_loss(stats),
                 "ce": losses.soft_cross_entropy(t_logits, onehot),
                 "tv": losses.total_variation(x, "l2"),
                 "l2": losses.l2_prior(x)}
        if self.s.adaptive:
            s_logits = self.student_model.apply(student_vars, xc, train=False)
            terms["adv"] = losses.competition_loss(s_logits, t_logits, self.s.adv_temperature)
        else:
            terms["adv"] = jnp.zeros((), jnp.float32)
        loss = (self.s.bn_weight * terms["bn"] + self.s.oh_weight * terms["ce"]
                + self.s.tv_weight * terms["tv"] + self.s.l2_weight * terms["l2"]
                + self.s.adv_weight * terms["adv"])
        return loss, {"loss": loss, **terms}

    def _inversion_step(self, carry: InversionCarry, onehot, teacher_vars, student_vars,
                        rng) -> InversionCarry:
        (loss, terms), grads = jax.value_and_grad(self._loss, has_aux=True)(
            carry.pixels, onehot, teacher_vars, student_vars, rng)
        best_loss, best_pixels = common.keep_best(carry.best_loss, carry.best_pixels, loss,
                                                  carry.pixels)
        updates, opt_state = self.optimizer.update(grads, carry.opt_state, carry.pixels)
        pixels = jnp.clip(optax.apply_updates(carry.pixels, updates), self._lo, self._hi)
        return InversionCarry(pixels=pixels, opt_state=opt_state, best_loss=best_loss,
                              best_pixels=best_pixels,
                              sums=jax.tree.map(jnp.add, carry.sums, terms))

    # -- one batch ------------------------------------------------------------------------
    def init_batch(self, rng: jax.Array) -> tuple[InversionCarry, jax.Array]:
        """(carry with x ~ N(0, 1) and a fresh Adam, one-hot targets)."""
        k_x, k_y = jax.random.split(rng)
        n = self.s.synthesis_batch_size
        pixels = jax.random.normal(k_x, (n, *self.img_shape), jnp.float32)
        onehot = jax.nn.one_hot(common.make_targets(self.num_classes, n, k_y), self.num_classes)
        carry = InversionCarry(pixels=pixels, opt_state=self.optimizer.init(pixels),
                               best_loss=jnp.asarray(jnp.inf, jnp.float32),
                               best_pixels=jnp.zeros_like(pixels),
                               sums={k: jnp.zeros((), jnp.float32) for k in LOSS_TERMS})
        return carry, onehot

    def step(self, carry: InversionCarry, onehot, student_vars, rng) -> InversionCarry:
        """One jitted Adam step on the pixels (carry donated)."""
        return self._step(carry, onehot, self.teacher.variables, student_vars, rng)

    def to_images(self, pixels: jax.Array) -> jax.Array:
        """Normalized pixels -> images in [0, 1]."""
        return jnp.clip(pixels * self._std + self._mean, 0.0, 1.0)

    def _finish_batch(self, state: DeepInversionState,
                      carry: InversionCarry) -> tuple[DeepInversionState, dict]:
        metrics = {k: v / self.s.iterations for k, v in carry.sums.items()}
        metrics["best_loss"] = carry.best_loss
        pool = pool_lib.add(state.pool, self.to_images(carry.best_pixels))
        return DeepInversionState(pool=pool), metrics

    def synthesize_batch(self, state: DeepInversionState, student_vars,
                         rng: jax.Array) -> tuple[DeepInversionState, dict]:
        """`iterations` Adam steps from noise; the best step's batch into the pool."""
        k_init, k_steps = jax.random.split(rng)
        carry, onehot = parallel.replicate(self._init(k_init), self.mesh)
        for key in jax.random.split(k_steps, self.s.iterations):
            carry = self.step(carry, onehot, student_vars, key)
        return self._finish(state, carry)

    # -- the contract -------------------------------------------------------------------
    def synthesize_epoch(self, state: DeepInversionState, student_vars, epoch: int,
                         rng: jax.Array) -> tuple[DeepInversionState, dict]:
        del epoch
        return self.synthesize_batch(state, student_vars, rng)

    def kd_active(self, epoch: int) -> bool:
        return epoch >= self.warmup


def build(config, teacher: Classifier, student_model: nn.Module, rng: jax.Array, mesh=None):
    """DeepInversion method + initial state (an empty pool for every batch of the run)."""
    del rng
    from nayer_jax import distill

    settings = distill.settings_from(config, DeepInversionSettings)
    method = DeepInversion(settings, teacher, student_model, warmup=config.warmup, mesh=mesh,
                           compute_dtype=jnp.dtype(config.compute_dtype))
    capacity = config.pool_capacity or config.epochs * settings.synthesis_batch_size
    return method, DeepInversionState(
        pool=pool_lib.create_pool(capacity, method.img_shape))
