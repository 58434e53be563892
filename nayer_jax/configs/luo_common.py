"""Shared defaults of the Luo et al. 2020 configs (generator ensemble, then KD).

Stage 1 = the first `stage1_epochs` epochs: every member of the ensemble takes
`gen_steps_per_epoch` generator steps per epoch, no KD. `warmup` (the loop's "no KD"
phase, which starts the student's cosine schedule) is tied to `stage1_epochs` by a
ml_collections reference, so `--config.stage1_epochs=N` moves both.

Stage 2 from a saved ensemble: `--config.stage1_dir=OLD_WORKDIR/stage1` skips generator
training; the epoch numbering stays (stage-1 epochs only evaluate), so the run matches a
full one. Add `--config.stage1_epochs=0` to start KD at epoch 0 instead.

The KD half (kd_steps, batch, T, SGD, cosine) is NAYER's, so the two methods differ only
in where the KD images come from.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import nayer_cifar


def _luo_fields(c: ml_collections.ConfigDict, stage1_epochs: int) -> ml_collections.ConfigDict:
    c.method = "luo"
    del c["lte"]
    for name in ("synthesis_batch_size", "g_steps", "g_loops", "gwp_loops", "g_life", "lr_g",
                 "bn_weight", "oh_weight", "adv_weight", "bn_mmt", "le_emb_size", "ngf",
                 "pool_capacity"):
        del c[name]
    # stage 1: the generator ensemble
    c.stage1_epochs = stage1_epochs
    c.warmup = c.get_ref("stage1_epochs")
    c.stage1_dir = ""            # a WORKDIR/stage1 of an earlier run: skip stage 1
    c.num_generators = 4         # M members, different seeds, one vmapped step
    c.gen_steps_per_epoch = 500
    c.gen_batch_size = 256       # per member
    c.latent_dim = 256
    c.ngf = 64                   # FC -> 2ngf (128) channels, convs 128 then 64
    c.lr_g = 1e-3
    c.b1_g = 0.5
    c.b2_g = 0.999
    c.bn_form = "gaussian_kl"    # Luo et al.: KL between per-channel Gaussians; or "l2"
    c.bn_weight = 1.0
    c.ce_weight = 1.0
    c.gen_aug = False
    c.sample_batch_stats = True
    c.ensemble_impl = "auto"     # vmap over members; an unrolled loop on CPU (faster there)
    return c


def luo_cifar(dataset: str = "cifar10", teacher: str = "", student: str = "resnet18",
              epochs: int = 220, stage1_epochs: int = 20) -> ml_collections.ConfigDict:
    """Luo et al. on CIFAR: stage 1 for `stage1_epochs`, then KD until `epochs`."""
    c = nayer_cifar(dataset, teacher=teacher, student=student, epochs=epochs)
    return _luo_fields(c, stage1_epochs)
