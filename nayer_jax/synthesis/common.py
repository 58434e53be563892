"""Mechanisms several synthesis methods share, each in one place.

* `make_targets`: the classes [0..C-1] cycled over a synthesis batch (NAYER, DeepInversion,
  Fast), so row i has class i mod C and a preview grid shows class k in column k.
* `BNMomentum`, `init_bn_momentum`, `update_bn_momentum`: the `bn_mmt` state of the
  Fast-Datafree family (Fast, NAYER): per teacher BN layer an exponential average of the
  batch statistics of earlier synthesis loops, blended into L_bn (see `losses.bn_moment_loss`).
* `keep_best`: the on-device record of a synthesis loop's lowest-loss batch.
* `latest_batch_preview`: the newest pooled batch, cut to whole rows of C classes.
* `PoolMethod`: the KD batch source and preview of the methods that pool their batches.
* `teacher_objective`: the bn + oh + adv synthesis loss of NAYER and Fast.

Every function is jit-safe and pure.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nayer_jax import augment, losses, parallel, pool as pool_lib
from nayer_jax.classifier import normalize
from nayer_jax.synthesis import MethodBase
from nayer_jax.teacher import apply_with_bn_stats


@dataclasses.dataclass(frozen=True)
class TeacherObjectiveSettings:
    """The weights of `teacher_objective` and the teacher's view of the images, as
    NAYER's and Fast's CIFAR scripts publish them (their Settings extend this)."""
    bn_weight: float = 10.0
    oh_weight: float = 0.5
    adv_weight: float = 1.33
    bn_mmt: float = 0.9   # blend of earlier loops' BN statistics into L_bn's target
    aug_pad: int = 4      # random crop padding of the teacher's view (0: none)
    aug_flip: bool = True


def make_targets(num_classes: int, batch_size: int, rng: jax.Array) -> jax.Array:
    """[0..C-1] repeated batch // C times, then batch % C random classes (NAYER's order;
    DeepInversion's CIFAR code uses the same cycle, `[0..9] * 25 + [0..5]`)."""
    reps, rem = divmod(batch_size, num_classes)
    full = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), reps)
    extra = jax.random.randint(rng, (rem,), 0, num_classes, dtype=jnp.int32)
    return jnp.concatenate([full, extra])


# --------------------------------------------------------------------- BN momentum

class BNMomentum(NamedTuple):
    """bn_mmt state: per teacher BN layer the averaged (mean, var) of earlier loops."""
    stats: tuple
    active: jax.Array  # bool: False until the first synthesis loop has finished


def teacher_bn_shapes(teacher, image_shape: tuple[int, int, int]) -> list:
    """The shapes of `apply_with_bn_stats`' BNStats for `teacher` (no computation)."""
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    return jax.eval_shape(lambda im: apply_with_bn_stats(teacher.model, teacher.variables, im),
                          x)[1]


def zero_bn_stats(bn_shapes) -> tuple:
    """Zero BNStats shaped like `bn_shapes`: a loop carry's "last statistics" placeholder."""
    return tuple(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), bn_shapes))


def init_bn_momentum(bn_shapes) -> BNMomentum:
    """No average yet (zeros, inactive)."""
    return BNMomentum(stats=tuple(losses.empty_momentum_stats(bn_shapes)),
                      active=jnp.zeros((), jnp.bool_))


def update_bn_momentum(mmt: BNMomentum, last_stats, rate: float) -> BNMomentum:
    """End of a synthesis loop: fold the loop's last-step batch statistics into the average
    (the first loop's statistics are taken as they are); stays inactive when rate == 0."""
    stats = losses.update_momentum_stats(mmt.stats, last_stats, rate,
                                         has_momentum_stats=mmt.active)
    return BNMomentum(stats=tuple(stats), active=jnp.asarray(rate > 0))


# --------------------------------------------------------------------- best batch

def keep_best(best_loss: jax.Array, best_images: jax.Array, loss: jax.Array,
              images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(best_loss, best_images) updated with one step's (loss, images): the images of the
    first step with the strictly lowest loss win (start from +inf and any images)."""
    better = loss < best_loss
    return jnp.where(better, loss, best_loss), jnp.where(better, images, best_images)


# --------------------------------------------------------------------- preview

def latest_batch_preview(pool: pool_lib.ImagePool, batch_size: int, num_classes: int,
                         max_images: int = 100) -> jax.Array:
    """The first rows of the newest pooled batch of `batch_size` (uint8): whole rows of
    `num_classes` (class k in column k with `make_targets`), at most `max_images`."""
    n = min(batch_size, pool.capacity)
    rows = max(min(max_images, n) // num_classes, 1)
    return pool_lib.latest(pool, n)[:min(rows * num_classes, n)]



class PoolMethod(MethodBase):
    """A method whose state holds an image pool (`state.pool`) that KD samples from
    (NAYER, DeepInversion, Fast); it has `s.synthesis_batch_size` and `num_classes`."""

    def sample(self, state, rng: jax.Array, batch_size: int) -> jax.Array:
        """KD batch source: uniform draws from the pool, float32 in [0, 1]."""
        return pool_lib.sample(state.pool, rng, batch_size)

    def preview(self, state) -> jax.Array:
        """The newest pooled batch (uint8), whole rows of C classes, class k in column k."""
        return latest_batch_preview(state.pool, self.s.synthesis_batch_size, self.num_classes)


# --------------------------------------------------------------------- the objective

def teacher_objective(images: jax.Array, onehot: jax.Array, mmt: BNMomentum, teacher,
                      teacher_vars, student_model, student_vars, rng: jax.Array, s,
                      compute_dtype, use_adv: bool, student_train: bool = False):
    """The Fast-Datafree family's synthesis loss (NAYER, Fast) on generated [0, 1] images:
    crop/flip, the teacher's normalization, then
        s.bn_weight * L_bn (blended with bn_mmt) + s.oh_weight * CE + s.adv_weight * L_adv
    (L_adv only with `use_adv`; the student in train mode with `student_train`).

    `s` holds bn_weight, oh_weight, adv_weight, bn_mmt, aug_pad, aug_flip.
    Returns (loss, (BNStats tuple, {"loss", "bn", "ce", "adv"})).
    """
    x = normalize(augment.random_crop_flip(rng, images, pad=s.aug_pad, flip=s.aug_flip),
                  teacher.meta.mean, teacher.meta.std)
    x, teacher_vars, student_vars = parallel.cast_compute((x, teacher_vars, student_vars),
                                                          compute_dtype)
    t_logits, stats = apply_with_bn_stats(teacher.model, teacher_vars, x)
    l_bn = losses.bn_moment_loss(stats, momentum_stats=mmt.stats, momentum=s.bn_mmt,
                                 has_momentum_stats=mmt.active)
    l_oh = losses.soft_cross_entropy(t_logits, onehot)
    if use_adv:
        if student_train:  # batch statistics, as the official code's student.train()
            s_logits = student_model.apply(student_vars, x, train=True,
                                           mutable=["batch_stats"])[0]
        else:
            s_logits = student_model.apply(student_vars, x, train=False)
        l_adv = losses.adversarial_kl(s_logits, t_logits)
    else:
        l_adv = jnp.zeros((), jnp.float32)
    loss = s.bn_weight * l_bn + s.oh_weight * l_oh + s.adv_weight * l_adv
    return loss, (tuple(stats), {"loss": loss, "bn": l_bn, "ce": l_oh, "adv": l_adv})
