"""Knowledge distillation shared by every synthesis method: base config, KD step, the loop.

`default_config()` holds the fields the loop and the KD step read (NAYER's published KD
on CIFAR); a method's config adds its Settings dataclass to it (`add_settings`).
`train_and_evaluate` (nayer_jax/loop.py) is the only place that sequences synthesis,
KD, evaluation, logging and checkpoints; methods plug in through the contract of
`nayer_jax.synthesis`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from nayer_jax import augment, config_check, losses, parallel
from nayer_jax.classifier import Classifier, normalize


# ------------------------------------------------------------------------- the config

def default_config() -> ml_collections.ConfigDict:
    """Fields of the loop and the KD step, with NAYER's published CIFAR values."""
    c = ml_collections.ConfigDict()
    c.method = ""
    c.teacher = ""        # classifier dir, or "torch:ARCH:PATH[:NUM_CLASSES]"
    c.student = ""
    c.eval_data = ""      # a nayer_jax.data spec of the real test set
    c.eval_batch_size = 500
    c.eval_limit = 0      # 0: the whole test set
    c.seed = 0
    c.epochs = 120
    c.warmup = 0          # epochs without KD at the start (the student's cosine starts after)
    # knowledge distillation
    c.kd_steps = 400
    c.batch_size = 512
    c.temperature = 20.0
    c.kd_loss = "kl"      # "kl": KL(teacher || student) * T^2; "l1": mean |logit difference|
    c.lr = 0.2
    c.lr_min = 2e-4
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.aug_pad = 4         # KD augmentation: random crop with this padding ...
    c.aug_flip = True     # ... and horizontal flip
    # devices
    c.num_devices = 0     # 0: every device
    c.compute_dtype = "float32"  # or "bfloat16" (forward passes; params stay float32)
    # bookkeeping
    c.checkpoint_every = 1       # epochs
    c.checkpoint_every_s = 0.0   # > 0: also checkpoint inside an epoch after this many seconds
    c.keep_checkpoints = 2
    c.tensorboard = True         # TensorBoard event file beside metrics.jsonl
    return c


def add_settings(c: ml_collections.ConfigDict, settings_cls) -> ml_collections.ConfigDict:
    """Add (or set) one field per field of a Settings dataclass, with its default."""
    for f in dataclasses.fields(settings_cls):
        c[f.name] = f.default
    return c


def settings_from(config, settings_cls):
    """The Settings dataclass read from a config holding all of its fields; ranges checked."""
    settings = settings_cls(**{f.name: config[f.name] for f in dataclasses.fields(settings_cls)})
    config_check.check_settings(settings)
    return settings


# ------------------------------------------------------------------------- the student

class StudentState(train_state.TrainState):
    batch_stats: Any = None

    @classmethod
    def create(cls, *, apply_fn, params, tx, **kwargs) -> "StudentState":
        """flax's `create` with the step counter as an int32 array. flax's Python 0 is a
        weak-typed host scalar, so a jitted step's first call (host scalar) and second call
        (the device array it returned) compiled separately: every run compiled its KD step
        twice."""
        return super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs).replace(
            step=jnp.zeros((), jnp.int32))


def epoch_cosine_schedule(base_lr: float, min_lr: float, steps_per_epoch: int,
                          num_epochs: int) -> optax.Schedule:
    """torch CosineAnnealingLR(T_max=num_epochs, eta_min=min_lr) stepped once per epoch."""
    def schedule(count):
        epoch = jnp.minimum(count // steps_per_epoch, num_epochs)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + jnp.cos(jnp.pi * epoch / num_epochs))
    return schedule


def create_student_state(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...],
                         lr: float | optax.Schedule, momentum: float = 0.9,
                         weight_decay: float = 1e-4) -> StudentState:
    """Fresh student with torch-style SGD (weight decay added to the gradient, then momentum)."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    tx = optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(lr, momentum=momentum))
    return StudentState.create(apply_fn=model.apply, params=variables["params"],
                               batch_stats=variables.get("batch_stats", {}), tx=tx)


def student_variables(state: StudentState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


# ------------------------------------------------------------------------- the KD step

def kd_objective(name: str, temperature: float) -> Callable:
    """`(student_logits, teacher_logits) -> loss` the student minimizes."""
    if name == "kl":
        return lambda s, t: losses.kl_divergence(s, t, temperature)
    if name == "l1":  # DFAD's discrepancy: mean absolute logit difference
        return lambda s, t: jnp.mean(jnp.abs(s.astype(jnp.float32) - t.astype(jnp.float32)))
    raise config_check.ConfigError(f"config.kd_loss={name!r}: expected 'kl' or 'l1'")


def make_kd_step(teacher: Classifier, sample_fn: Callable, batch_size: int,
                 temperature: float = 20.0, aug_pad: int = 4, aug_flip: bool = True,
                 mesh=None, compute_dtype=jnp.float32, kd_loss: str = "kl") -> Callable:
    """Jitted `(state, source, teacher_vars, rng) -> (state, loss)` with donated state.

    One batch from `sample_fn(source, rng, batch_size)` (images in [0, 1]), crop + flip,
    teacher logits in eval mode, the `kd_loss` objective on the student in train mode.
    The batch is split over the mesh's data axis (student BN statistics stay global);
    the forward passes run in `compute_dtype`, parameters and updates in float32.
    """
    mean, std = teacher.meta.mean, teacher.meta.std
    objective = kd_objective(kd_loss, temperature)

    def step(state: StudentState, source, teacher_vars, rng):
        k_sample, k_aug = jax.random.split(rng)
        x = parallel.shard_batch(sample_fn(source, k_sample, batch_size), mesh)
        x = normalize(augment.random_crop_flip(k_aug, x, pad=aug_pad, flip=aug_flip), mean, std)
        x, teacher_vars = parallel.cast_compute((x, teacher_vars), compute_dtype)
        t_logits = jax.lax.stop_gradient(teacher.model.apply(teacher_vars, x, train=False))

        def loss_fn(params):
            params = parallel.cast_compute(params, compute_dtype)
            s_logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                               x, train=True, mutable=["batch_stats"])
            return objective(s_logits, t_logits), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
        return state, loss

    return jax.jit(step, donate_argnums=(0,))


def run_kd_steps(step: Callable, state: StudentState, source, teacher_vars, rng: jax.Array,
                 num_steps: int) -> tuple[StudentState, jax.Array]:
    """A Python loop over one jitted step; the mean loss stays on device."""
    total = jnp.zeros((), jnp.float32)
    for key in jax.random.split(rng, num_steps):
        state, loss = step(state, source, teacher_vars, key)
        total = total + loss
    return state, total / max(num_steps, 1)


def make_student_apply(model: nn.Module, mean, std) -> Callable:
    """`(variables, images in [0, 1]) -> eval-mode logits`, for nayer_jax.evaluate."""
    def apply(variables, x):
        return model.apply(variables, normalize(x, mean, std), train=False)
    return apply


def train_and_evaluate(config, workdir, build_method=None, **kwargs):
    """The one loop (nayer_jax.loop.train_and_evaluate); returns (summary, final run state)."""
    from nayer_jax import loop

    return loop.train_and_evaluate(config, workdir, build_method, **kwargs)
