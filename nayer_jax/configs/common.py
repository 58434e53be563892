"""Shared pieces of the experiment configs: CIFAR settings per method, the CPU setting.

Every config is `synthesis.default_config(method)` (the loop's base fields plus the
method's own) with a few overrides; nothing is deleted.
"""

from __future__ import annotations

import ml_collections

from nayer_jax import synthesis
from nayer_jax.errors import ConfigError
from nayer_jax.paths import shared_dir


def shared(relative: str) -> str:
    return str(shared_dir() / relative)


def cifar(method: str, dataset: str = "cifar10", teacher: str = "", student: str = "resnet18",
          epochs: int = 120) -> ml_collections.ConfigDict:
    """Method `method` on CIFAR-10/100 with NAYER's KD budget (the base config's)."""
    c = synthesis.default_config(method)
    c.teacher = teacher  # classifier dir, or "torch:ARCH:PATH[:NUM_CLASSES]"
    c.student = student
    if "lte" in c:
        c.lte = f"shared:{dataset}"
    c.eval_data = (f"cifar10:{shared('data/cifar10-jpeg/cifar-10-batches-py')}"
                   if dataset == "cifar10" else f"{dataset}:REQUIRED_PATH")
    c.epochs = epochs
    return c


# The CIFAR-10 teacher -> student pairs of the published tables (NAYER, Fast-Datafree):
# pair name (the ':ARG' of the per-method CIFAR-10 configs) -> (teacher arch, student arch).
CIFAR10_PAIRS = {
    "r34_r18": ("resnet34", "resnet18"),
    "vgg11_r18": ("vgg11", "resnet18"),
    "wrn40_2_wrn16_1": ("wrn40_2", "wrn16_1"),
    "wrn40_2_wrn16_2": ("wrn40_2", "wrn16_2"),
    "wrn40_2_wrn40_1": ("wrn40_2", "wrn40_1"),
}


def cifar10_pair(arg: str | None, variants: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """A config's ':ARG' -> (pair, variant): 'PAIR' or 'PAIR:VARIANT' (default r34_r18).

    Raises ConfigError naming the argument when the pair (or variant) is not known."""
    pair, _, variant = (arg or "r34_r18").partition(":")
    if pair not in CIFAR10_PAIRS:
        raise ConfigError(f"config argument {pair!r}: expected a teacher_student pair, one of "
                          f"{sorted(CIFAR10_PAIRS)}")
    if variant and not variants:
        raise ConfigError(f"config argument {arg!r}: this config takes no variant after the pair")
    if variant and variant not in variants:
        raise ConfigError(f"config argument {arg!r}: variant {variant!r}, expected one of "
                          f"{list(variants)}")
    return pair, variant or None


def cifar10_method(method: str, arg: str | None, epochs: int) -> ml_collections.ConfigDict:
    """`method` on one CIFAR-10 pair (its ':ARG'): the student set, the teacher left for
    --config.teacher (a converted classifier dir of the pair's teacher arch)."""
    pair, _ = cifar10_pair(arg)
    return cifar(method, "cifar10", teacher="", student=CIFAR10_PAIRS[pair][1], epochs=epochs)


def nayer_cifar(dataset: str = "cifar10", teacher: str = "", student: str = "resnet18",
                epochs: int = 120) -> ml_collections.ConfigDict:
    """NAYER on CIFAR as published: NAYER-100/200/300 = 120/220/320 epochs (20 warmup)."""
    c = cifar("nayer", dataset, teacher, student, epochs)
    c.g_steps = 30 if dataset == "cifar10" else 40
    return c


def cpu_r32_r20(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The 2-core CPU setting that every method shares, so their runs compare:
    shared resnet32 teacher, the lossless 846 test images, and the same KD budget."""
    c.teacher = f"torch:resnet32:{shared('teachers/cifar10_resnet32.th')}"
    c.student = "resnet20"
    c.eval_data = f"npz:{shared('data/cifar10-jpeg/test_lossless_846.npz')}"
    c.kd_steps = 50
    c.batch_size = 128
    c.lr = 0.1
    return c


def cpu_alternating(method: str, epochs: int = 20) -> ml_collections.ConfigDict:
    """DAFL or DFAD (a generator step before every few KD steps) on the CPU setting, 20
    epochs unless told: the generator's batch is the KD batch (128), its width half (ngf 32)."""
    c = cpu_r32_r20(cifar(method, "cifar10", epochs=epochs))
    c.update(synthesis_batch_size=128, ngf=32)
    return c


def epochs_for(variant: str | None, default: int = 120) -> int:
    """'100' | '200' | '300' (NAYER-N) -> total epochs including the 20 warmup epochs."""
    if not variant:
        return default
    table = {"100": 120, "200": 220, "300": 320}
    if variant not in table:
        raise ValueError(f"config argument {variant!r}: expected one of {sorted(table)} (NAYER-N)")
    return table[variant]
