"""Luo et al. 2020, "Large-Scale Generative Data-Free Distillation": a generator ensemble.

The algorithm, top to bottom:
1. Generator G(z ⊕ one-hot(y)): FC -> (img/4)² x 128 -> BN -> LeakyReLU(0.2) ->
   2 x [nearest up x2, conv3x3 (128, then 64), BN (eps 0.8), LeakyReLU] -> conv3x3(3)
   -> tanh -> output BN with a learned scale and no shift. For 224x224 (ImageNet) the
   deep variant starts at (img/16)² and up-samples four times (128, 128, 64, 64).
2. Its output is the teacher's *normalized* input (as in DAFL, whose generator Luo et
   al. build on: the output BN gives each channel zero mean, the scale its spread).
   Here it is mapped back to pixels with the teacher's mean/std and clipped to the
   valid image range, x = clip(out * std + mean, 0, 1): the generator emits [0, 1]
   images like every generator of the project, and the teacher in synthesis sees
   exactly the images the student sees in KD (normalize(x) == out where out is in range).
3. Loss per step, z ~ N(0, I), y ~ U{0..C-1}:
       bn_weight * L_bn + ce_weight * CE(teacher(x), y)
   L_bn treats every teacher BN layer's input as per-channel Gaussian and sums
   KL(N(batch mean, batch var) || N(running mean, running var)) over channels and
   layers (`bn_form="gaussian_kl"`, the paper's statistic; `"l2"` is the
   DeepInversion/NAYER norm, for ablations).
4. Stage 1: an ensemble of M generators (different seeds), trained independently with
   Adam. One jitted step trains all of them: `jax.vmap` of the single-generator step
   over a leading member axis of the stacked params / BN stats / Adam states, with the
   state donated. The member axis leads every leaf, so it can later be sharded over a
   mesh axis (NamedSharding) without touching the step. On CPU the same jitted step
   unrolls the M member steps instead (`ensemble_impl`), as XLA:CPU runs vmapped
   (grouped) convolutions several times slower than M plain ones.
5. At the end of stage 1 the ensemble is frozen and also written on its own
   (WORKDIR/stage1/); a run with `config.stage1_dir` starts from it and skips stage 1.
6. Stage 2: plain KD (distill.py's step and loop, unchanged). Every KD batch is fresh:
   `sample` picks a random member with the step's key, dynamically indexes its params
   and generates the batch (no image pool).

Hyperparameters the text does not pin down (latent size, Adam settings, loss weights,
ensemble size, steps) are settings with documented defaults (see `LuoSettings`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from nayer_jax import augment, losses, parallel
from nayer_jax import images as images_lib
from nayer_jax.classifier import Classifier, normalize
from nayer_jax.models import layers
from nayer_jax.synthesis import MethodBase
from nayer_jax.teacher import apply_with_bn_stats
from nayer_jax.errors import ConfigError

STAGE1_DIR = "stage1"          # under the workdir
ENSEMBLE_ARRAYS = "ensemble"   # orbax directory inside a stage-1 directory
ENSEMBLE_META = "ensemble.json"



# ----------------------------------------------------------------------------- generator


class LuoGenerator(nn.Module):
    """Conditional generator G(z ⊕ one-hot(y)) -> NHWC images in [0, 1].

    `num_up` nearest-neighbour x2 stages: 2 for 32x32 (8x8 seed), 4 for 224x224 (14x14
    seed, the deep variant). Stage widths: the first half 2*ngf, the rest ngf, i.e.
    (128, 64) and (128, 128, 64, 64) for ngf=64. `mean`/`std`: the teacher's input
    normalization, used to map the output BN's (normalized) tensor to pixels.
    """
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    latent_dim: int = 256
    ngf: int = 64
    img_size: int = 32
    channels: int = 3
    num_up: int = 2

    @nn.compact
    def __call__(self, z, y_onehot, train: bool = True):
        s = self.img_size // 2 ** self.num_up
        if s * 2 ** self.num_up != self.img_size:
            raise ValueError(f"LuoGenerator: img_size {self.img_size} is not divisible by "
                             f"2**num_up = {2 ** self.num_up}")
        x = jnp.concatenate([z, y_onehot.astype(z.dtype)], axis=-1)
        # Layers feeding a BN have no bias: BN removes any per-channel constant, so a
        # bias would be a no-op parameter that Adam only jitters with rounding noise.
        x = layers.dense(2 * self.ngf * s * s, name="fc", bias=False, kernel_init=layers.torch_default_init)(x)
        x = x.reshape(x.shape[0], s, s, 2 * self.ngf)
        x = layers.leaky_relu(layers.batch_norm(train, name="bn0")(x))
        for i in range(self.num_up):
            width = 2 * self.ngf if i < self.num_up // 2 else self.ngf
            x = layers.upsample_conv3x3(width, name=f"conv{i + 1}",  # up x2 -> conv3x3
                                        kernel_init=layers.torch_default_init)(x)
            x = layers.leaky_relu(layers.batch_norm(train, name=f"bn{i + 1}", eps=0.8)(x))
        x = layers.conv(self.channels, 3, bias=True, name="conv_out", kernel_init=layers.torch_default_init)(x)
        x = jnp.tanh(x)
        # Output BN: normalizes each channel, a learned scale, no shift (torch affine
        # with the bias removed). Its output is the teacher's normalized input.
        x = layers.batch_norm(train, use_bias=False, name="bn_out")(x)
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        return jnp.clip(x * std + mean, 0.0, 1.0)


def num_up_for(img_size: int) -> int:
    """2 up-sampling stages up to 64x64 images (CIFAR), 4 beyond (the 224x224 deep variant)."""
    return 2 if img_size <= 64 else 4


# ------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class LuoSettings:
    """Method hyperparameters (config fields of the same names override them)."""
    num_generators: int = 4          # M, the ensemble size
    stage1_epochs: int = 20          # epochs of generator training (no KD)
    gen_steps_per_epoch: int = 500   # steps of every member per stage-1 epoch
    gen_batch_size: int = 256
    latent_dim: int = 256
    ngf: int = 64
    lr_g: float = 1e-3               # Adam(lr_g, b1_g, b2_g), one per member
    b1_g: float = 0.5
    b2_g: float = 0.999
    bn_form: str = "gaussian_kl"     # "gaussian_kl" (Luo et al.) or "l2" (DeepInversion)
    bn_weight: float = 1.0
    ce_weight: float = 1.0
    gen_aug: bool = False            # crop/flip the generated batch before the teacher
    aug_pad: int = 4
    aug_flip: bool = True
    sample_batch_stats: bool = True  # KD samples use batch BN stats (as in training)
    ensemble_impl: str = "auto"      # "vmap" | "unroll" | "auto" (vmap except on CPU)

    POSITIVE: ClassVar[tuple[str, ...]] = ("num_generators", "gen_steps_per_epoch",
                                           "gen_batch_size", "latent_dim", "ngf", "lr_g")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("stage1_epochs", "bn_weight", "ce_weight",
                                               "aug_pad", "b1_g", "b2_g")


# ---------------------------------------------------------------------------- the state

@struct.dataclass
class LuoState:
    """The ensemble: every leaf of params / batch_stats / opt_state has a leading
    member axis of size M. `steps`: generator steps taken by every member."""
    params: Any
    batch_stats: Any
    opt_state: Any
    steps: jax.Array


METRIC_KEYS = ("loss", "bn", "ce", "acc")


class StageOneDirError(ConfigError):
    """A stage-1 directory is missing or holds an incompatible ensemble."""


def resolve_ensemble_impl(impl: str) -> str:
    """"vmap" or "unroll"; "auto" picks unroll on CPU, vmap on GPU/TPU."""
    if impl == "auto":
        return "unroll" if jax.default_backend() == "cpu" else "vmap"
    if impl not in ("vmap", "unroll"):
        raise ConfigError(f"config.ensemble_impl={impl!r}: expected 'auto', 'vmap' or 'unroll'")
    return impl


def _member(tree, index):
    """Member `index` (traced or not) of a stacked pytree."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, index, 0, keepdims=False),
                        tree)


