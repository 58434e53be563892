"""Luo et al. 2020 on 2 CPU cores: shared PyTorch resnet32 -> resnet20, CIFAR-10.

The counterpart of nayer_cpu_cifar10_r32_r20.py for a like-for-like comparison: same
teacher, student, eval images (the lossless 846), epochs (20; the NAYER CPU config now
runs 40), no-KD epochs (3), KD steps/batch/lr/T, and about the same number of teacher
forward+backward image passes spent on synthesis as NAYER's v1 CPU config
((3x3 + 17x1) loops x 30 steps x 50 images = 39k; here 2 members x 3 epochs x 100 steps x
64 images = 38.4k), all of it in stage 1.
The KD epochs cost a little more than NAYER's (each batch is generated, not drawn
from a pool) and the stage-2 epochs do no synthesis at all.

python -m nayer_jax.main --config nayer_jax/configs/luo_cpu_cifar10_r32_r20.py \
    --workdir runs/luo_cpu
"""

from nayer_jax.configs.common import cpu_r32_r20
from nayer_jax.configs.luo_common import luo_cifar


def get_config():
    c = cpu_r32_r20(luo_cifar("cifar10", epochs=20, stage1_epochs=3))
    c.num_generators = 2
    c.gen_steps_per_epoch = 100
    c.gen_batch_size = 64
    c.latent_dim = 128
    c.ngf = 32
    c.lr_g = 4e-3
    return c
