"""Supervised training of a teacher (any registered architecture, any supported dataset).

    python -m nayer_jax.train_teacher --arch digits_cnn --data digits --out runs/teacher
    python -m nayer_jax.train_teacher --arch resnet20 --data cifar10:PATH --out DIR \
        --epochs 200 --batch-size 128 --lr 0.1 --optimizer sgd

Trains on the "train" split, evaluates on the "test" split after every epoch and saves
the final model with `classifier.save_classifier`, the format nayer_jax.convert writes,
so the result is a teacher for `config.teacher=DIR` and for nayer_jax.evaluate.

- Optimizer: SGD (momentum 0.9, weight decay 5e-4, torch-style: decay added to the
  gradient) or Adam; learning rate on a per-epoch cosine to 0 (distill's schedule).
- Augmentation: random crop with zero padding (default size // 8) and a horizontal
  flip; `--flip auto` flips 3-channel (photo) data only: a mirrored digit is no digit.
- One jitted train step with donated state; every batch has one shape (the data is
  reshuffled each epoch and the last partial batch dropped), so nothing recompiles.
  Evaluation passes the variables to one compiled step (nayer_jax.evaluate).

The last stdout line is machine-readable:  test_top1=<fraction> epochs=<n> seconds=<s>
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from nayer_jax import augment, classifier as clf_io, data as data_lib, distill
from nayer_jax.classifier import normalize
from nayer_jax.evaluate import check_compatible, evaluate
from nayer_jax.models import registry
from nayer_jax.errors import InputError, NonFiniteError

OPTIMIZERS = ("sgd", "adam")


class TrainTeacherError(InputError):
    """Bad arguments for teacher training (one line, names the flag)."""


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainTeacherError(f"--out {out}: already exists and is not empty; choose a new "
                                "directory (nothing was overwritten)")


def create_state(model, rng, image_shape, optimizer: str, schedule, weight_decay: float
                 ) -> distill.StudentState:
    """Fresh train state: distill's torch-style SGD, or Adam (decoupled decay when > 0)."""
    if optimizer == "sgd":
        return distill.create_student_state(model, rng, image_shape, schedule, momentum=0.9,
                                            weight_decay=weight_decay)
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    tx = optax.adamw(schedule, weight_decay=weight_decay) if weight_decay else optax.adam(schedule)
    return distill.StudentState.create(apply_fn=model.apply, params=variables["params"],
                                       batch_stats=variables.get("batch_stats", {}), tx=tx)


def make_train_step(mean, std, pad: int, flip: bool):
    """Jitted `(state, x_uint8, y, rng) -> (state, loss, correct)`, state donated."""
    def train_step(state: distill.StudentState, x, y, rng):
        x = x.astype(jnp.float32) / 255.0
        x = normalize(augment.random_crop_flip(rng, x, pad=pad, flip=flip), mean, std)

        def loss_fn(params):
            logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                             x, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return state, loss, correct

    return jax.jit(train_step, donate_argnums=(0,))


