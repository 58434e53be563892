"""NAYER on 2 CPU cores: shared PyTorch resnet32 teacher -> resnet20 student, CIFAR-10.

The published algorithm and loss weights with budgets cut to fit ~30 minutes on 2
cores: smaller synthesis and KD batches, fewer loops, KD steps and epochs. g_steps stays
at the published 30: with 10 the pooled batches were not yet class-specific (teacher CE
~4.8), with 30 the teacher agrees with the target class on 74-88% of each pooled batch. Evaluates on the lossless 846 test
images each epoch (the full JPEG test set costs ~20 s per pass here).

python -m nayer_jax.main --config nayer_jax/configs/nayer_cpu_cifar10_r32_r20.py \
    --workdir runs/nayer_cpu
"""

from nayer_jax.configs.common import cpu_r32_r20, nayer_cifar


def get_config():
    c = cpu_r32_r20(nayer_cifar("cifar10", epochs=20))
    c.warmup = 3
    c.synthesis_batch_size = 50
    c.g_steps = 30
    c.gwp_loops = 3
    c.g_loops = 1
    c.g_life = 10
    c.ngf = 32
    c.le_emb_size = 256
    return c
