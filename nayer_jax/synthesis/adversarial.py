"""What the alternating generator methods (DAFL, DFAD) share: one generator z -> image,
its Adam state, and one jitted generator step between the student's KD steps.

The reference loop (Fast-Datafree `datafree_kd.py`, methods dafl/dfad/zskt/dfq) runs,
`ep_steps // kd_steps` times per epoch: `g_steps` generator steps on fresh z ~ N(0, I),
then `kd_steps` student steps, each on a fresh generator batch (no pool). Here the
loop's interleave hook does the same: `interleave_every` = the reference's `kd_steps`
(5), and every `interleave_step` is `g_steps` generator steps in one jitted function
with the state and the metric sums donated. During warmup epochs (no KD) the reference
still trains the generator; `synthesize_epoch` then runs the epoch's rounds of
generator steps on their own.

A method subclasses `AlternatingGenerator`, names its metrics in `METRICS` and defines
`generator_loss(x, teacher_vars, student_vars) -> (loss, metrics)` on the teacher-
normalized generator batch `x`; the loss is minimized by the generator's Adam.

The generator's BatchNorm runs in training mode everywhere (synthesis, KD samples,
preview), as the reference keeps `generator.train()` for the whole run; its running
statistics are carried in the state but never used.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from nayer_jax import parallel
from nayer_jax.classifier import Classifier, normalize
from nayer_jax.images import to_uint8
from nayer_jax.models.generator import Generator
from nayer_jax.synthesis import MethodBase

PREVIEW_ROWS = 2
PREVIEW_SEED = 0  # fixed latents: the per-epoch grids show the same z


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
    """The generator, its Adam and the alternation (Fast-Datafree's CIFAR scripts); a
    method's Settings subclass this and add its loss weights."""
    synthesis_batch_size: int = 256  # the generator step's batch (= the KD batch there)
    nz: int = 256
    ngf: int = 64
    lr_g: float = 1e-3
    b1_g: float = 0.5
    b2_g: float = 0.999
    g_steps: int = 1                 # generator steps per round (--g_steps)
    interleave_every: int = 5        # KD steps per round (--kd_steps)
    # "sigmoid": Fast-Datafree's generator (images in [0, 1], then the teacher's
    # normalization); "normalized": the DAFL/DFAD authors' tanh -> affine-free BN output,
    # the teacher's normalized input itself (`models.generator.Generator`)
    generator_output: str = "sigmoid"
    # True: the generator's Adam LR follows the student's schedule (lr_g x the student's
    # cosine factor; VainF's DFAD_cifar.py --scheduler decays both optimizers alike);
    # False: a constant lr_g (Fast-Datafree, DAFL)
    lr_g_follows_student: bool = False

    POSITIVE: ClassVar[tuple[str, ...]] = ("synthesis_batch_size", "nz", "ngf", "lr_g",
                                           "g_steps", "interleave_every")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("b1_g", "b2_g")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "generator_output": ("sigmoid", "normalized")}


def default_config(settings_cls, method: str):
    """The loop's base fields with Fast-Datafree's CIFAR budget for these methods (batch
    256, lr 0.1, 200 epochs of 400 steps, KD from epoch 0, no crop/flip) plus the
    method's Settings."""
    from nayer_jax import distill

    c = distill.add_settings(distill.default_config(), settings_cls)
    c.update(method=method, epochs=200, warmup=0, kd_steps=400, batch_size=256, lr=0.1,
             aug_pad=0, aug_flip=False)
    return c


def build(method_cls, settings_cls, config, teacher: Classifier, student_model: nn.Module,
          rng: jax.Array, mesh=None):
    """An alternating method + its initial state (a fresh generator and its Adam)."""
    from nayer_jax import distill

    settings = distill.settings_from(config, settings_cls)
    lr_g = settings.lr_g
    if settings.lr_g_follows_student:
        lr_g = generator_schedule(settings, config.lr, config.lr_min, config.kd_steps,
                                  config.warmup, config.epochs)
    method = method_cls(settings, teacher, student_model, warmup=config.warmup,
                        kd_steps=config.kd_steps, mesh=mesh,
                        compute_dtype=jnp.dtype(config.compute_dtype), lr_g=lr_g)
    return method, method.init_state(rng)


