"""One synthesis step and one KD step from identical state on a 1-device and an N-device
mesh (for test_parallel). Run with XLA_FLAGS=--xla_force_host_platform_device_count=N.

python tests/scripts/parallel_steps.py TEACHER_DIR N OUT.json
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nayer_jax import distill, parallel  # noqa: E402
from nayer_jax.classifier import load_classifier  # noqa: E402
from nayer_jax.lte import resolve_lte  # noqa: E402
from nayer_jax.models import create_model  # noqa: E402
from nayer_jax.synthesis import nayer  # noqa: E402


def rel_diff(a, b) -> float:
    """max |a - b| / max |a| over all leaves."""
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(x))) + 1e-12))
               for x, y in leaves)


def one_mesh(teacher_dir: str, n: int, pool_images=None):
    """Returns (synthesis metrics, generator params, pool images, KD loss, student params,
    student variables after one more epoch). `pool_images` replaces the pool before the KD
    step, so both meshes' KD steps start from identical state (the synthesized batches may
    differ by one uint8 level where a pixel sits on a rounding boundary)."""
    mesh = parallel.make_mesh(n)
    teacher = load_classifier(teacher_dir)
    teacher.variables = parallel.replicate(teacher.variables, mesh)
    student_model = create_model("resnet20", 10)
    settings = nayer.NayerSettings(synthesis_batch_size=16, g_steps=1, le_emb_size=16, ngf=8,
                                   warmup=1, g_loops=2)
    m = nayer.Nayer(settings, teacher, student_model, resolve_lte("shared:cifar10", 10), 32, mesh=mesh)
    state = parallel.replicate(m.init_state(jax.random.key(0), pool_capacity=32), mesh)
    student = parallel.replicate(distill.create_student_state(
        student_model, jax.random.key(1), (32, 32, 3), 0.05), mesh)
    sv = distill.student_variables(student)
    # one synthesis loop of one step (with L_adv) = exactly one generator step
    state, metrics = m.synthesis_loop(state, sv, jax.random.key(2), use_adv=True)
    synthesized = jax.device_get(state.pool.images)
    if pool_images is not None:
        state = state.replace(pool=state.pool.replace(
            images=parallel.replicate(jnp.asarray(pool_images), mesh)))
    kd = distill.make_kd_step(teacher, m.sample, 16, mesh=mesh)
    student, loss = kd(student, state, teacher.variables, jax.random.key(3))
    step_result = (jax.device_get(metrics), jax.device_get(state.gen_params),
                   synthesized, float(loss), jax.device_get(student.params))
    # then one whole post-warmup epoch: g_loops synthesis loops + KD steps from the pool
    state, _ = m.synthesize_epoch(state, distill.student_variables(student), epoch=1,
                                  rng=jax.random.key(4))
    student, _ = distill.run_kd_steps(kd, student, state, teacher.variables, jax.random.key(5), 3)
    return step_result + (jax.device_get(distill.student_variables(student)),)


if __name__ == "__main__":
    teacher_dir, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    a = one_mesh(teacher_dir, 1)
    b = one_mesh(teacher_dir, n, pool_images=a[2])
    result = {"devices": len(jax.devices()),
              "synthesis_loss_rel": abs(float(a[0]["loss"]) - float(b[0]["loss"])) / abs(float(a[0]["loss"])),
              "generator_params_rel": rel_diff(a[1], b[1]),
              "generator_params_rel_by_leaf": {
                  "/".join(str(getattr(k, "key", k)) for k in path): rel_diff(x, y)
                  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a[1]),
                                          jax.tree.leaves(b[1]))},
              # Adam's first step is ~lr * sign(g): elements whose true gradient is 0 (LTE
              # dimensions that BatchNorm1d flattens) flip with f32 noise, by <= 2 * lr.
              "generator_flipped_fraction": max(
                  float(np.mean(np.abs(a[1][layer]["kernel"] - b[1][layer]["kernel"]) > 1e-5))
                  for layer in ("noisy", "l1")),
              "generator_max_abs_diff": max(float(np.max(np.abs(x - y))) for x, y in
                                            zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1]))),
              "pooled_images_max_abs_uint8": int(np.max(np.abs(a[2].astype(int) - b[2].astype(int)))),
              "kd_loss_rel": abs(a[3] - b[3]) / abs(a[3]),
              "student_params_rel": rel_diff(a[4], b[4]),
              "epoch_student_rel_l2": float(
                  np.sqrt(sum(np.sum((np.asarray(x) - np.asarray(y)) ** 2)
                              for x, y in zip(jax.tree.leaves(a[5]), jax.tree.leaves(b[5]))))
                  / np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(a[5]))))}
    Path(out).write_text(json.dumps(result))
    print(json.dumps(result))
