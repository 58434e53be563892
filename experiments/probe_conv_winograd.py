"""Winograd F(2x2, 3x3) for one 3x3 SAME conv (stride 1, NHWC/HWIO, batch 128) vs XLA's
convolution on CPU: forward, weight gradient and input gradient (autodiff through the
transforms), median ms, interleaved. A probe for issue 15: the polyphase upsample-conv
showed that an exact rewrite with fewer MACs can beat XLA:CPU's kernels; Winograd does the
same for the student's 3x3 convs (16 instead of 36 MACs per 2x2 output tile). Measured: no,
the 4x larger transformed tiles make it memory-bound (numbers in experiments/results/README.md).

python experiments/probe_conv_winograd.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nayer_jax  # noqa: F401,E402  (the library's XLA:CPU defaults, as the steps run)
from experiments.probe_conv_wgrad import conv, median_ms, stage_operands  # noqa: E402

# F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A per 4x4 input tile d
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def conv_winograd(x, w):
    """x (N, H, W, C) with H, W even, w (3, 3, C, K) -> (N, H, W, K), equal to conv(x, w)."""
    n, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # d[a][b] (N, H/2, W/2, C): element (a, b) of every 4x4 tile, tiles at stride 2
    d = [[xp[:, a:a + h:2, b:b + wd:2, :] for b in range(4)] for a in range(4)]
    rows = [[sum(B_T[i, a] * d[a][b] for a in range(4) if B_T[i, a]) for b in range(4)]
            for i in range(4)]
    v = jnp.stack([jnp.stack([sum(B_T[j, b] * rows[i][b] for b in range(4) if B_T[j, b])
                              for j in range(4)]) for i in range(4)])  # (4, 4, N, H/2, W/2, C)
    u = jnp.einsum("ar,bs,rsck->abck", G, G, w)                        # (4, 4, C, K)
    m = jnp.einsum("abnhwc,abck->abnhwk", v, u)                        # 16 matmuls
    y = jnp.einsum("pa,qb,abnhwk->nhpwqk", A_T, A_T, m)                # (N, H/2, 2, W/2, 2, K)
    return y.reshape(n, h, wd, -1)


def pieces(f):
    """Forward, weight gradient, input gradient of conv implementation f, each jitted."""
    return {"fwd": jax.jit(f),
            "weight_grad": jax.jit(lambda x, w, dy: jax.vjp(lambda w: f(x, w), w)[1](dy)[0]),
            "input_grad": jax.jit(lambda x, w, dy: jax.vjp(lambda x: f(x, w), x)[1](dy)[0])}


def main() -> None:
    for hw, c, x, w, dy in stage_operands():
        impls = {"xla": pieces(conv), "winograd": pieces(conv_winograd)}
        for kind in ("fwd", "weight_grad", "input_grad"):
            args = (x, w) if kind == "fwd" else (x, w, dy)
            want, got = impls["xla"][kind](*args), impls["winograd"][kind](*args)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
            rounds = [[median_ms(impls[name][kind], *args) for name in impls] for _ in range(3)]
            xla_ms, wino_ms = np.median(rounds, axis=0)
            print(f"{hw}x{hw}x{c} {kind:11s} xla {xla_ms:6.1f} ms  winograd {wino_ms:6.1f} ms  "
                  f"({xla_ms / wino_ms:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
