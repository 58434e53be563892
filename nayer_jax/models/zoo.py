"""Imports every architecture module so that each registers itself."""

from nayer_jax.models import resnet_he  # noqa: F401
from nayer_jax.models import resnet_cifar  # noqa: F401
from nayer_jax.models import resnet_imagenet  # noqa: F401
from nayer_jax.models import vgg  # noqa: F401
from nayer_jax.models import wrn  # noqa: F401
from nayer_jax.models import small_cnn  # noqa: F401
