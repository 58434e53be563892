"""DAFL on 2 CPU cores: shared PyTorch resnet32 teacher -> resnet20 student, CIFAR-10.

The comparison setting of every `*_cpu_cifar10_r32_r20` config (same teacher, student,
lossless 846 eval images, 20 epochs of 50 KD steps of batch 128 at lr 0.1), with DAFL's
published loss weights and alternation (one generator step before every 5 KD steps:
200 generator steps in all), KL at T 20 and no crop/flip as in Fast-Datafree. Cut to
fit ~15 minutes on 2 quiet cores: the generator step's batch is the KD batch (128, as
the reference, where both are --batch_size) and the generator is half as wide (ngf 32).

python -m nayer_jax.main --config nayer_jax/configs/dafl_cpu_cifar10_r32_r20.py \\
    --workdir runs/dafl_cpu
"""

from nayer_jax.configs.common import cpu_alternating


def get_config():
    return cpu_alternating("dafl")
