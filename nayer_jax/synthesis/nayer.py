"""NAYER (Tran et al., CVPR 2024): noisy-layer generation from label-text embeddings.

The algorithm, top to bottom:
1. Targets: the classes [0..C-1] repeated to the synthesis batch (remainder random);
   the generator's input is the fixed label-text embedding (LTE) row of each target.
2. Generator: BatchNorm1d(LTE) -> noisy layer -> Linear -> 8x8 -> conv decoder -> sigmoid.
   The noisy layer is K = ceil(batch / C) Linear layers; chunk k of C rows goes through
   layer k. Its weights are re-drawn from N(0, 1) (bias 0) at the start of every
   synthesis loop, so the same text yields new images every loop ("K-to-1").
   The whole generator is re-initialized every `g_life` epochs.
3. Each loop: a fresh Adam(lr_g, 0.5, 0.999) over generator + noisy layer, `g_steps`
   steps of  bn_w * L_bn + oh_w * CE(teacher(aug(x)), y) + adv_w * L_adv  (L_adv only
   after warmup), where L_bn matches the teacher's BN running statistics, blended with
   an exponential average of earlier loops' statistics (`bn_mmt`).
4. The batch with the lowest loss over the loop's steps goes into the image pool.

Every step is one jitted function with donated buffers; the loss and the best batch are
tracked on device, and nothing is read back until the loop ends.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from nayer_jax import parallel, pool as pool_lib
from nayer_jax.classifier import Classifier
from nayer_jax.models import layers
from nayer_jax.errors import ConfigError
from nayer_jax.synthesis import common
from nayer_jax.synthesis.common import (BNMomentum, init_bn_momentum, keep_best, make_targets,
                                       teacher_bn_shapes, teacher_objective,
                                       update_bn_momentum, zero_bn_stats)


# ----------------------------------------------------------------------------- generator

class NoisyLayer(nn.Module):
    """K separate Linear(le_size -> features) layers; chunk k of `chunk` rows uses layer k.

    (N, le_size) -> (N, features). Weights ~ N(0, 1), bias 0 (the re-draw distribution).
    """
    num_layers: int
    chunk: int  # rows per layer: the number of classes
    features: int

    @nn.compact
    def __call__(self, x):
        n, d = x.shape
        kernel = self.param("kernel", nn.initializers.normal(1.0), (self.num_layers, d, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.num_layers, self.features))
        rows = self.num_layers * self.chunk
        if n > rows:
            raise ValueError(f"noisy layer covers {rows} rows, got a batch of {n}")
        x = jnp.pad(x, ((0, rows - n), (0, 0))).reshape(self.num_layers, self.chunk, d)
        out = jnp.einsum("kcd,kdf->kcf", x, kernel) + bias[:, None, :]
        return out.reshape(rows, self.features)[:n]





class NLGenerator(nn.Module):
    """NAYER's generator for 32x32 (CIFAR) images; output NHWC in [0, 1]."""
    num_classes: int
    num_noisy: int
    le_emb_size: int = 1000
    ngf: int = 64
    img_size: int = 32
    channels: int = 3

    @nn.compact
    def __call__(self, le_rows, train: bool = True):  # le_rows: (N, le_size)
        s = self.img_size // 4
        x = layers.batch_norm(train, name="n1")(le_rows)
        x = NoisyLayer(self.num_noisy, self.num_classes, self.le_emb_size, name="noisy")(x)
        x = layers.dense(self.ngf * 2 * s * s, name="l1", kernel_init=layers.torch_default_init)(x)
        x = x.reshape(x.shape[0], s, s, self.ngf * 2)
        x = layers.batch_norm(train, name="bn0")(x)
        # up x2 -> conv3x3, computed as one polyphase layer (exact, 2.25x fewer FLOPs)
        x = layers.leaky_relu(layers.batch_norm(train, name="bn1")(
            layers.upsample_conv3x3(self.ngf * 2, name="conv1", kernel_init=layers.torch_default_init)(x)))
        x = layers.leaky_relu(layers.batch_norm(train, name="bn2")(
            layers.upsample_conv3x3(self.ngf, name="conv2", kernel_init=layers.torch_default_init)(x)))
        x = layers.conv(self.channels, 3, bias=True, name="conv3", kernel_init=layers.torch_default_init)(x)
        return nn.sigmoid(x)