@jax.jit
def _epoch_summary(loss_sum: jax.Array, correct: jax.Array, state: distill.StudentState
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss sum, correct, all finite?) of an epoch: one device->host read gets all three."""
    leaves = jax.tree.leaves((state.params, state.batch_stats))
    finite = jnp.isfinite(loss_sum) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves]))
    return loss_sum, correct, finite


def check_finite_epoch(finite: bool, loss: float, epoch: int, epochs: int) -> None:
    """Stop with one line (NonFiniteError) when an epoch left a NaN/inf loss or parameter."""
    if not finite:
        what = "the training loss" if not np.isfinite(loss) else "the parameters"
        raise NonFiniteError(f"epoch {epoch + 1}/{epochs}: {what} went non-finite (mean loss "
                             f"{loss:.4g}); the teacher was not saved (lower --lr?)")


def train(arch: str, data: str, out: str | Path, epochs: int = 30, batch_size: int = 128,
          lr: float | None = None, optimizer: str = "sgd", weight_decay: float = 5e-4,
          seed: int = 0, pad: int | None = None, flip: str = "auto",
          log=print, progress: bool = True) -> dict:
    """Train `arch` on `data`, save it to `out`; returns {'test_top1', 'epochs', 'seconds'}.

    lr defaults to 0.1 (sgd) / 1e-3 (adam). pad defaults to input_size // 8 (at least 1).
    """
    t_start = time.time()
    out = Path(out)
    _check_out(out)
    if optimizer not in OPTIMIZERS:
        raise TrainTeacherError(f"--optimizer {optimizer!r}: expected one of {list(OPTIMIZERS)}")
    if flip not in ("auto", "on", "off"):
        raise TrainTeacherError(f"--flip {flip!r}: expected auto, on or off")
    if epochs <= 0 or batch_size <= 0:
        raise TrainTeacherError(f"--epochs {epochs} / --batch-size {batch_size}: expected "
                                "positive integers")
    if lr is not None and not (np.isfinite(lr) and lr > 0):
        raise TrainTeacherError(f"--lr {lr}: expected a positive, finite learning rate")
    spec = registry.get_spec(arch)
    train_set = data_lib.load_dataset(data, "train")
    test_set = data_lib.load_dataset(data, "test")
    num_classes = max(train_set.num_classes, test_set.num_classes)
    check_compatible(train_set, spec.input_size, spec.channels, num_classes, f"{data} (train)")
    check_compatible(test_set, spec.input_size, spec.channels, num_classes, f"{data} (test)")
    image_shape = (spec.input_size, spec.input_size, spec.channels)
    lr = (0.1 if optimizer == "sgd" else 1e-3) if lr is None else lr
    pad = max(1, spec.input_size // 8) if pad is None else pad
    do_flip = spec.channels == 3 if flip == "auto" else flip == "on"
    n = len(train_set)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # the last partial batch is dropped (one shape)

    model = registry.create_model(arch, num_classes)
    schedule = distill.epoch_cosine_schedule(lr, 0.0, steps_per_epoch, epochs)
    rng = jax.random.key(seed)
    k_init, k_train = jax.random.split(rng)
    state = create_state(model, k_init, image_shape, optimizer, schedule, weight_decay)
    step = make_train_step(spec.mean, spec.std, pad, do_flip)
    apply = distill.make_student_apply(model, spec.mean, spec.std)
    log(f"train {arch} ({num_classes} classes) on {data}: {n} train / {len(test_set)} test "
        f"images, {steps_per_epoch} steps x {batch_size} per epoch, {optimizer} lr {lr:g}, "
        f"crop pad {pad}, flip {'on' if do_flip else 'off'}")

    order_rng = np.random.default_rng(seed)
    test_top1 = float("nan")
    for epoch in range(epochs):
        t0 = time.time()
        perm = order_rng.permutation(n)
        loss_sum = jnp.zeros((), jnp.float32)
        correct = jnp.zeros((), jnp.int32)
        keys = jax.random.split(jax.random.fold_in(k_train, epoch), steps_per_epoch)
        for i, key in enumerate(tqdm(keys, desc=f"epoch {epoch + 1}", leave=False, unit="step",
                                     file=sys.stderr, disable=not progress)):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            state, loss, c = step(state, train_set.images[idx], train_set.labels[idx], key)
            loss_sum, correct = loss_sum + loss, correct + c
        loss_sum_h, correct_h, finite = jax.device_get(_epoch_summary(loss_sum, correct, state))
        loss_mean = float(loss_sum_h) / steps_per_epoch
        check_finite_epoch(bool(finite), loss_mean, epoch, epochs)
        variables = distill.student_variables(state)
        ev = evaluate(apply, test_set.images, test_set.labels, 500, progress=False,
                      variables=variables)
        test_top1 = ev["top1"]
        seen = steps_per_epoch * batch_size
        log(f"epoch {epoch + 1}/{epochs} loss {loss_mean:.4f} "
            f"train_top1 {int(correct_h) / seen:.4f} test_top1 {test_top1:.4f} "
            f"lr {float(schedule(epoch * steps_per_epoch)):.3g} {time.time() - t0:.1f}s")

    seconds = time.time() - t_start
    meta = clf_io.meta_for(arch, num_classes, spec.mean, spec.std,
                           source=f"nayer_jax.train_teacher --data {data}",
                           test_top1=test_top1, epochs=epochs, optimizer=optimizer, lr=lr,
                           batch_size=batch_size, seed=seed, seconds=round(seconds, 2))
    clf_io.save_classifier(out, distill.student_variables(state), meta)
    return {"test_top1": test_top1, "epochs": epochs, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nayer_jax.train_teacher",
        description="Train a classifier on real data and save it as a teacher directory.")
    parser.add_argument("--arch", required=True,
                        help=f"registered architecture ({', '.join(registry.list_models())})")
    parser.add_argument("--data", required=True,
                        help="digits | cifar10:PATH | cifar100:PATH | npz:PATH | folder:PATH | "
                             "tfds:NAME[@DATA_DIR]")
    parser.add_argument("--out", required=True, help="new directory for the trained classifier")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default 0.1 for sgd, 1e-3 for adam)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--pad", type=int, default=None, help="crop padding (default size // 8)")
    parser.add_argument("--flip", choices=("auto", "on", "off"), default="auto",
                        help="horizontal flips; auto: only for 3-channel images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no per-step progress bar")
    args = parser.parse_args(argv)
    try:
        result = train(args.arch, args.data, args.out, args.epochs, args.batch_size, args.lr,
                       args.optimizer, args.weight_decay, args.seed, args.pad, args.flip,
                       progress=not args.no_progress)
    except (InputError, NonFiniteError, registry.UnknownModelError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved {Path(args.out).resolve()}")
    print(f"test_top1={result['test_top1']:.4f} epochs={result['epochs']} "
          f"seconds={result['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
