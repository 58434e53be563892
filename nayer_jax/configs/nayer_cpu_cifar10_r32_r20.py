"""NAYER on 2 CPU cores: shared PyTorch resnet32 teacher -> resnet20 student, CIFAR-10.

The published algorithm, loss weights and g_steps=30 (with 10 the pooled batches were
not yet class-specific: teacher CE ~4.8), with budgets cut to fit ~30 minutes on 2 cores
and the pool grown faster. Evaluates on the lossless 846 test images each epoch.

Departures from the paper's CIFAR setting, with their measured effect (issue 14 sweep,
experiments/results/nayer_cpu_sweep.json; the earlier config is setting "v1"):
- synthesis batch 100 (paper 400) and g_loops=2 per epoch: 200 new images per KD epoch
  (v1: 50 x 1). The pool, not the KD budget, limited v1: ~1,300 distinct images in all.
- warmup 1 epoch x 4 loops (paper 20 x 10), and `pool_skip_loops=2`: the first two
  loops (teacher CE still ~4.5, images not yet class-specific) never enter the pool.
  v1 drew 54% of its KD batches from its 450 warmup images. v2 had 2 warmup epochs: its
  KD began at 190 s on quiet cores; with 1 (v3) the first KD epoch ends ~95 s sooner at
  about the same accuracy (20.6 / 17.7%, seeds 0 / 1, vs v2's 21.6 / 19.0%).
- 12 epochs (paper 120+): the cosine LR is meant to reach its end inside the 1800 s
  budget (~1,650 s on the quiet cores that ran v2). On a machine ~3x slower (the one of
  the v3 bench run) only 4 epochs fit and the LR never decays: scale epochs to the cores.
- kd_steps=80 per epoch (shared CPU setting: 50) so KD keeps its share of the time
  (~55%) as the pool grows; lr 0.1 (paper 0.2, shared CPU setting), T=20 as published.
- ngf=32, le_emb_size=256 (paper 64 / 1000): a generator step ~2x cheaper on CPU.
- g_life=12, the run's length (paper 10 of 120 epochs): with 10 the official rule (every
  10 epochs from 0 and from warmup) would re-initialize the generator at epochs 10 and
  11, the last two, just as the LR decays.
Measured: experiments/results/nayer_cpu_sweep.json (v1, v2, v3) and
bench_methods_cpu_900s.json (v3 beside Fast in one invocation).

python -m nayer_jax.main --config nayer_jax/configs/nayer_cpu_cifar10_r32_r20.py \\
    --workdir runs/nayer_cpu
"""

from nayer_jax.configs.common import cpu_r32_r20, nayer_cifar


def get_config():
    c = cpu_r32_r20(nayer_cifar("cifar10", epochs=12))
    # the departures listed above (g_steps stays the published 30)
    c.update(warmup=1, gwp_loops=4, pool_skip_loops=2, synthesis_batch_size=100, g_loops=2,
             g_life=12, kd_steps=80, ngf=32, le_emb_size=256)
    return c
