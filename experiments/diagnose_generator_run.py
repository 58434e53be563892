"""Why does a generator method's student stay at chance? Checks on finished run dirs.

For each workdir of a DAFL/DFAD run (its `teacher/`, `config.json` and the student and
generator of its latest checkpoint), on the lossless 846 and on 256 fresh generator
images (z seed 1):
- the student's top-1 with its BN running statistics, with the eval batch's own
  statistics, and with running statistics re-estimated on 4000 real training images
  (the last two use real data: diagnostics of the BN hypothesis, not a method);
- the generator's images: per-pixel std across z and the within-image std (collapse?),
  the teacher's class histogram and mean confidence on them;
- the student's agreement with the teacher on those images (does KD learn the teacher
  where it is trained?), for the trained generator and a freshly initialized one.

python experiments/diagnose_generator_run.py RUN_DIR [RUN_DIR ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nayer_jax import data as data_lib  # noqa: E402
from nayer_jax import paths  # noqa: E402
from nayer_jax.classifier import Classifier, load_classifier  # noqa: E402
from nayer_jax.models import create_model  # noqa: E402
from nayer_jax.models.generator import Generator  # noqa: E402
from nayer_jax.synthesis.adversarial import images_from_output  # noqa: E402

REAL_BN_IMAGES = 4000
BN_BATCH = 200


def top1(logits, labels) -> float:
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == labels))


def reestimate_bn(student, images: jax.Array) -> dict:
    """Running statistics after 2 passes of train-mode forwards (momentum 0.9: 0.9^40 of
    the old statistics remain)."""
    variables = student.variables
    batches = [images[i:i + BN_BATCH] for i in range(0, len(images), BN_BATCH)]
    for x in batches * 2:
        _, new = student.model.apply(variables, student.normalize(x), train=True,
                                     mutable=["batch_stats"])
        variables = {"params": variables["params"], "batch_stats": new["batch_stats"]}
    return variables


def on_generator(gen, gen_vars, z, teacher, student) -> dict:
    out = gen.apply(gen_vars, z, train=True, mutable=["batch_stats"])[0]
    x = images_from_output(out, gen.output, teacher.meta.mean, teacher.meta.std)
    t_logits = teacher.apply(x)
    t_pred = np.asarray(jnp.argmax(t_logits, -1))
    return {"std_across_z": round(float(jnp.mean(jnp.std(x, axis=0))), 4),
            "std_within_image": round(float(jnp.mean(jnp.std(x, axis=(1, 2)))), 4),
            "teacher_classes": np.bincount(t_pred, minlength=t_logits.shape[-1]).tolist(),
            "teacher_confidence": round(float(jnp.mean(jnp.max(jax.nn.softmax(t_logits), -1))), 3),
            "student_agrees_with_teacher": top1(student.apply(x), t_pred)}


def diagnose(run: Path, eval_set, real_train: jax.Array) -> dict:
    config = json.loads((run / "config.json").read_text())
    teacher = load_classifier(run / "teacher")
    step = max(int(p) for p in os.listdir(run / "checkpoints"))
    state = ocp.PyTreeCheckpointer().restore(str(run / "checkpoints" / str(step) / "state"))
    student = Classifier(create_model(config["student"], teacher.meta.num_classes),
                         {k: state["student"][k] for k in ("params", "batch_stats")},
                         teacher.meta)  # the teacher's input normalization, as in KD
    x_eval = jnp.asarray(eval_set.images, jnp.float32) / 255.0
    y_eval = np.asarray(eval_set.labels)
    row = {"run": str(run), "method": config["method"],
           "student_top1": {
               "running_stats": top1(student.apply(x_eval), y_eval),
               "eval_batch_stats": top1(student.model.apply(
                   student.variables, student.normalize(x_eval), train=True,
                   mutable=["batch_stats"])[0], y_eval),
               "real_reestimated_stats": top1(student.model.apply(
                   reestimate_bn(student, real_train), student.normalize(x_eval),
                   train=False), y_eval)}}
    gen = Generator(nz=config["nz"], ngf=config["ngf"],
                    output=config.get("generator_output", "sigmoid"))
    z = jax.random.normal(jax.random.key(1), (256, config["nz"]))
    trained = {"params": state["method"]["params"], "batch_stats": state["method"]["batch_stats"]}
    row["checkpoint_step"] = step
    row["trained_generator"] = on_generator(gen, trained, z, teacher, student)
    row["fresh_generator"] = on_generator(gen, gen.init(jax.random.key(0), z[:2]), z, teacher,
                                          student)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cifar = paths.shared_path("data/cifar10-jpeg")
    eval_set = data_lib.load_dataset(f"npz:{cifar / 'test_lossless_846.npz'}")
    train = data_lib.load_dataset(f"cifar10:{cifar / 'cifar-10-batches-py'}", "train")
    real_train = jnp.asarray(train.images[:REAL_BN_IMAGES], jnp.float32) / 255.0
    rows = []
    for run in args.runs:
        rows.append(diagnose(run, eval_set, real_train))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
