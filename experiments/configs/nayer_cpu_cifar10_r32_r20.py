"""NAYER on 2 CPU cores: shared PyTorch resnet32 teacher -> resnet20 student, CIFAR-10.

The published algorithm with budgets cut to fit ~30 minutes on 2 cores: smaller
synthesis and KD batches, fewer steps and epochs. Evaluates on the lossless 846 test
images each epoch (the full JPEG test set costs ~20 s per pass here).

python -m nayer_jax.main --config experiments/configs/nayer_cpu_cifar10_r32_r20.py \
    --workdir runs/nayer_cpu
"""

from experiments.configs.common import nayer_cifar, shared


def get_config():
    c = nayer_cifar("cifar10", student="resnet20", epochs=24)
    c.teacher = f"torch:resnet32:{shared('teachers/cifar10_resnet32.th')}"
    c.eval_data = f"npz:{shared('data/cifar10-jpeg/test_lossless_846.npz')}"
    c.warmup = 4
    c.synthesis_batch_size = 100
    c.g_steps = 10
    c.gwp_loops = 4
    c.g_loops = 2
    c.g_life = 10
    c.ngf = 32
    c.le_emb_size = 256
    c.kd_steps = 40
    c.batch_size = 128
    c.lr = 0.1
    return c
