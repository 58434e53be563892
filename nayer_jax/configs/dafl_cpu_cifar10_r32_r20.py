"""DAFL on 2 CPU cores: shared PyTorch resnet32 teacher -> resnet20 student, CIFAR-10.

The comparison setting of every `*_cpu_cifar10_r32_r20` config (same teacher, student,
lossless 846 eval images, epochs of 50 KD steps of batch 128 at lr 0.1), with DAFL's
published loss weights and alternation (one generator step before every 5 KD steps),
KL at T 20 and no crop/flip as in Fast-Datafree. Cut to fit 2 quiet cores: the
generator step's batch is the KD batch (128, as the reference, where both are
--batch_size) and the generator is half as wide (ngf 32).

Departure from the shared setting: 60 epochs (3000 KD steps, 600 generator steps, ~65
minutes on 2 quiet cores) instead of 20. Measured, seed 0: the 20-epoch schedule stayed
at 10.3-15.6% over the 10 epochs a 600 s bench ran (the noise control: ~10.6%,
bench_methods_cpu_600s.json); 60 epochs end at 29.2% (best 31.0%), passing 20% at epoch
23 and 29% at epoch 39 (experiments/results/dafl_dfad_cpu_long.json).

python -m nayer_jax.main --config nayer_jax/configs/dafl_cpu_cifar10_r32_r20.py \\
    --workdir runs/dafl_cpu
"""

from nayer_jax.configs.common import cpu_alternating


def get_config():
    return cpu_alternating("dafl", epochs=60)
