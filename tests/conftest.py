"""Shared fixtures: real teachers converted once per session, real CIFAR-10 test images."""

from __future__ import annotations

import numpy as np
import pytest

from nayer_jax.paths import SharedMissingError, shared_path


def require_shared(relative: str):
    """Path inside the shared material, or fail the test saying exactly what is missing."""
    try:
        return shared_path(relative)
    except SharedMissingError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def lossless_cifar10():
    """First 846 CIFAR-10 test images, byte-exact: (x uint8 NHWC, y int64)."""
    d = np.load(require_shared("data/cifar10-jpeg/test_lossless_846.npz"))
    return d["x"], d["y"]


@pytest.fixture(scope="session")
def converted_teacher(tmp_path_factory):
    """Convert a shared PyTorch teacher once per session: name -> classifier directory."""
    from nayer_jax import classifier, convert

    cache = {}

    def get(arch: str):
        if arch not in cache:
            src = require_shared(f"teachers/cifar10_{arch}.th")
            out = tmp_path_factory.mktemp(f"teacher_{arch}")
            variables = convert.convert_checkpoint(src, arch)
            classifier.save_classifier(out / "clf", variables,
                                       classifier.meta_for(arch, source=str(src)))
            cache[arch] = out / "clf"
        return cache[arch]

    return get