def generator_schedule(s: GeneratorSettings, lr: float, lr_min: float, kd_steps: int,
                       warmup: int, epochs: int) -> optax.Schedule:
    """lr_g times the student's LR factor (`distill.epoch_cosine_schedule(lr, lr_min)` /
    lr) at the same epoch, counted in generator steps: g_steps per round and
    ceil(kd_steps / interleave_every) rounds per epoch; constant lr_g during warmup."""
    from nayer_jax import distill

    per_epoch = s.g_steps * math.ceil(kd_steps / s.interleave_every)
    student = distill.epoch_cosine_schedule(lr, lr_min, per_epoch, max(epochs - warmup, 1))
    return lambda count: s.lr_g * student(jnp.maximum(count - warmup * per_epoch, 0)) / lr


def images_from_output(out: jax.Array, generator_output: str, mean, std) -> jax.Array:
    """Generator output -> images: in [0, 1] from the sigmoid generator; from the
    normalized one x * std + mean, not clipped, so the KD step's normalization gives back
    the very tensor the generator step showed the teacher."""
    if generator_output == "sigmoid":
        return out
    return out * jnp.asarray(std, out.dtype) + jnp.asarray(mean, out.dtype)


@struct.dataclass
class GeneratorState:
    """The generator and its Adam state (the whole method state of DAFL and DFAD)."""
    params: Any
    batch_stats: Any
    opt_state: Any


