"""How exact a sharded training gradient is on XLA:CPU, with and without YNNPACK fusions.

python experiments/precision_sharded_cpu.py [--devices 8] [--out experiments/results/precision_sharded_cpu.json]

The gradient of a train-mode ResNet-20 (batch statistics over the global batch of 16,
sharded over a forced-host-device mesh) in f32 on 1 device and on N devices, each against
the same gradient in f64, as the global relative L2 over all parameters. Each XLA flag
setting runs in its own process, since XLA reads XLA_FLAGS once. This is why
nayer_jax/cpu_defaults.py leaves YNNPACK fusions on when XLA_FLAGS forces more than one
host device: with them off, the 8-device gradient measured ~1e-3 from f64, ~2500x the
1-device error, where with them on both stay below 1e-6.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"ynn_fusions_on (XLA default)": "",
            "ynn_fusions_off": "--xla_cpu_experimental_ynn_fusion_type="}


def measure() -> dict:
    """In this process: relative L2 of the f32 gradient on 1 and on N devices vs f64."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    jax.config.update("jax_enable_x64", True)
    from nayer_jax.models import create_model

    model = create_model("resnet20", 10)
    images = jax.random.normal(jax.random.key(0), (16, 32, 32, 3), jnp.float32)
    variables = model.init(jax.random.key(1), images, train=False)
    weights = jnp.linspace(0.0, 1.0, 10)

    def loss(params, x):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(logits) * weights)

    grad = jax.jit(jax.grad(loss))
    to_f64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)  # noqa: E731
    reference = jax.device_get(grad(to_f64(variables["params"]), images.astype(jnp.float64)))
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    sharded = grad(jax.device_put(variables["params"], NamedSharding(mesh, PartitionSpec())),
                   jax.device_put(images, NamedSharding(mesh, PartitionSpec("data"))))

    def rel_l2(g) -> float:
        pairs = list(zip(jax.tree.leaves(jax.device_get(g)), jax.tree.leaves(reference)))
        num = sum(float(np.sum((np.asarray(a, np.float64) - r) ** 2)) for a, r in pairs)
        return (num / sum(float(np.sum(r ** 2)) for _, r in pairs)) ** 0.5

    return {"devices": len(jax.devices()), "rel_l2_1_device": rel_l2(grad(variables["params"], images)),
            "rel_l2_n_devices": rel_l2(sharded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "experiments/results/precision_sharded_cpu.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    rows = {}
    for name, flag in SETTINGS.items():
        env = {**os.environ, "NAYER_JAX_XLA_DEFAULTS": "0", "PYTHONPATH": str(ROOT),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices} {flag}".strip()}
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True,
                             text=True, check=True)
        rows[name] = {"xla_flags": env["XLA_FLAGS"], **json.loads(out.stdout.strip().splitlines()[-1])}
    print(f"{'setting':30s} {'1 device':>10s} {f'{args.devices} devices':>11s}  (rel. L2 vs f64)")
    for name, row in rows.items():
        print(f"{name:30s} {row['rel_l2_1_device']:10.2e} {row['rel_l2_n_devices']:11.2e}")
    import jaxlib
    result = {"what": "train-mode ResNet-20 gradient, batch 16, f32 vs f64, relative L2",
              "command": "python experiments/precision_sharded_cpu.py", "jaxlib": jaxlib.__version__,
              "settings": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
