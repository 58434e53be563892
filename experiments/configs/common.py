"""Shared defaults of the experiment configs (NAYER, CIFAR, the official scripts)."""

from __future__ import annotations

import ml_collections

from nayer_jax.paths import shared_dir


def shared(relative: str) -> str:
    return str(shared_dir() / relative)


def nayer_cifar(dataset: str = "cifar10", teacher: str = "", student: str = "resnet18",
                epochs: int = 120) -> ml_collections.ConfigDict:
    """NAYER on CIFAR as published: NAYER-100/200/300 = 120/220/320 epochs (20 warmup)."""
    c = ml_collections.ConfigDict()
    c.method = "nayer"
    c.teacher = teacher  # classifier dir, or "torch:ARCH:PATH[:NUM_CLASSES]"
    c.student = student
    c.lte = f"shared:{dataset}"
    c.eval_data = (f"cifar10:{shared('data/cifar10-jpeg/cifar-10-batches-py')}"
                   if dataset == "cifar10" else f"{dataset}:REQUIRED_PATH")
    c.eval_batch_size = 500
    c.eval_limit = 0
    c.seed = 0
    c.epochs = epochs
    c.warmup = 20
    # synthesis
    c.synthesis_batch_size = 400
    c.g_steps = 30 if dataset == "cifar10" else 40
    c.g_loops = 2
    c.gwp_loops = 10
    c.g_life = 10
    c.lr_g = 4e-3
    c.bn_weight = 10.0
    c.oh_weight = 0.5
    c.adv_weight = 1.33
    c.bn_mmt = 0.9
    c.le_emb_size = 1000
    c.ngf = 64
    c.aug_pad = 4
    c.aug_flip = True
    c.pool_capacity = 0  # 0: every image the run synthesizes
    # knowledge distillation
    c.kd_steps = 400
    c.batch_size = 512
    c.temperature = 20.0
    c.lr = 0.2
    c.lr_min = 2e-4
    c.momentum = 0.9
    c.weight_decay = 1e-4
    # bookkeeping
    c.checkpoint_every = 1
    c.keep_checkpoints = 2
    return c


def epochs_for(variant: str | None, default: int = 120) -> int:
    """'100' | '200' | '300' (NAYER-N) -> total epochs including the 20 warmup epochs."""
    if not variant:
        return default
    table = {"100": 120, "200": 220, "300": 320}
    if variant not in table:
        raise ValueError(f"config argument {variant!r}: expected one of {sorted(table)} (NAYER-N)")
    return table[variant]