class Luo(MethodBase):
    """Luo et al. 2020 bound to a teacher: an ensemble of conditional generators."""

    def __init__(self, settings: LuoSettings, teacher: Classifier, img_size: int,
                 channels: int = 3, from_stage1: bool = False):
        if settings.bn_form not in ("gaussian_kl", "l2"):
            raise ConfigError(f"config.bn_form={settings.bn_form!r}: expected 'gaussian_kl' "
                             "(Luo et al.) or 'l2' (DeepInversion/NAYER)")
        if settings.num_generators < 1:
            raise ConfigError(f"config.num_generators={settings.num_generators}: expected >= 1")
        self.s = settings
        self.teacher = teacher
        self.num_classes = teacher.meta.num_classes
        self.img_shape = (img_size, img_size, channels)
        self.from_stage1 = from_stage1  # ensemble restored: stage 1 is skipped
        self.generator = LuoGenerator(
            num_classes=self.num_classes, mean=tuple(teacher.meta.mean),
            std=tuple(teacher.meta.std), latent_dim=settings.latent_dim, ngf=settings.ngf,
            img_size=img_size, channels=channels, num_up=num_up_for(img_size))
        self.optimizer = optax.adam(settings.lr_g, b1=settings.b1_g, b2=settings.b2_g)
        self.ensemble_impl = resolve_ensemble_impl(settings.ensemble_impl)
        self._init = jax.jit(self._init_ensemble)
        self._step = jax.jit(self._ensemble_step, donate_argnums=(0, 1))
        self._preview = jax.jit(self._preview_images, static_argnames=("rows",))

    # -- initialization ---------------------------------------------------------------
    def init_member(self, rng: jax.Array) -> tuple[Any, Any, Any]:
        """(params, batch_stats, Adam state) of one fresh generator."""
        z = jnp.zeros((2, self.s.latent_dim), jnp.float32)
        y = jnp.zeros((2, self.num_classes), jnp.float32)
        v = self.generator.init(rng, z, y, train=True)
        return v["params"], v["batch_stats"], self.optimizer.init(v["params"])

    def member_keys(self, rng: jax.Array) -> jax.Array:
        return jax.random.split(rng, self.s.num_generators)

    def _init_ensemble(self, rng: jax.Array) -> LuoState:
        params, bs, opt = jax.vmap(self.init_member)(self.member_keys(rng))
        return LuoState(params=params, batch_stats=bs, opt_state=opt,
                        steps=jnp.zeros((), jnp.int32))

    def init_state(self, rng: jax.Array) -> LuoState:
        """M generators from the M keys `jax.random.split(rng, M)` (member i: key i)."""
        return self._init(rng)

    # -- generation ----------------------------------------------------------------
    def generate(self, params, batch_stats, z, y_onehot, batch_bn: bool = True):
        """One member's images in [0, 1]: BN with batch statistics (training mode, running
        statistics left untouched) or with the running statistics."""
        v = {"params": params, "batch_stats": batch_stats}
        if batch_bn:
            return self.generator.apply(v, z, y_onehot, train=True, mutable=["batch_stats"])[0]
        return self.generator.apply(v, z, y_onehot, train=False)

    def draw_latents(self, rng: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """z ~ N(0, I) (n, latent_dim) and labels y ~ U{0..C-1} (n,)."""
        k_z, k_y = jax.random.split(rng)
        z = jax.random.normal(k_z, (n, self.s.latent_dim), jnp.float32)
        y = jax.random.randint(k_y, (n,), 0, self.num_classes, dtype=jnp.int32)
        return z, y

    # -- one generator step ------------------------------------------------------------
    def _loss(self, params, batch_stats, z, y_onehot, teacher_vars, rng):
        images, new_vars = self.generator.apply({"params": params, "batch_stats": batch_stats},
                                                z, y_onehot, train=True, mutable=["batch_stats"])
        if self.s.gen_aug:
            images = augment.random_crop_flip(rng, images, pad=self.s.aug_pad,
                                              flip=self.s.aug_flip)
        x = normalize(images, self.teacher.meta.mean, self.teacher.meta.std)
        t_logits, stats = apply_with_bn_stats(self.teacher.model, teacher_vars, x)
        l_bn = losses.bn_moment_loss(stats, form=self.s.bn_form)
        l_ce = losses.soft_cross_entropy(t_logits, y_onehot)
        loss = self.s.bn_weight * l_bn + self.s.ce_weight * l_ce
        acc = jnp.mean((jnp.argmax(t_logits, -1) == jnp.argmax(y_onehot, -1)).astype(jnp.float32))
        return loss, (new_vars["batch_stats"], {"loss": loss, "bn": l_bn, "ce": l_ce, "acc": acc})

    def member_step(self, params, batch_stats, opt_state, teacher_vars, rng):
        """One Adam step of ONE generator: (params, batch_stats, opt_state, metrics).

        Pure and un-batched; the ensemble step is its vmap over the member axis.
        """
        k_lat, k_aug = jax.random.split(rng)
        z, y = self.draw_latents(k_lat, self.s.gen_batch_size)
        y_onehot = jax.nn.one_hot(y, self.num_classes)
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        (_, (new_bs, metrics)), grads = grad_fn(params, batch_stats, z, y_onehot, teacher_vars,
                                                k_aug)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_bs, opt_state, metrics

    def _ensemble_step(self, state: LuoState, sums: dict, teacher_vars, rng):
        """All M members, one step each (member i uses key i of split(rng, M)).

        "vmap": one batched computation over the member axis (what a mesh axis shards);
        "unroll": the M member steps side by side in the same jitted function, for CPUs,
        where XLA runs vmapped (grouped) generator convolutions ~5x slower than M plain
        ones. Both compute the same per-member update.
        """
        keys = self.member_keys(rng)
        if self.ensemble_impl == "vmap":
            params, bs, opt, metrics = jax.vmap(self.member_step, in_axes=(0, 0, 0, None, 0))(
                state.params, state.batch_stats, state.opt_state, teacher_vars, keys)
        else:
            members = [self.member_step(*_member((state.params, state.batch_stats,
                                                  state.opt_state), i), teacher_vars, keys[i])
                       for i in range(self.s.num_generators)]
            params, bs, opt, metrics = jax.tree.map(lambda *a: jnp.stack(a), *members)
        sums = jax.tree.map(jnp.add, sums, metrics)
        return LuoState(params=params, batch_stats=bs, opt_state=opt, steps=state.steps + 1), sums

    def ensemble_step(self, state: LuoState, rng: jax.Array, sums: dict | None = None):
        """Jitted, donated: (state, per-member metric sums (M,) each) after one step."""
        if sums is None:
            sums = self.zero_sums(state)
        return self._step(state, sums, self.teacher.variables, rng)

    def zero_sums(self, state: LuoState) -> dict:
        """Zero per-member metric sums, replicated like `state`, so the step's first call
        sees the input shardings of the calls fed its own outputs."""
        sums = {k: jnp.zeros((self.s.num_generators,), jnp.float32) for k in METRIC_KEYS}
        return parallel.replicate_like(sums, state.steps)

    # -- the epoch interface of distill.train_and_evaluate -------------------------------
    def trains(self, epoch: int) -> bool:
        """Stage 1: generator training (unless the ensemble came from a stage-1 dir)."""
        return epoch < self.s.stage1_epochs and not self.from_stage1

    def synthesize_epoch(self, state: LuoState, student_vars, epoch: int,
                         rng: jax.Array) -> tuple[LuoState, dict]:
        """Stage 1: gen_steps_per_epoch ensemble steps (nothing read back per step).
        Stage 2: nothing (the ensemble is frozen)."""
        del student_vars  # Luo et al. train the generators without the student
        if not self.trains(epoch):
            return state, {}
        n = self.s.gen_steps_per_epoch
        sums = self.zero_sums(state)
        for key in jax.random.split(rng, n):
            state, sums = self._step(state, sums, self.teacher.variables, key)
        metrics = {k: jnp.mean(v) / n for k, v in sums.items()}
        metrics.update({f"loss_member{i}": sums["loss"][i] / n
                        for i in range(self.s.num_generators)})
        return state, metrics

    def kd_active(self, epoch: int) -> bool:
        return epoch >= self.s.stage1_epochs

    def draw(self, state: LuoState, rng: jax.Array, batch_size: int):
        """(images in [0, 1], member index, labels) of one fresh batch from a random member."""
        k_member, k_lat = jax.random.split(rng)
        member = jax.random.randint(k_member, (), 0, self.s.num_generators, dtype=jnp.int32)
        z, y = self.draw_latents(k_lat, batch_size)
        images = self.generate(_member(state.params, member), _member(state.batch_stats, member),
                               z, jax.nn.one_hot(y, self.num_classes), self.s.sample_batch_stats)
        return images, member, y

    def sample(self, state: LuoState, rng: jax.Array, batch_size: int) -> jax.Array:
        """KD batch source: a fresh batch from a member picked with `rng` (jit-safe)."""
        return self.draw(state, rng, batch_size)[0]

    def preview_classes(self) -> int:
        return self.num_classes if self.num_classes <= 100 else 10

    def _preview_images(self, state: LuoState, rows: int):
        """(M, rows * k, H, W, C) uint8: per member, `rows` rows of the first k classes,
        from fixed latents (key 0) so epochs are comparable."""
        k = self.preview_classes()
        z, _ = self.draw_latents(jax.random.key(0), rows * k)
        y = jnp.tile(jnp.arange(k), rows)
        onehot = jax.nn.one_hot(y, self.num_classes)
        gen = jax.vmap(lambda p, b: self.generate(p, b, z, onehot, self.s.sample_batch_stats))
        images = gen(state.params, state.batch_stats)
        return images_lib.to_uint8(images)

    def preview(self, state: LuoState) -> jax.Array | None:
        """Every member's images stacked: in the loop's grid (num_classes columns) member m
        is row m, class k in column k. None beyond 100 classes (a 1000-column grid would
        be mostly blank); the per-member grids of `after_epoch` show classes 0..9 then."""
        if self.num_classes > 100:
            return None
        images = self._preview(state, rows=1)
        return images.reshape(-1, *images.shape[2:])

    def after_epoch(self, state: LuoState, epoch: int, workdir: str | Path) -> None:
        """distill.py hook: in stage 1 a PNG grid per member; at its end, the stage-1 export."""
        if not self.trains(epoch):
            return
        workdir = Path(workdir)
        k = self.preview_classes()
        per_member = np.asarray(self._preview(state, rows=4))
        (workdir / "images").mkdir(parents=True, exist_ok=True)
        for m, images in enumerate(per_member):
            images_lib.write_grid(workdir / "images" / f"epoch_{epoch:04d}_member{m}.png", images, k)
        if epoch == self.s.stage1_epochs - 1:
            save_stage1(workdir / STAGE1_DIR, state, self.stage1_meta())
            for m, images in enumerate(per_member):
                images_lib.write_grid(workdir / STAGE1_DIR / f"member{m}.png", images, k)

    # -- stage-1 directory -------------------------------------------------------------
    def stage1_meta(self) -> dict:
        """What must agree for an ensemble to be reused."""
        g = self.generator
        return {"num_generators": self.s.num_generators, "num_classes": self.num_classes,
                "img_size": g.img_size, "channels": g.channels, "latent_dim": g.latent_dim,
                "ngf": g.ngf, "num_up": g.num_up, "mean": list(g.mean), "std": list(g.std),
                "teacher_arch": self.teacher.meta.arch}


def save_stage1(directory: str | Path, state: LuoState, meta: dict) -> Path:
    """Write the ensemble (orbax, every array of the state) and its meta JSON; replaces an
    earlier export of the same run."""
    import orbax.checkpoint as ocp

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tree = serialization.to_state_dict(jax.device_get(state))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory / ENSEMBLE_ARRAYS, tree, force=True)
    ckptr.wait_until_finished()
    (directory / ENSEMBLE_META).write_text(
        json.dumps({**meta, "steps": int(state.steps)}, indent=2))
    return directory


