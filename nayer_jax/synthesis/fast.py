"""Fast (Fang et al., AAAI 2022, "Up to 100x Faster Data-free Knowledge Distillation").

A generator that persists across batches, whose initialization is meta-learned so that a
few steps (Fast-2/5/10: `g_steps` = 2/5/10) adapt it to each new batch.

The algorithm, top to bottom (`batches_per_epoch` synthesis batches per epoch, one in
the reference, then KD from the pool):
1. State: the meta generator θ (the DCGAN-style `models.generator.Generator`:
   z -> FC -> BN -> up -> conv -> BN -> LeakyReLU -> up -> conv -> BN -> LeakyReLU ->
   conv -> sigmoid, images in [0, 1]), its outer Adam(lr_g * g_steps, b1_g, b2_g), which
   persists across batches, the bn_mmt statistics and the image pool.
2. Each batch: targets y (the classes cycled over the batch), a fresh latent
   z ~ N(0, I), a copy θ_0 = θ of the meta generator and a fresh inner Adam over
   (θ_k: lr_g, z: lr_z), both with betas (b1_g, b2_g).
3. Inner steps k = 0..g_steps-1: x = G(z; θ_k) (BN with batch statistics), crop + flip,
       L_k = bn_weight * L_bn + oh_weight * CE(teacher(x), y) + adv_weight * L_adv
   L_bn: DeepInversion's BN-statistics norm, the batch statistics blended with the
   running average of earlier batches (`bn_mmt`); L_adv: minus the KL(teacher || student)
   on the samples where the two agree (student in eval mode), only from the end of
   warmup on. One Adam step on (θ_k, z); the lowest-loss batch is kept.
4. Meta update (first order): FOMAML (`meta="fomaml"`, the reference scripts'
   `--is_maml 1`) steps the outer Adam with the sum of the inner gradients,
       g_meta = sum_k ∇_θ L_k(θ_k),
   Reptile (`meta="reptile"`) with g_meta = reptile_scale * (θ - θ_K).
5. bn_mmt average updated with the last inner step's statistics; the best batch goes
   into the pool, which keeps every batch of the run; KD samples it uniformly.

Every step is one jitted function with the carry donated; the meta gradient, loss sums
and the best batch stay on device until the batch is done.

Where paper and reference code (zju-vipa/Fast-Datafree, datafree/synthesis/fast_meta.py
`FastMetaSynthesizer`, scripts/fast_cifar.sh) differ, the code is followed:
- the meta gradient is the *sum* of the inner gradients (not an average) with the outer
  learning rate lr_g * g_steps; Reptile's scale is the code's hard-wired 67;
- L_adv starts one epoch before KD (the code counts synthesis calls from 1:
  `ep >= warmup`), i.e. at epoch warmup - 1;
- `reset_l0` as in the scripts (`--reset_l0 1`): at the synthesis call numbered
  warmup + reset_l0_epoch (epoch warmup + reset_l0_epoch - 1) the FC layer and the first
  BN are re-drawn (weights N(0, 0.02), biases 0); 0 disables it.
Departures: the targets cycle through the classes (the code draws them uniformly at
random; same expected distribution, every batch balanced, class k in preview column k);
with `batches_per_epoch` > 1 an epoch's batches are all synthesized before its KD steps
(the reference alternates ep_steps // kd_steps rounds of one batch + kd_steps KD steps);
the fast generator's BN running averages are not carried (the generator only ever runs
with batch statistics, so they never affect an image); the kornia crop/flip is
`augment.random_crop_flip` (same crop padding 4 and flip).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from nayer_jax import parallel, pool as pool_lib
from nayer_jax.classifier import Classifier
from nayer_jax.errors import ConfigError
from nayer_jax.models.generator import Generator
from nayer_jax.synthesis import common


# ------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class FastSettings(common.TeacherObjectiveSettings):
    """scripts/fast_cifar.sh (Fast-5, resnet34 -> resnet18); `fast_n` sets Fast-2/5/10.
    The loss weights and augmentation are `TeacherObjectiveSettings`' (the same script
    values as NAYER's)."""
    synthesis_batch_size: int = 256
    g_steps: int = 5            # inner generator steps per batch: Fast-2/5/10
    batches_per_epoch: int = 1  # the reference's ep_steps // kd_steps (400 // 400)
    warmup: int = 20            # epochs without KD (L_adv from epoch warmup - 1)
    lr_g: float = 3e-3
    lr_z: float = 0.01
    b1_g: float = 0.5
    b2_g: float = 0.999
    nz: int = 256
    ngf: int = 64
    meta: str = "fomaml"        # "fomaml" (--is_maml 1) or "reptile" (--is_maml 0)
    reptile_scale: float = 67.0
    reset_l0_epoch: int = 120   # reset_l0 at epoch warmup + this - 1; 0: never

    POSITIVE: ClassVar[tuple[str, ...]] = ("synthesis_batch_size", "g_steps",
                                           "batches_per_epoch", "lr_g", "nz", "ngf")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("warmup", "lr_z", "b1_g", "b2_g", "bn_weight",
                                               "oh_weight", "adv_weight", "bn_mmt",
                                               "reptile_scale", "reset_l0_epoch", "aug_pad")


