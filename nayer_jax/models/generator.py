"""The DCGAN-style generator of Fast-Datafree (datafree/models/generator.py `Generator`),
used by DAFL, DFAD and Fast.

    z (N, nz) -> Linear -> (img/4)² x 2ngf -> BN -> up x2 -> conv3x3 (2ngf) -> BN -> LeakyReLU(0.2)
      -> up x2 -> conv3x3 (ngf) -> BN -> LeakyReLU(0.2) -> conv3x3 (channels) -> sigmoid

NHWC images in [0, 1] (`output="sigmoid"`, Fast-Datafree's). With `output="normalized"` the
last layer is tanh -> BatchNorm without scale or shift instead of the sigmoid: the
generator of the DAFL and DFAD authors' code (DAFL-train.py `Generator`, VainF DFAD
`GeneratorA`), whose output is the teacher's normalized input itself, each channel with
zero mean and unit variance over the batch. Module names are the PyTorch state_dict keys
with the numeric segment merged (`l1.0` -> `l1_0`, `conv_blocks.2` -> `conv_blocks_2`,
the indices of the reference's nn.Sequential); the convolutions feeding a BN have no
bias, as there.
Weights start from torch's default init (biases 0), BN from scale 1, shift 0.
The FC output is reshaped channels-last ((N, s, s, 2ngf)), where the reference views it
channels-first: for a freshly initialized generator that is only a permutation of the
FC's output units, but a converted PyTorch `l1.0` weight would need its rows permuted.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from nayer_jax.models import layers


class Generator(nn.Module):
    nz: int = 100
    ngf: int = 64
    img_size: int = 32
    channels: int = 3
    output: str = "sigmoid"  # "sigmoid": images in [0, 1]; "normalized": tanh -> BN

    # the reference's `reset_l0` targets: the input Linear and the first BatchNorm
    FIRST_LAYERS = ("l1_0", "conv_blocks_0")

    @nn.compact
    def __call__(self, z, train: bool = True):
        s = self.img_size // 4
        if s * 4 != self.img_size:
            raise ValueError(f"Generator: img_size {self.img_size} is not divisible by 4")
        x = layers.dense(2 * self.ngf * s * s, name="l1_0",
                         kernel_init=layers.torch_default_init)(z)
        x = x.reshape(x.shape[0], s, s, 2 * self.ngf)
        x = layers.batch_norm(train, name="conv_blocks_0")(x)
        # each up x2 -> conv3x3 pair runs as one polyphase layer (exact, 2.25x fewer FLOPs)
        x = layers.upsample_conv3x3(2 * self.ngf, name="conv_blocks_2",
                                    kernel_init=layers.torch_default_init)(x)
        x = layers.leaky_relu(layers.batch_norm(train, name="conv_blocks_3")(x))
        x = layers.upsample_conv3x3(self.ngf, name="conv_blocks_6",
                                    kernel_init=layers.torch_default_init)(x)
        x = layers.leaky_relu(layers.batch_norm(train, name="conv_blocks_7")(x))
        x = layers.conv(self.channels, 3, bias=True, name="conv_blocks_9",
                        kernel_init=layers.torch_default_init)(x)
        if self.output == "sigmoid":
            return nn.sigmoid(x)
        if self.output != "normalized":
            raise ValueError(f"Generator: output {self.output!r}; expected 'sigmoid' or 'normalized'")
        return layers.batch_norm(train, use_bias=False, use_scale=False,
                                 name="conv_blocks_11")(jnp.tanh(x))
