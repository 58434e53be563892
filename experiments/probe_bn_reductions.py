"""Per-channel sums and training-mode BatchNorm on XLA:CPU, median ms: a reduce vs the
matrix-vector form of `nayer_jax.models.batchnorm.channel_sum`, and flax's nn.BatchNorm vs
`batchnorm.BatchNorm` (forward; forward + backward of sum(relu(BN(x)) * dy)), at the
activation shapes of a CIFAR ResNet-20 with batch 128. A probe for issue 15.

python experiments/probe_bn_reductions.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nayer_jax  # noqa: F401,E402  (the CPU defaults, before jax starts)
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.probe_conv_wgrad import median_ms  # noqa: E402
from nayer_jax.models import batchnorm  # noqa: E402

SHAPES = [(128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64)]


def bn_fns(module: nn.Module, x: jax.Array, dy: jax.Array):
    variables = module.init(jax.random.key(0), x)

    def forward(x):
        return module.apply(variables, x, mutable=["batch_stats"])[0]

    def grad(x):
        def loss(params, x):
            y, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return jnp.sum(jax.nn.relu(y) * dy)
        return jax.grad(loss, argnums=(0, 1))(variables["params"], x)[1]

    return jax.jit(forward), jax.jit(grad)


def main() -> None:
    print(f"load {os.getloadavg()[0]:.2f}; channel_sum as matrix-vector product: "
          f"{batchnorm.dot_reductions()}")
    for shape in SHAPES:
        x = jax.random.normal(jax.random.key(1), shape) * 2 + 1
        dy = jax.random.normal(jax.random.key(2), shape)
        reduce_sum = jax.jit(lambda x: jnp.sum(x, axis=(0, 1, 2)))
        np.testing.assert_allclose(batchnorm.channel_sum(x), reduce_sum(x), rtol=1e-4, atol=1e-2)
        flax_fwd, flax_grad = bn_fns(nn.BatchNorm(use_running_average=False), x, dy)
        ours_fwd, ours_grad = bn_fns(batchnorm.BatchNorm(use_running_average=False), x, dy)
        g_flax, g_ours = flax_grad(x), ours_grad(x)  # relative L2 (a ReLU kink may flip)
        assert float(jnp.linalg.norm(g_flax - g_ours) / jnp.linalg.norm(g_flax)) < 1e-2
        rows = {"sum: reduce": (reduce_sum, x), "sum: channel_sum": (jax.jit(batchnorm.channel_sum), x),
                "BN fwd: flax": (flax_fwd, x), "BN fwd: ours": (ours_fwd, x),
                "BN fwd+bwd: flax": (flax_grad, x), "BN fwd+bwd: ours": (ours_grad, x)}
        times = {k: [] for k in rows}
        for _ in range(3):  # interleaved rounds
            for k, (f, a) in rows.items():
                times[k].append(median_ms(f, a))
        print("x".join(map(str, shape)) + ": " +
              ", ".join(f"{k} {np.median(v):.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
