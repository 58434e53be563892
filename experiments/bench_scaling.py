"""Per-step time of NAYER's synthesis and KD steps vs the number of devices.

python experiments/bench_scaling.py [--devices 1 2 4 8] [--out experiments/results/bench_scaling_cpu.json]

On CPU the devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count=N,
all sharing the same cores), so the numbers only show the sharded machinery runs and
what it costs; on a GPU/TPU host pass the real device counts. Each count runs
experiments/bench_nayer.py in its own interpreter with batches divisible by 8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--simulate", action=argparse.BooleanOptionalAction, default=True,
                   help="simulate N CPU devices (off on real multi-device hosts)")
    p.add_argument("--out", default=str(ROOT / "experiments/results/bench_scaling_cpu.json"))
    args = p.parse_args()
    rows = []
    for n in args.devices:
        out = Path(tempfile.mkdtemp()) / f"bench_{n}.json"
        env = dict(os.environ)
        if args.simulate:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, str(ROOT / "experiments/bench_nayer.py"), "--num-devices", str(n),
               "--repeats", "3", "--out", str(out),
               "--set", "synthesis_batch_size=64", "batch_size=128", "kd_steps=5", "g_loops=1"]
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        rows.append(json.loads(out.read_text()))
    print(f"\nNAYER step time vs devices (backend {rows[0]['backend']}, "
          f"{'simulated' if args.simulate else 'real'} devices, load {os.getloadavg()[0]:.1f})")
    print(f"{'devices':>8} {'synthesis step s':>17} {'KD step s':>10} {'compile synth s':>16}")
    for r in rows:
        print(f"{r['num_devices']:>8} {r['synthesis_step_s']:>17.3f} {r['kd_step_s']:>10.3f} "
              f"{r['synthesis_first_call_s']:>16.2f}")
    Path(args.out).write_text(json.dumps({"simulated": args.simulate, "runs": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
