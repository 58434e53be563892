"""Shared defaults of the Luo et al. 2020 configs (generator ensemble, then KD).

Stage 1 = the first `stage1_epochs` epochs: every member of the ensemble takes
`gen_steps_per_epoch` generator steps per epoch, no KD. `warmup` (the loop's "no KD"
phase, which starts the student's cosine schedule) is tied to `stage1_epochs` by a
ml_collections reference (`luo.default_config`), so `--config.stage1_epochs=N` moves both.

Stage 2 from a saved ensemble: `--config.stage1_dir=OLD_WORKDIR/stage1` skips generator
training; the epoch numbering stays (stage-1 epochs only evaluate), so the run matches a
full one. Add `--config.stage1_epochs=0` to start KD at epoch 0 instead.

The KD half (kd_steps, batch, T, SGD, cosine) is the base config's (NAYER's), so the
methods differ only in where the KD images come from.
"""

from __future__ import annotations

import ml_collections

from nayer_jax.configs.common import cifar


def luo_cifar(dataset: str = "cifar10", teacher: str = "", student: str = "resnet18",
              epochs: int = 220, stage1_epochs: int = 20) -> ml_collections.ConfigDict:
    """Luo et al. on CIFAR: stage 1 for `stage1_epochs`, then KD until `epochs`."""
    c = cifar("luo", dataset, teacher, student, epochs)
    c.stage1_epochs = stage1_epochs
    return c
