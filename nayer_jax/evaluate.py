"""Top-1/top-5 accuracy of a classifier over an in-memory dataset, and its CLI.

One jitted step per batch; batches all have one shape (the last one padded and masked,
see `data.padded_batches`) so the step compiles once. Correct counts are accumulated on
the device and read back once at the end: the loop never waits on the device.

Top-5 when the model has fewer than 5 classes: any top-k with k >= num_classes is
trivially 1.0, so we report top5 = top1 instead (a number that still means something).

CLI (the last stdout line is machine-readable):
    python -m nayer_jax.evaluate --model DIR --data cifar10:PATH [--split test] [--batch-size N]
    ...
    top1=0.8103 top5=0.9872 n=10000
"""

from __future__ import annotations

import argparse
import sys
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from nayer_jax import data as data_lib

ApplyFn = Callable[..., jax.Array]


class EvaluationError(ValueError):
    """The data does not fit the model (image size, channels, classes)."""


def _count_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """[top-1 hits, top-5 hits] over the real rows (top-5 := top-1 below 5 classes)."""
    top1 = jnp.argmax(logits, axis=-1) == labels
    if logits.shape[-1] >= 5:
        _, top = jax.lax.top_k(logits, 5)
        top5 = jnp.any(top == labels[:, None], axis=-1)
    else:
        top5 = top1
    return jnp.stack([jnp.sum(top1 & mask), jnp.sum(top5 & mask)]).astype(jnp.int32)


def make_eval_step(apply_fn: ApplyFn, with_variables: bool = False) -> Callable:
    """Jitted `(counts, variables, x_uint8, y, mask) -> counts + [top1, top5] hits`.

    `apply_fn(x)` (or `apply_fn(variables, x)` when `with_variables`) maps float images
    in [0, 1] NHWC to logits. Passing variables as an argument (rather than closing over
    them) lets one compiled step serve every epoch of a training run.
    """
    def step(counts, variables, x, y, mask):
        x = x.astype(jnp.float32) / 255.0
        logits = apply_fn(variables, x) if with_variables else apply_fn(x)
        return counts + _count_correct(logits, y, mask)

    return jax.jit(step, donate_argnums=0)


_STEPS: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def _cached_step(apply_fn: ApplyFn, with_variables: bool) -> Callable:
    """Reuse the compiled step of a long-lived apply_fn (plain functions); else build one."""
    try:
        per_fn = _STEPS.setdefault(apply_fn, {})
    except TypeError:  # not weak-referenceable/hashable: no cache
        return make_eval_step(apply_fn, with_variables)
    if with_variables not in per_fn:
        per_fn[with_variables] = make_eval_step(apply_fn, with_variables)
    return per_fn[with_variables]


def evaluate(apply_fn: ApplyFn, images_uint8: np.ndarray, labels: np.ndarray,
             batch_size: int = 500, progress: bool = True, *,
             variables: Any = None,
             put_batch: Callable[[np.ndarray], Any] | None = None) -> dict[str, float | int]:
    """Accuracy of `apply_fn` on uint8 NHWC images: {'top1', 'top5' (fractions), 'n'}.

    `apply_fn(x)` takes float images in [0, 1]; with `variables` given it is called as
    `apply_fn(variables, x)` and the compiled step is reused across calls.
    `put_batch`: places each host batch (x, y and mask alike) on the devices, e.g.
    `nayer_jax.parallel.host_batch_to_global` so each host feeds only its rows.
    """
    n = len(images_uint8)
    if n == 0:
        raise EvaluationError("images: empty; expected at least one image to evaluate")
    batch_size = min(batch_size, n)  # no padding beyond the data for small sets
    with_variables = variables is not None
    step = _cached_step(apply_fn, with_variables)
    counts = jnp.zeros(2, jnp.int32)
    labels = np.asarray(labels, np.int32)
    batches = data_lib.padded_batches(images_uint8, labels, batch_size)
    for x, y, mask in tqdm(batches, total=-(-n // batch_size), disable=not progress,
                           desc="eval", unit="batch", file=sys.stderr):
        if put_batch is not None:
            x, y, mask = put_batch(x), put_batch(y), put_batch(mask)
        counts = step(counts, variables, x, y, mask)
    top1, top5 = (int(c) for c in np.asarray(counts))  # the one device->host read
    return {"top1": top1 / n, "top5": top5 / n, "n": n}


def check_compatible(dataset: data_lib.Dataset, input_size: int, channels: int,
                     num_classes: int, where: str = "data") -> None:
    """One-line EvaluationError if `dataset` cannot be fed to / scored by the model."""
    _, h, w, c = dataset.images.shape
    if (h, w, c) != (input_size, input_size, channels):
        raise EvaluationError(f"{where}: images are {h}x{w}x{c}; the model expects "
                              f"{input_size}x{input_size}x{channels} (resize the data or pick "
                              "the matching model)")
    if dataset.num_classes > num_classes:
        raise EvaluationError(f"{where}: {dataset.num_classes} classes; the model predicts "
                              f"{num_classes} (labels would not line up with its outputs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nayer_jax.evaluate",
        description="Top-1/top-5 accuracy of a saved classifier on a dataset.")
    parser.add_argument("--model", required=True, help="classifier directory (convert/train output)")
    parser.add_argument("--data", required=True,
                        help="cifar10:PATH | cifar100:PATH | npz:PATH | folder:PATH | "
                             "tfds:NAME[@DATA_DIR] | digits")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from nayer_jax import classifier as clf_io
    from nayer_jax.models import registry

    try:
        clf = clf_io.load_classifier(args.model)
        dataset = data_lib.load_dataset(args.data, args.split)
        channels = registry.get_spec(clf.meta.arch).channels
        check_compatible(dataset, clf.meta.input_size, channels, clf.meta.num_classes,
                         where=f"{args.data} ({args.split})")
        if args.batch_size <= 0:
            raise EvaluationError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    except (data_lib.DatasetError, clf_io.ClassifierFileError, EvaluationError,
            registry.UnknownModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {clf.meta.arch} ({clf.meta.num_classes} classes) from {args.model}; "
          f"data {args.data} split {args.split}: {len(dataset)} images")
    result = evaluate(clf.apply, dataset.images, dataset.labels, args.batch_size,
                      progress=not args.no_progress)
    print(f"top1={result['top1']:.6g} top5={result['top5']:.6g} n={result['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
