"""nayer-jax: data-free knowledge distillation (NAYER, Luo et al. 2020) in JAX/Flax."""

from nayer_jax import cpu_defaults as _cpu_defaults

__version__ = "0.1.0"

_cpu_defaults.apply()  # XLA:CPU flags measured faster here (see nayer_jax/cpu_defaults.py)