class NLGeneratorDeep(nn.Module):
    """NAYER's 224x224 (ImageNet) generator: 14x14 seed, four up-sampling conv stages."""
    num_classes: int
    num_noisy: int
    le_emb_size: int = 1000
    ngf: int = 64
    img_size: int = 224
    channels: int = 3

    @nn.compact
    def __call__(self, le_rows, train: bool = True):
        s = self.img_size // 16
        x = layers.batch_norm(train, name="n1")(le_rows)
        x = NoisyLayer(self.num_noisy, self.num_classes, self.le_emb_size, name="noisy")(x)
        x = layers.dense(self.ngf * 2 * s * s, name="l1", kernel_init=layers.torch_default_init)(x)
        x = x.reshape(x.shape[0], s, s, self.ngf * 2)
        widths = (2 * self.ngf, 2 * self.ngf, self.ngf, self.ngf, self.ngf)
        for i, width in enumerate(widths):
            if i == 0:
                x = layers.conv(width, 3, name="conv0", kernel_init=layers.torch_default_init)(x)
            else:  # up x2 -> conv3x3 as one polyphase layer
                x = layers.upsample_conv3x3(width, name=f"conv{i}",
                                            kernel_init=layers.torch_default_init)(x)
            x = layers.leaky_relu(layers.batch_norm(train, name=f"bn{i}")(x))
        x = layers.conv(self.channels, 3, bias=True, name="conv_out", kernel_init=layers.torch_default_init)(x)
        return nn.sigmoid(x)


# ------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class NayerSettings(common.TeacherObjectiveSettings):
    """The published hyperparameters (CIFAR defaults of the official scripts; the loss
    weights and augmentation are `TeacherObjectiveSettings`')."""
    synthesis_batch_size: int = 400
    g_steps: int = 30
    g_loops: int = 2          # synthesis loops per epoch after warmup
    gwp_loops: int = 10       # synthesis loops per warmup epoch
    warmup: int = 20          # epochs without KD (and without L_adv)
    g_life: int = 10          # re-initialize the whole generator every g_life epochs
    lr_g: float = 4e-3
    le_emb_size: int = 1000
    ngf: int = 64
    pool_skip_loops: int = 0  # the run's first N synthesis loops stay out of the pool (0: as published)

    POSITIVE: ClassVar[tuple[str, ...]] = ("synthesis_batch_size", "g_steps", "g_loops",
                                           "gwp_loops", "g_life", "lr_g", "le_emb_size", "ngf")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("warmup", "bn_weight", "oh_weight", "adv_weight",
                                               "bn_mmt", "aug_pad", "pool_skip_loops")


def default_config():
    """A NAYER run config as published (CIFAR-10 official scripts): the loop's base fields
    (`distill.default_config`, NAYER's KD) plus `NayerSettings`, the LTE and the pool."""
    from nayer_jax import distill

    c = distill.add_settings(distill.default_config(), NayerSettings)
    c.method = "nayer"
    c.lte = ""           # "shared:cifar10", "asset:NAME" or a .npy path
    c.pool_capacity = 0  # 0: every image the run synthesizes
    return c


# ---------------------------------------------------------------------------- the state

@struct.dataclass
class NayerState:
    gen_params: Any
    gen_batch_stats: Any
    mmt: BNMomentum
    pool: pool_lib.ImagePool


@struct.dataclass
class LoopCarry:
    """What one synthesis loop threads through its g_steps (all on device)."""
    params: Any
    batch_stats: Any
    opt_state: Any
    best_loss: jax.Array
    best_images: jax.Array
    last_stats: Any  # BNStats of the latest step, for the bn_mmt update
    sums: dict       # running sums of the loss terms, for logging


