"""Imports every architecture module so that each registers itself."""

from nayer_jax.models import resnet_he  # noqa: F401