# Fast-N of scripts/fast_cifar.sh: g_steps -> (lr_g, lr_z)
FAST_N = {2: (5e-3, 0.015), 5: (3e-3, 0.01), 10: (2e-3, 0.01)}


def fast_n(config, n: int):
    """Fast-2/5/10: `g_steps` = n with the scripts' generator and latent learning rates."""
    if n not in FAST_N:
        raise ConfigError(f"Fast-{n}: expected one of {sorted(FAST_N)} (scripts/fast_cifar.sh)")
    config.g_steps = n
    config.lr_g, config.lr_z = FAST_N[n]
    return config


def default_config():
    """Fast-5 as in scripts/fast_cifar.sh: the loop's base fields with its KD (batch 256,
    lr 0.2, 400 KD steps, T 20, 220 epochs of which 20 warmup) plus `FastSettings`."""
    from nayer_jax import distill

    c = distill.add_settings(distill.default_config(), FastSettings)
    c.method = "fast"
    c.epochs = 220
    c.batch_size = 256
    c.lr = 0.2
    c.pool_capacity = 0  # 0: every batch the run synthesizes
    return c


# ---------------------------------------------------------------------------- the state

@struct.dataclass
class FastState:
    gen_params: Any          # the meta generator θ
    gen_batch_stats: Any     # its BN running averages (unused: BN runs on batch statistics)
    meta_opt_state: Any      # the outer Adam, persistent across batches
    mmt: common.BNMomentum
    pool: pool_lib.ImagePool


@struct.dataclass
class InnerCarry:
    """What one batch's inner loop threads through its g_steps (all on device)."""
    params: Any              # θ_k
    z: jax.Array
    opt_g: Any
    opt_z: Any
    meta_grad: Any           # FOMAML: sum of the inner gradients so far
    best_loss: jax.Array
    best_images: jax.Array
    last_stats: Any          # BNStats of the latest step, for the bn_mmt update
    sums: dict


LOSS_TERMS = ("loss", "bn", "ce", "adv")