class AlternatingGenerator(MethodBase):
    """A generator trained one step at a time between KD steps; see the module docstring.

    `settings`: a GeneratorSettings (subclass); warmup: epochs without KD (generator
    only); kd_steps: the loop's KD steps per epoch (a warmup epoch runs
    ceil(kd_steps / interleave_every) rounds); lr_g: the Adam LR or schedule (default
    the settings' constant lr_g).
    """

    METRICS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: GeneratorSettings, teacher: Classifier,
                 student_model: nn.Module, warmup: int = 0, kd_steps: int = 0, mesh=None,
                 compute_dtype=jnp.float32, lr_g: float | optax.Schedule | None = None):
        s = self.s = settings
        nz, ngf, batch_size, g_steps = s.nz, s.ngf, s.synthesis_batch_size, s.g_steps
        b1_g, b2_g, every = s.b1_g, s.b2_g, s.interleave_every
        lr_g = s.lr_g if lr_g is None else lr_g  # a schedule: see `generator_schedule`
        self.teacher = teacher
        self.student_model = student_model
        self.num_classes = teacher.meta.num_classes
        self.img_shape = tuple(teacher.meta.image_shape)
        self.nz, self.batch_size, self.g_steps = nz, batch_size, g_steps
        self.interleave_every = every
        self.warmup, self.kd_steps = warmup, kd_steps
        self.mesh = mesh or parallel.make_mesh(1)
        self.compute_dtype = compute_dtype
        self.generator = Generator(nz=nz, ngf=ngf, img_size=self.img_shape[0],
                                   channels=self.img_shape[2], output=s.generator_output)
        self.optimizer = optax.adam(lr_g, b1=b1_g, b2=b2_g)
        self._step = jax.jit(self._generator_steps, donate_argnums=(0, 1))
        self._preview = jax.jit(self._preview_images)

    # -- to define in a subclass ----------------------------------------------------------
    def generator_loss(self, x: jax.Array, teacher_vars, student_vars) -> tuple[jax.Array, dict]:
        """(loss the generator minimizes, {name in METRICS: scalar}) on normalized x."""
        raise NotImplementedError

    # -- state and generation -------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> GeneratorState:
        v = self.generator.init(rng, jnp.zeros((2, self.nz), jnp.float32), train=True)
        return GeneratorState(params=v["params"], batch_stats=v["batch_stats"],
                              opt_state=self.optimizer.init(v["params"]))

    def draw_z(self, rng: jax.Array, n: int) -> jax.Array:
        """z ~ N(0, I), (n, nz), laid out over the mesh's data axis."""
        return parallel.shard_batch(jax.random.normal(rng, (n, self.nz), jnp.float32), self.mesh)

    def generate(self, params, batch_stats, z) -> tuple[jax.Array, Any]:
        """(generator output, updated BN running statistics): BN with batch statistics."""
        out, new = self.generator.apply({"params": params, "batch_stats": batch_stats}, z,
                                        train=True, mutable=["batch_stats"])
        return out, new["batch_stats"]

    def teacher_input(self, out: jax.Array) -> jax.Array:
        """Generator output -> the teacher's normalized input."""
        if self.s.generator_output == "normalized":
            return out
        return normalize(out, self.teacher.meta.mean, self.teacher.meta.std)

    def to_images(self, out: jax.Array) -> jax.Array:
        """Generator output -> images (`images_from_output`)."""
        return images_from_output(out, self.s.generator_output, self.teacher.meta.mean,
                                  self.teacher.meta.std)

    def step_latents(self, rng: jax.Array) -> list[jax.Array]:
        """The z of each of the g_steps generator steps that `interleave_step(rng)` takes."""
        return [self.draw_z(k, self.batch_size) for k in jax.random.split(rng, self.g_steps)]

    # -- one generator step ---------------------------------------------------------------
    def _loss(self, params, batch_stats, z, teacher_vars, student_vars):
        out, new_bs = self.generate(params, batch_stats, z)
        x, teacher_vars, student_vars = parallel.cast_compute(
            (self.teacher_input(out), teacher_vars, student_vars), self.compute_dtype)
        loss, metrics = self.generator_loss(x, teacher_vars, student_vars)
        return loss, (new_bs, metrics)

    def _generator_steps(self, state: GeneratorState, sums: dict, teacher_vars, student_vars,
                         rng: jax.Array) -> tuple[GeneratorState, dict]:
        """g_steps Adam steps, each on fresh z; sums += the steps' mean metrics."""
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        total = {k: jnp.zeros((), jnp.float32) for k in self.METRICS}
        for z in self.step_latents(rng):
            (_, (new_bs, metrics)), grads = grad_fn(state.params, state.batch_stats, z,
                                                    teacher_vars, student_vars)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            state = GeneratorState(params=optax.apply_updates(state.params, updates),
                                   batch_stats=new_bs, opt_state=opt_state)
            total = {k: total[k] + metrics[k].astype(jnp.float32) for k in self.METRICS}
        return state, {k: sums[k] + total[k] / self.g_steps for k in self.METRICS}

    def interleave_step(self, state: GeneratorState, student_vars, teacher_vars,
                        rng: jax.Array, sums: dict) -> tuple[GeneratorState, dict]:
        """The loop's hook: g_steps generator steps (jitted; state and sums donated)."""
        return self._step(state, sums, teacher_vars, student_vars, rng)

    def interleave_zero_sums(self) -> dict:
        """Zero metric sums, replicated like the step's outputs (one compiled step)."""
        return parallel.replicate({k: jnp.zeros((), jnp.float32) for k in self.METRICS},
                                  self.mesh)

    # -- the epoch interface ----------------------------------------------------------------
    def warmup_rounds(self) -> int:
        return math.ceil(self.kd_steps / self.interleave_every) if self.kd_steps else 0

    def synthesize_epoch(self, state: GeneratorState, student_vars, epoch: int,
                         rng: jax.Array) -> tuple[GeneratorState, dict]:
        """Nothing once KD runs (the generator trains in `interleave_step`); in a warmup
        epoch the epoch's rounds of generator steps, as the reference."""
        if self.kd_active(epoch) or not self.warmup_rounds():
            return state, {}
        n = self.warmup_rounds()
        sums = self.interleave_zero_sums()
        for key in jax.random.split(rng, n):
            state, sums = self._step(state, sums, self.teacher.variables, student_vars, key)
        return state, {k: v / n for k, v in sums.items()}

    def kd_active(self, epoch: int) -> bool:
        return epoch >= self.warmup

    def sample(self, state: GeneratorState, rng: jax.Array, batch_size: int) -> jax.Array:
        """KD batch: `batch_size` fresh generator images, float32 (jit-safe)."""
        out, _ = self.generate(state.params, state.batch_stats, self.draw_z(rng, batch_size))
        return self.to_images(out).astype(jnp.float32)

    def _preview_images(self, state: GeneratorState) -> jax.Array:
        n = PREVIEW_ROWS * min(self.num_classes, 50)
        z = jax.random.normal(jax.random.key(PREVIEW_SEED), (n, self.nz), jnp.float32)
        return to_uint8(self.to_images(self.generate(state.params, state.batch_stats, z)[0]))

    def preview(self, state: GeneratorState) -> jax.Array:
        """uint8 images from fixed latents (unconditional: columns are not classes)."""
        return self._preview(state)
