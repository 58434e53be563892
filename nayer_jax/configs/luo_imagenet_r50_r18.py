"""Luo et al. 2020 on ImageNet: resnet50 teacher -> resnet18 student, 224x224 images.

The deep generator (14x14 seed, four x2 up-sampling stages 128-128-64-64, picked
automatically for images larger than 64 px), an ensemble of 4 trained in one vmapped
step. Budgets are a starting point for one accelerator, not the paper's (which the
text we had does not fully specify); scale `num_generators`/`gen_batch_size` to memory.

Run:  python -m nayer_jax.main --config nayer_jax/configs/luo_imagenet_r50_r18.py \
        --config.teacher=torch:resnet50_imagenet:PATH.pth \
        --config.eval_data=folder:IMAGENET_VAL_224 --workdir runs/luo_imagenet_r50_r18
(eval_data: class folders of 224x224 validation images; see nayer_jax.data.)
"""

from nayer_jax.configs.luo_common import luo_cifar


def get_config():
    c = luo_cifar("cifar10", teacher="", student="resnet18_imagenet", epochs=100,
                  stage1_epochs=10)
    c.update(eval_data="folder:REQUIRED_PATH", eval_batch_size=250, num_generators=4,
             gen_steps_per_epoch=2000, latent_dim=256, ngf=64, kd_steps=1000, batch_size=256,
             temperature=1.0, lr=0.1, lr_min=0.0)
    c.gen_batch_size = 64  # per member: 256 images per ensemble step
    c.aug_pad = 28         # the CIFAR 4/32 crop jitter at 224 px
    return c