def load_stage1(directory: str | Path, template: LuoState, expected_meta: dict) -> LuoState:
    """Restore an ensemble written by `save_stage1`; the meta must match `expected_meta`."""
    import orbax.checkpoint as ocp

    directory = Path(directory).resolve()
    meta_path = directory / ENSEMBLE_META
    if not meta_path.is_file():
        raise StageOneDirError(f"config.stage1_dir: {meta_path} missing; expected a directory "
                               f"written at the end of stage 1 (WORKDIR/{STAGE1_DIR})")
    meta = json.loads(meta_path.read_text())
    for key, want in expected_meta.items():
        if meta.get(key) != want:
            raise StageOneDirError(f"{meta_path}: {key}={meta.get(key)!r}, but this run expects "
                                   f"{key}={want!r}; use a stage-1 directory of the same setting")
    target = serialization.to_state_dict(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = ocp.StandardCheckpointer().restore(directory / ENSEMBLE_ARRAYS, abstract)
    return serialization.from_state_dict(template, restored)


def default_config():
    """A Luo et al. run config: the loop's base fields plus `LuoSettings`; `warmup` (no KD)
    follows `stage1_epochs` through a reference, and `stage1_dir` restores an ensemble."""
    from nayer_jax import distill

    c = distill.add_settings(distill.default_config(), LuoSettings)
    c.method = "luo"
    c.epochs = 220
    c.warmup = c.get_ref("stage1_epochs")
    c.stage1_dir = ""  # a WORKDIR/stage1 of an earlier run: skip stage 1
    return c


def build(config, teacher: Classifier, student_model: nn.Module, rng: jax.Array, mesh=None):
    """Luo method + initial ensemble state from a run config (nayer_jax/configs/luo_*).

    `mesh`: the run's mesh. Stage-2 KD batches are split over it by the shared KD step;
    the stage-1 ensemble step keeps its member axis unsharded for now (the loop
    replicates the ensemble on the mesh).
    """
    del mesh

    del student_model  # the generators never see the student
    from nayer_jax import distill

    settings = distill.settings_from(config, LuoSettings)
    if config.warmup != settings.stage1_epochs:
        raise ConfigError(f"config.warmup={config.warmup} but config.stage1_epochs="
                         f"{settings.stage1_epochs}: the KD schedule starts after stage 1, so "
                         "they must be equal (luo configs tie warmup to stage1_epochs)")
    stage1_dir = config.stage1_dir
    if settings.stage1_epochs <= 0 and not stage1_dir:
        raise ConfigError("config.stage1_epochs=0 without config.stage1_dir: the generators "
                         "would never be trained; set stage1_epochs > 0 or a stage-1 directory")
    method = Luo(settings, teacher, teacher.meta.input_size,
                 channels=teacher.meta.channels,
                 from_stage1=bool(stage1_dir))
    state = method.init_state(rng)
    if stage1_dir:
        state = load_stage1(stage1_dir, state, method.stage1_meta())
    return method, state
