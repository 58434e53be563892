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
from nayer_jax.errors import InputError

ApplyFn = Callable[..., jax.Array]


class EvaluationError(InputError):
    """The data does not fit the model (image size, channels, classes)."""


def _count_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """[top-1 hits, top-5 hits, labels >= num classes] over the real rows (top-5 := top-1
    below 5 classes)."""
    top1 = jnp.argmax(logits, axis=-1) == labels
    if logits.shape[-1] >= 5:
        _, top = jax.lax.top_k(logits, 5)
        top5 = jnp.any(top == labels[:, None], axis=-1)
    else:
        top5 = top1
    beyond = labels >= logits.shape[-1]
    return jnp.stack([jnp.sum(top1 & mask), jnp.sum(top5 & mask),
                      jnp.sum(beyond & mask)]).astype(jnp.int32)


def make_eval_step(apply_fn: ApplyFn, with_variables: bool = False) -> Callable:
    """Jitted `(counts, variables, x_uint8, y, mask) -> counts + [top1, top5, bad labels]`.

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


def check_eval_inputs(images: Any, labels: Any) -> np.ndarray:
    """The labels as int32 after one-line checks: uint8 NHWC images, one label >= 0 each.

    Images must be uint8 in [0, 255]: the step scales them by 1/255 itself, so float
    images already in [0, 1] would be scaled twice (and score at chance).
    """
    dtype, shape = getattr(images, "dtype", None), tuple(getattr(images, "shape", ()))
    if dtype != np.uint8 or len(shape) != 4:
        raise EvaluationError(
            f"images: {dtype} {shape}; expected uint8 (N, H, W, C) pixels in [0, 255] "
            "(evaluate scales by 1/255 itself; for float images in [0, 1] pass "
            "np.round(x * 255).astype(np.uint8))")
    if shape[0] == 0:
        raise EvaluationError("images: empty; expected at least one image to evaluate")
    labels = np.asarray(labels)
    if labels.shape != (shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationError(f"labels: {labels.dtype} {labels.shape}; expected integer class "
                              f"indices of shape ({shape[0]},), one per image")
    if labels.min() < 0:
        raise EvaluationError(f"labels: minimum {labels.min()}; expected class indices >= 0")
    return labels.astype(np.int32)


def evaluate(apply_fn: ApplyFn, images_uint8: np.ndarray, labels: np.ndarray,
             batch_size: int = 500, progress: bool = True, *,
             variables: Any = None,
             put_batch: Callable[[np.ndarray], Any] | None = None) -> dict[str, float | int]:
    """Accuracy of `apply_fn` on uint8 NHWC images: {'top1', 'top5' (fractions), 'n'}.

    `apply_fn(x)` takes float images in [0, 1] (this function scales the uint8 pixels);
    with `variables` given it is called as `apply_fn(variables, x)` and the compiled step
    is reused across calls. Labels outside [0, num classes) raise EvaluationError.
    `put_batch`: places each host batch (x, y and mask alike) on the devices, e.g.
    `nayer_jax.parallel.host_batch_to_global` so each host feeds only its rows.
    """
    labels = check_eval_inputs(images_uint8, labels)
    n = len(images_uint8)
    batch_size = min(batch_size, n)  # no padding beyond the data for small sets
    with_variables = variables is not None
    step = _cached_step(apply_fn, with_variables)
    counts = jnp.zeros(3, jnp.int32)
    batches = data_lib.padded_batches(images_uint8, labels, batch_size)
    for x, y, mask in tqdm(batches, total=-(-n // batch_size), disable=not progress,
                           desc="eval", unit="batch", file=sys.stderr):
        if put_batch is not None:
            x, y, mask = put_batch(x), put_batch(y), put_batch(mask)
        counts = step(counts, variables, x, y, mask)
    top1, top5, beyond = (int(c) for c in np.asarray(counts))  # the one device->host read
    if beyond:
        classes = _num_outputs(apply_fn, variables, images_uint8[:1])
        raise EvaluationError(f"labels: {beyond} of {n} are >= {classes}, the model's number "
                              f"of classes (max label {labels.max()}); expected labels in "
                              f"[0, {classes})")
    return {"top1": top1 / n, "top5": top5 / n, "n": n}


def _num_outputs(apply_fn: ApplyFn, variables: Any, x: np.ndarray) -> int:
    """The model's class count, from the shape of its logits (traced, never run)."""
    x = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    if variables is None:
        return int(jax.eval_shape(apply_fn, x).shape[-1])
    return int(jax.eval_shape(apply_fn, variables, x).shape[-1])


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
        print(f"model {clf.meta.arch} ({clf.meta.num_classes} classes) from {args.model}; "
              f"data {args.data} split {args.split}: {len(dataset)} images")
        result = evaluate(clf.apply, dataset.images, dataset.labels, args.batch_size,
                          progress=not args.no_progress)
    except (InputError, registry.UnknownModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"top1={result['top1']:.6g} top5={result['top5']:.6g} n={result['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