class Nayer(common.PoolMethod):
    """NAYER synthesis bound to a teacher, a student architecture and an LTE table."""

    def __init__(self, settings: NayerSettings, teacher: Classifier, student_model: nn.Module,
                 lte: np.ndarray, img_size: int, channels: int = 3, mesh=None,
                 compute_dtype=jnp.float32):
        self.s = settings
        self.mesh = mesh or parallel.make_mesh(1)
        self.compute_dtype = compute_dtype
        self.teacher = teacher
        self.student_model = student_model
        self.num_classes = int(lte.shape[0])
        self.lte = parallel.replicate(jnp.asarray(lte, jnp.float32), self.mesh)
        self.img_shape = (img_size, img_size, channels)
        num_noisy = math.ceil(settings.synthesis_batch_size / self.num_classes)
        gen_cls = NLGeneratorDeep if img_size >= 128 else NLGenerator
        self.generator = gen_cls(num_classes=self.num_classes, num_noisy=num_noisy,
                                 le_emb_size=settings.le_emb_size, ngf=settings.ngf,
                                 img_size=img_size, channels=channels)
        self.optimizer = optax.adam(settings.lr_g, b1=0.5, b2=0.999)
        self._bn_shapes = teacher_bn_shapes(teacher, self.img_shape)
        self._step = jax.jit(self._synthesis_step, static_argnames=("use_adv", "student_train"),
                             donate_argnums=(0,))
        self._finish = jax.jit(self._finish_loop, donate_argnums=(0,),
                               static_argnames=("to_pool",))
        self._init_generator = jax.jit(self.init_generator)

    # -- initialization ---------------------------------------------------------------
    def init_generator(self, rng: jax.Array) -> tuple[Any, Any]:
        rows = self.lte[make_targets(self.num_classes, self.s.synthesis_batch_size, rng)]
        v = self.generator.init(rng, rows, train=True)
        return v["params"], v["batch_stats"]

    def init_state(self, rng: jax.Array, pool_capacity: int) -> NayerState:
        params, bs = self.init_generator(rng)
        mmt = init_bn_momentum(self._bn_shapes)
        return NayerState(gen_params=params, gen_batch_stats=bs, mmt=mmt,
                          pool=pool_lib.create_pool(pool_capacity, self.img_shape))

    def redraw_noisy_layer(self, params: Any, rng: jax.Array) -> Any:
        """K-to-1: fresh N(0, 1) weights and zero bias for every noisy linear layer."""
        noisy = params["noisy"]
        new = {"kernel": jax.random.normal(rng, noisy["kernel"].shape, jnp.float32),
               "bias": jnp.zeros_like(noisy["bias"])}
        return {**params, "noisy": new}

    # -- one generator step --------------------------------------------------------------
    def _loss(self, params, batch_stats, rows, onehot, mmt: BNMomentum, teacher_vars,
              student_vars, rng, use_adv: bool, student_train: bool = False):
        rows = parallel.shard_batch(rows, self.mesh)  # BN stats below are global-batch stats
        images, new_vars = self.generator.apply({"params": params, "batch_stats": batch_stats},
                                                rows, train=True, mutable=["batch_stats"])
        loss, (stats, terms) = teacher_objective(
            images, onehot, mmt, self.teacher, teacher_vars, self.student_model, student_vars,
            rng, self.s, self.compute_dtype, use_adv, student_train)
        return loss, (images, new_vars["batch_stats"], stats, terms)

    def _synthesis_step(self, carry: LoopCarry, rows, onehot, mmt, teacher_vars, student_vars,
                        rng, use_adv: bool, student_train: bool = False) -> LoopCarry:
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        (loss, (images, new_bs, last, terms)), grads = grad_fn(
            carry.params, carry.batch_stats, rows, onehot, mmt, teacher_vars, student_vars, rng,
            use_adv, student_train)
        updates, opt_state = self.optimizer.update(grads, carry.opt_state, carry.params)
        # the images of this step, made before the update
        best_loss, best_images = keep_best(carry.best_loss, carry.best_images, loss, images)
        return LoopCarry(
            params=optax.apply_updates(carry.params, updates), batch_stats=new_bs,
            opt_state=opt_state, best_loss=best_loss, best_images=best_images,
            last_stats=last,
            sums=jax.tree.map(lambda a, b: a + b, carry.sums, terms))

    def _finish_loop(self, state: NayerState, carry: LoopCarry, to_pool: bool = True
                     ) -> NayerState:
        """bn_mmt update from the loop's last step, best batch into the pool (`to_pool`)."""
        mmt = update_bn_momentum(state.mmt, carry.last_stats, self.s.bn_mmt)
        return NayerState(gen_params=carry.params, gen_batch_stats=carry.batch_stats, mmt=mmt,
                          pool=pool_lib.add(state.pool, carry.best_images) if to_pool
                          else state.pool)

    # -- one synthesis loop / one epoch ------------------------------------------------
    def init_loop(self, state: NayerState, rng: jax.Array) -> tuple[LoopCarry, jax.Array, jax.Array]:
        """A synthesis loop's start: (carry, LTE rows, one-hot targets) with the noisy layer
        re-drawn and a fresh Adam; `step` then takes it through the g_steps."""
        k_noise, k_targets = jax.random.split(rng)
        targets = make_targets(self.num_classes, self.s.synthesis_batch_size, k_targets)
        rows = self.lte[targets]
        onehot = jax.nn.one_hot(targets, self.num_classes)
        params = self.redraw_noisy_layer(state.gen_params, k_noise)
        zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss", "bn", "ce", "adv")}
        carry = LoopCarry(params=params, batch_stats=state.gen_batch_stats,
                          opt_state=self.optimizer.init(params),
                          best_loss=jnp.asarray(jnp.inf, jnp.float32),
                          best_images=jnp.zeros((self.s.synthesis_batch_size, *self.img_shape)),
                          last_stats=zero_bn_stats(self._bn_shapes),
                          sums=zeros)
        return parallel.replicate(carry, self.mesh), rows, onehot

    def step(self, carry: LoopCarry, rows, onehot, state: NayerState, student_vars,
             rng: jax.Array, use_adv: bool, student_train: bool = False) -> LoopCarry:
        """One jitted generator step (carry donated). `init_loop`'s carry shares the
        generator's buffers with `state`, so the first step consumes those of `state`."""
        return self._step(carry, rows, onehot, state.mmt, self.teacher.variables, student_vars,
                          rng, use_adv=use_adv, student_train=student_train)

    def synthesis_loop(self, state: NayerState, student_vars, rng: jax.Array,
                       use_adv: bool, student_train: bool = False,
                       to_pool: bool = True) -> tuple[NayerState, dict]:
        """Re-draw the noisy layer, run g_steps with a fresh Adam, pool the best batch.
        `state` is consumed (donated): use the returned one.

        `student_train`: L_adv with the student's batch BN statistics (train mode) instead
        of its running ones; the official code does so from an epoch's second loop on.
        """
        k_init, k_steps = jax.random.split(rng)
        carry, rows, onehot = self.init_loop(state, k_init)
        for key in jax.random.split(k_steps, self.s.g_steps):
            carry = self.step(carry, rows, onehot, state, student_vars, key, use_adv,
                              student_train)
        metrics = {k: v / self.s.g_steps for k, v in carry.sums.items()}
        metrics["best_loss"] = carry.best_loss
        return self._finish(state, carry, to_pool=to_pool), metrics

    def synthesize_epoch(self, state: NayerState, student_vars, epoch: int,
                         rng: jax.Array) -> tuple[NayerState, dict]:
        """All synthesis of one epoch (device values in the returned metrics)."""
        k_init, k_loops = jax.random.split(rng)
        if self.reinit_generator(epoch):
            params, bs = parallel.replicate(self._init_generator(k_init), self.mesh)
            state = state.replace(gen_params=params, gen_batch_stats=bs)
        warm = epoch < self.s.warmup
        n_loops = self.s.gwp_loops if warm else self.s.g_loops
        all_metrics = []
        first = self.loops_before(epoch)
        for i, key in enumerate(jax.random.split(k_loops, n_loops)):
            # the official code: student in eval mode in the first loop, train mode after
            state, m = self.synthesis_loop(state, student_vars, key, use_adv=not warm,
                                           student_train=i > 0 and not warm,
                                           to_pool=first + i >= self.s.pool_skip_loops)
            all_metrics.append(m)
        return state, jax.tree.map(lambda *a: jnp.mean(jnp.stack(a)), *all_metrics)

    def loops_before(self, epoch: int) -> int:
        """Synthesis loops the run has done before `epoch` (warmup loops, then g_loops)."""
        w = min(epoch, self.s.warmup)
        return w * self.s.gwp_loops + (epoch - w) * self.s.g_loops

    def reinit_generator(self, epoch: int) -> bool:
        """The official g_life rule: every g_life epochs, counted from 0 and from warmup."""
        g, w = self.s.g_life, self.s.warmup
        return epoch > 0 and (epoch % g == 0 or (epoch - w) % g == 0)

    def kd_active(self, epoch: int) -> bool:
        return epoch >= self.s.warmup

    def preview(self, state: NayerState) -> jax.Array:
        """The latest pooled batch (uint8), for the per-epoch PNG grid; class k in column k."""
        return pool_lib.latest(state.pool, min(state.pool.capacity, 100))


def build(config, teacher: Classifier, student_model: nn.Module, rng: jax.Array, mesh=None):
    """NAYER method + initial state from a run config (see nayer_jax/configs/)."""
    from nayer_jax import distill
    from nayer_jax.lte import resolve_lte

    settings = distill.settings_from(config, NayerSettings)
    lte = resolve_lte(config.lte, teacher.meta.num_classes)
    method = Nayer(settings, teacher, student_model, lte, teacher.meta.input_size,
                   channels=teacher.meta.channels, mesh=mesh,
                   compute_dtype=jnp.dtype(config.compute_dtype))
    first_kd = settings.warmup + 1  # loops up to and including the first KD epoch's
    if config.epochs > settings.warmup and settings.pool_skip_loops >= method.loops_before(first_kd):
        raise ConfigError(f"config.pool_skip_loops={settings.pool_skip_loops}: expected < "
                          f"{method.loops_before(first_kd)}, the synthesis loops up to the first "
                          "KD epoch (its pool would be empty)")
    loops = method.loops_before(config.epochs) - settings.pool_skip_loops
    capacity = config.pool_capacity or loops * settings.synthesis_batch_size
    return method, method.init_state(rng, capacity)
