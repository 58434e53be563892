"""Fast-5 on 2 CPU cores: shared PyTorch resnet32 -> resnet20, CIFAR-10.

The counterpart of nayer_cpu_cifar10_r32_r20.py: same teacher, student, eval images
(the lossless 846), 20 epochs, 3 of them without KD (here also Fast's warmup: L_adv from
epoch 2), KD steps/batch/lr/T. Fast-5 with the fast_cifar.sh loss weights
(resnet34 row: bn 10, oh 0.5, adv 1.33, bn_mmt 0.9). Cut to the CPU: batches of 64, a
generator of half width (ngf 32, as NAYER's CPU config), and 6 batches per epoch
instead of 1, so that the 20-epoch run gets 120 meta updates (the published run gets
220) and its pool 7680 images; that is 20 x 6 x 5 x 64 = 38.4k teacher image passes,
about what NAYER's CPU config spends (39k).

python -m nayer_jax.main --config nayer_jax/configs/fast_cpu_cifar10_r32_r20.py \\
    --workdir runs/fast_cpu
"""

from nayer_jax.configs.common import cifar, cpu_r32_r20
from nayer_jax.synthesis.fast import fast_n


def get_config():
    c = cpu_r32_r20(fast_n(cifar("fast", "cifar10", epochs=20), 5))
    c.warmup = 3
    c.synthesis_batch_size = 64
    c.batches_per_epoch = 6
    c.ngf = 32
    return c
