"""nayer-jax: data-free knowledge distillation (NAYER, Luo et al. 2020) in JAX/Flax."""

__version__ = "0.1.0"
