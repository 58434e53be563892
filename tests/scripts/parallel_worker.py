"""Runs a tiny NAYER distillation under a given device/process layout (for test_parallel).

python tests/scripts/parallel_worker.py TEACHER_DIR WORKDIR NUM_DEVICES OUT.npz
Multi-process: set NAYER_COORDINATOR_ADDRESS / NAYER_NUM_PROCESSES / NAYER_PROCESS_ID.
Simulated devices: set XLA_FLAGS=--xla_force_host_platform_device_count=N before start.
Writes the student's flattened parameters and the first synthesis loss (process 0 only).
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nayer_jax import parallel  # noqa: E402

parallel.initialize_distributed()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from nayer_jax import main  # noqa: E402
from nayer_jax.classifier import load_classifier  # noqa: E402
from tests.test_distill import tiny_config  # noqa: E402


def run(teacher_dir: str, workdir: str, num_devices: int, out: str) -> None:
    c = tiny_config(teacher_dir, epochs=2)
    c.synthesis_batch_size = 16
    c.batch_size = 16
    c.eval_limit = 16
    c.eval_batch_size = 16
    c.num_devices = num_devices
    main.run(c, workdir)
    # orbax restores are collective: every process loads, process 0 writes the result
    flat = traverse_util.flatten_dict(load_classifier(Path(workdir) / "student").variables)
    if parallel.is_main_process():
        history = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
        np.savez(out, **{"/".join(k): np.asarray(v) for k, v in flat.items()},
                 syn_loss=np.asarray([r["syn_loss"] for r in history]),
                 devices=np.asarray(len(jax.devices())), processes=np.asarray(jax.process_count()))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
