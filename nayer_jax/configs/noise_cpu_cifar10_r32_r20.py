"""The Gaussian-noise control on the 2-core CPU setting (resnet32 -> resnet20, CIFAR-10).

Same teacher, student, eval images and KD steps/batch/lr/T as the other
`*_cpu_cifar10_r32_r20` configs, 20 epochs (as Fast and DeepInversion), with every KD
batch clipped N(0.5, 0.25) noise and KD from epoch 0: what a method gains over it is what
its synthesis is worth.

python -m nayer_jax.main --config nayer_jax/configs/noise_cpu_cifar10_r32_r20.py \\
    --workdir runs/noise_cpu
"""

from nayer_jax.configs.common import cifar, cpu_r32_r20


def get_config():
    return cpu_r32_r20(cifar("noise", "cifar10", epochs=20))
