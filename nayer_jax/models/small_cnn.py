"""Small BatchNorm CNNs for 8x8 grayscale digits: the offline quickstart's teacher/student.

digits_cnn (teacher, ~94k params) and digits_cnn_small (student, ~24k params):
conv3x3(w)+BN+ReLU (8x8) -> conv3x3(2w)+BN+ReLU -> maxpool 2 (4x4) -> conv3x3(4w)+BN+ReLU
-> global average pool -> linear.  w = 32 (teacher) / 16 (student).

BatchNorm layers matter here: NAYER's generator matches their running statistics.
Inputs are images in [0, 1] normalized with mean 0.5, std 0.5.
"""

from __future__ import annotations

import flax.linen as nn

from nayer_jax.models import layers
from nayer_jax.models.registry import ModelSpec, register

DIGITS_MEAN = (0.5,)
DIGITS_STD = (0.5,)


class SmallCNN(nn.Module):
    width: int = 32
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        w = self.width
        x = layers.relu(layers.batch_norm(train, name="bn1")(layers.conv(w, 3, name="conv1")(x)))
        x = layers.relu(layers.batch_norm(train, name="bn2")(layers.conv(2 * w, 3, name="conv2")(x)))
        x = layers.max_pool(x, 2, 2)
        x = layers.relu(layers.batch_norm(train, name="bn3")(layers.conv(4 * w, 3, name="conv3")(x)))
        x = layers.global_avg_pool(x)
        return layers.dense(self.num_classes, name="fc")(x)


for _name, _width in (("digits_cnn", 32), ("digits_cnn_small", 16)):
    register(ModelSpec(name=_name,
                       constructor=lambda c, w=_width: SmallCNN(width=w, num_classes=c),
                       num_classes=10, input_size=8, mean=DIGITS_MEAN, std=DIGITS_STD,
                       channels=1))