class Fast(common.PoolMethod):
    """Fast (meta-learned generator initialization) bound to a teacher and a student."""

    def __init__(self, settings: FastSettings, teacher: Classifier, student_model: nn.Module,
                 generator: nn.Module | None = None, mesh=None, compute_dtype=jnp.float32):
        if settings.meta not in ("fomaml", "reptile"):
            raise ConfigError(f"config.meta={settings.meta!r}: expected 'fomaml' or 'reptile'")
        self._bind(settings, teacher, student_model, mesh, compute_dtype)
        self.generator = generator or Generator(
            nz=settings.nz, ngf=settings.ngf, img_size=self.img_shape[0],
            channels=self.img_shape[2])
        b = dict(b1=settings.b1_g, b2=settings.b2_g)
        self.opt_g = optax.adam(settings.lr_g, **b)
        self.opt_z = optax.adam(settings.lr_z, **b)
        self.meta_optimizer = optax.adam(settings.lr_g * settings.g_steps, **b)
        self._bn_shapes = common.teacher_bn_shapes(teacher, self.img_shape)
        self._init_batch = jax.jit(self.init_batch)
        self._step = jax.jit(self._inner_step, static_argnames=("use_adv",), donate_argnums=(0,))
        self._finish = jax.jit(self._finish_batch, donate_argnums=(0,))
        self._reset_l0 = jax.jit(self.reset_l0)

    # -- initialization ---------------------------------------------------------------
    def init_state(self, rng: jax.Array, pool_capacity: int) -> FastState:
        v = self.generator.init(rng, jnp.zeros((2, self.s.nz), jnp.float32), train=True)
        return FastState(gen_params=v["params"], gen_batch_stats=v["batch_stats"],
                         meta_opt_state=self.meta_optimizer.init(v["params"]),
                         mmt=common.init_bn_momentum(self._bn_shapes),
                         pool=pool_lib.create_pool(pool_capacity, self.img_shape))

    def reset_l0(self, params: Any, rng: jax.Array) -> Any:
        """The code's `reset_l0`: FC and first-BN weights ~ N(0, 0.02), their biases 0."""
        out = dict(params)
        for name, key in zip(self.generator.FIRST_LAYERS, jax.random.split(rng, 2)):
            layer = dict(params[name])
            weight = "kernel" if "kernel" in layer else "scale"
            layer[weight] = 0.02 * jax.random.normal(key, layer[weight].shape, jnp.float32)
            layer["bias"] = jnp.zeros_like(layer["bias"])
            out[name] = layer
        return out

    # -- one inner step ---------------------------------------------------------------
    def batch_loss(self, params, z, batch_stats, onehot, mmt: common.BNMomentum, teacher_vars,
                   student_vars, rng, use_adv: bool):
        """L_k at (θ_k, z) -> (loss, (images, BN stats, terms))."""
        z = parallel.shard_batch(z, self.mesh)  # BN stats below are global-batch stats
        images = self.generator.apply({"params": params, "batch_stats": batch_stats}, z,
                                      train=True, mutable=["batch_stats"])[0]
        loss, (stats, terms) = common.teacher_objective(
            images, onehot, mmt, self.teacher, teacher_vars, self.student_model, student_vars,
            rng, self.s, self.compute_dtype, use_adv)
        return loss, (images, stats, terms)

    def _inner_step(self, carry: InnerCarry, onehot, batch_stats, mmt, teacher_vars,
                    student_vars, rng, use_adv: bool) -> InnerCarry:
        grad_fn = jax.value_and_grad(self.batch_loss, argnums=(0, 1), has_aux=True)
        (loss, (images, stats, terms)), (g_params, g_z) = grad_fn(
            carry.params, carry.z, batch_stats, onehot, mmt, teacher_vars, student_vars, rng,
            use_adv)
        best_loss, best_images = common.keep_best(carry.best_loss, carry.best_images, loss,
                                                  images)
        meta_grad = carry.meta_grad
        if self.s.meta == "fomaml":
            meta_grad = jax.tree.map(jnp.add, meta_grad, g_params)
        up_g, opt_g = self.opt_g.update(g_params, carry.opt_g, carry.params)
        up_z, opt_z = self.opt_z.update(g_z, carry.opt_z, carry.z)
        return InnerCarry(params=optax.apply_updates(carry.params, up_g),
                          z=optax.apply_updates(carry.z, up_z), opt_g=opt_g, opt_z=opt_z,
                          meta_grad=meta_grad, best_loss=best_loss, best_images=best_images,
                          last_stats=stats, sums=jax.tree.map(jnp.add, carry.sums, terms))

    # -- one batch ------------------------------------------------------------------------
    def init_batch(self, state: FastState, rng: jax.Array) -> tuple[InnerCarry, jax.Array]:
        """(carry: θ_0 = a copy of θ, z ~ N(0, I), fresh inner Adams; one-hot targets)."""
        k_z, k_y = jax.random.split(rng)
        n = self.s.synthesis_batch_size
        z = jax.random.normal(k_z, (n, self.s.nz), jnp.float32)
        onehot = jax.nn.one_hot(common.make_targets(self.num_classes, n, k_y), self.num_classes)
        params = jax.tree.map(jnp.copy, state.gen_params)  # the carry is donated, θ is kept
        carry = InnerCarry(
            params=params, z=z, opt_g=self.opt_g.init(params), opt_z=self.opt_z.init(z),
            meta_grad=jax.tree.map(jnp.zeros_like, params),
            best_loss=jnp.asarray(jnp.inf, jnp.float32),
            best_images=jnp.zeros((n, *self.img_shape), jnp.float32),
            last_stats=common.zero_bn_stats(self._bn_shapes),
            sums={k: jnp.zeros((), jnp.float32) for k in LOSS_TERMS})
        return carry, onehot

    def step(self, carry: InnerCarry, onehot, state: FastState, student_vars, rng: jax.Array,
             use_adv: bool) -> InnerCarry:
        """One jitted inner step (carry donated)."""
        return self._step(carry, onehot, state.gen_batch_stats, state.mmt,
                          self.teacher.variables, student_vars, rng, use_adv=use_adv)

    def meta_gradient(self, state: FastState, carry: InnerCarry) -> Any:
        """The first-order meta gradient of the batch (see step 4 of the docstring)."""
        if self.s.meta == "fomaml":
            return carry.meta_grad
        return jax.tree.map(lambda a, b: self.s.reptile_scale * (a - b), state.gen_params,
                            carry.params)

    def _finish_batch(self, state: FastState, carry: InnerCarry) -> tuple[FastState, dict]:
        """Outer Adam step on θ, bn_mmt update, best batch into the pool."""
        updates, meta_opt = self.meta_optimizer.update(self.meta_gradient(state, carry),
                                                       state.meta_opt_state, state.gen_params)
        metrics = {k: v / self.s.g_steps for k, v in carry.sums.items()}
        metrics["best_loss"] = carry.best_loss
        return FastState(gen_params=optax.apply_updates(state.gen_params, updates),
                         gen_batch_stats=state.gen_batch_stats, meta_opt_state=meta_opt,
                         mmt=common.update_bn_momentum(state.mmt, carry.last_stats,
                                                       self.s.bn_mmt),
                         pool=pool_lib.add(state.pool, carry.best_images)), metrics

    def synthesize_batch(self, state: FastState, student_vars, rng: jax.Array,
                         use_adv: bool) -> tuple[FastState, dict]:
        """g_steps inner steps from θ, then the meta update; the best batch into the pool."""
        k_init, k_steps = jax.random.split(rng)
        carry, onehot = parallel.replicate(self._init_batch(state, k_init), self.mesh)
        for key in jax.random.split(k_steps, self.s.g_steps):
            carry = self.step(carry, onehot, state, student_vars, key, use_adv)
        return self._finish(state, carry)

    # -- the contract -------------------------------------------------------------------
    def adv_active(self, epoch: int) -> bool:
        """The code's `ep >= ep_start` with ep counted from 1: from epoch warmup - 1."""
        return self.s.adv_weight > 0 and epoch + 1 >= self.s.warmup

    def resets_l0(self, epoch: int) -> bool:
        return self.s.reset_l0_epoch > 0 and epoch + 1 == self.s.warmup + self.s.reset_l0_epoch

    def synthesize_epoch(self, state: FastState, student_vars, epoch: int,
                         rng: jax.Array) -> tuple[FastState, dict]:
        k_reset, k_batches = jax.random.split(rng)
        if self.resets_l0(epoch):
            state = state.replace(gen_params=self._reset_l0(state.gen_params, k_reset))
        all_metrics = []
        for key in jax.random.split(k_batches, self.s.batches_per_epoch):
            state, metrics = self.synthesize_batch(state, student_vars, key,
                                                   self.adv_active(epoch))
            all_metrics.append(metrics)
        return state, jax.tree.map(lambda *a: jnp.mean(jnp.stack(a)), *all_metrics)

    def kd_active(self, epoch: int) -> bool:
        return epoch >= self.s.warmup


def build(config, teacher: Classifier, student_model: nn.Module, rng: jax.Array, mesh=None):
    """Fast method + initial state (meta generator, outer Adam, a pool for every batch)."""
    from nayer_jax import distill

    settings = distill.settings_from(config, FastSettings)
    method = Fast(settings, teacher, student_model, mesh=mesh,
                  compute_dtype=jnp.dtype(config.compute_dtype))
    capacity = config.pool_capacity or (config.epochs * settings.batches_per_epoch
                                        * settings.synthesis_batch_size)
    return method, method.init_state(rng, capacity)
