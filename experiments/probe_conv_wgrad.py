"""Weight gradient of one 3x3 SAME conv (NHWC/HWIO, batch 128): XLA's conv transpose vs 9
per-tap dots (x shifted by each tap, contracted over N, H, W with dy), plus the forward
conv and the input gradient, median ms. A probe for issue 15: is a hand-written weight
gradient a way around XLA:CPU's activation transposes? (Measured: no; the numbers are in
experiments/results/README.md.)

python experiments/probe_conv_wgrad.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def wgrad_xla(x, w, dy):
    return jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]


def wgrad_taps(x, dy):
    """dW[i, j] = sum over n, h, w of x_padded[n, h + i, w + j, :]^T dy[n, h, w, :]."""
    n, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [jnp.einsum("nhwc,nhwd->cd", lax.slice(xp, (0, i, j, 0), (n, i + h, j + wd, c)), dy)
            for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, c, dy.shape[-1])


def igrad_xla(x, w, dy):
    return jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]


def median_ms(f, *args, calls: int = 10) -> float:
    f(*args).block_until_ready()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def stage_operands():
    """(hw, c, x, w, dy) of one 3x3 conv per stage of a CIFAR ResNet-20, batch 128."""
    k = jax.random.split(jax.random.key(0), 3)
    for hw, c in [(32, 16), (16, 32), (8, 64)]:
        yield (hw, c, jax.random.normal(k[0], (128, hw, hw, c)),
               jax.random.normal(k[1], (3, 3, c, c)) * 0.1, jax.random.normal(k[2], (128, hw, hw, c)))


def main() -> None:
    for hw, c, x, w, dy in stage_operands():
        f_xla, f_taps = jax.jit(wgrad_xla), jax.jit(wgrad_taps)
        np.testing.assert_allclose(f_xla(x, w, dy), f_taps(x, dy), rtol=2e-3, atol=2e-2)
        rounds = [(median_ms(f_xla, x, w, dy), median_ms(f_taps, x, dy)) for _ in range(3)]
        print(f"{hw}x{hw}x{c}: weight grad xla {np.median([a for a, _ in rounds]):.1f} ms, "
              f"taps {np.median([b for _, b in rounds]):.1f} ms; "
              f"forward {median_ms(jax.jit(conv), x, w):.1f} ms, "
              f"input grad {median_ms(jax.jit(igrad_xla), x, w, dy):.1f} ms")


if __name__ == "__main__":
    main()
