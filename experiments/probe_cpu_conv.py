"""`nayer_jax.models.cpu_conv`'s rewrites vs XLA:CPU's own convolution, one conv at a time,
median ms, at the shapes where the library uses them in the NAYER KD / synthesis steps
(CIFAR ResNet-20 teacher and student, NAYER generator). A probe for issue 15; the
in-step effect is `profile_steps.py --variants base wgrad_slices_only`.

python experiments/probe_cpu_conv.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nayer_jax  # noqa: F401,E402  (the CPU defaults, before jax starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.probe_conv_wgrad import median_ms  # noqa: E402
from nayer_jax.models import cpu_conv  # noqa: E402

# (what, batch, H = W, C_in, C_out, stride): 3x3 convs, padding 1
CASES = [("RGB stem (teacher, student)", 128, 32, 3, 16, 1),
         ("RGB stem at the synthesis batch", 100, 32, 3, 16, 1),
         ("generator's last conv to RGB", 100, 32, 64, 3, 1),
         ("downsampling conv, stage 1 -> 2", 128, 32, 16, 32, 2),
         ("downsampling conv, stage 2 -> 3", 128, 16, 32, 64, 2),
         ("a stage-1 conv (no rewrite: control)", 128, 32, 16, 16, 1)]


def main() -> None:
    pad = ((1, 1), (1, 1))
    for what, n, hw, c_in, c_out, s in CASES:
        key_x, key_w, key_dy = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(key_x, (n, hw, hw, c_in))
        w = jax.random.normal(key_w, (3, 3, c_in, c_out)) * 0.1
        strides = (s, s)
        dy = jax.random.normal(key_dy, cpu_conv.conv_nhwc(x, w, strides, pad).shape)
        xla = {"fwd": jax.jit(lambda x, w: cpu_conv.conv_nhwc(x, w, strides, pad)),
               "dx": jax.jit(lambda x, w, dy: cpu_conv.xla_input_grad(x.shape, w, dy, strides, pad))}
        ours = {"fwd": jax.jit(lambda x, w: cpu_conv.forward(x, w, strides, pad)),
                "dx": jax.jit(lambda x, w, dy: cpu_conv.input_grad(x.shape, w, dy, strides, pad))}
        cells = []
        for kind in ("fwd", "dx"):
            args = (x, w) if kind == "fwd" else (x, w, dy)
            np.testing.assert_allclose(ours[kind](*args), xla[kind](*args), rtol=1e-4, atol=1e-3)
            rounds = [(median_ms(xla[kind], *args), median_ms(ours[kind], *args)) for _ in range(3)]
            a, b = np.median(rounds, axis=0)
            cells.append(f"{kind} xla {a:.2f} / ours {b:.2f} ms")
        print(f"{what:38s} {n}x{hw}x{hw}x{c_in} -> {c_out} s{s}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
