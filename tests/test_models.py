"""Every registered classifier computes what its PyTorch original computes.

For each architecture: a hand-written PyTorch reference (tests/torch_refs.py) with random
weights and non-trivial BN running stats -> state_dict -> nayer_jax.convert -> Flax; the
eval-mode logits must agree to 1e-4 on random inputs. This checks the layout (key names,
strides, paddings, shortcut semantics) and the converter in one go.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from nayer_jax import convert
from nayer_jax.models import registry
from tests import torch_refs

TOL = 1e-4

# The architectures this test module is responsible for (all have a torch reference).
OWNED = {"resnet18", "resnet34", "wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2", "vgg11",
         "resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet",
         "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}

# Deeper He ResNets run the same code as resnet20 with more blocks (and resnet32 is checked
# against the real teacher in test_convert): for time, only their layout is checked here.
LAYOUT_ONLY = {"resnet32", "resnet44", "resnet56", "resnet110"}

_ALL = sorted(set(registry.list_models()) | set(torch_refs.TORCH_REFS))


def _torch_ref(arch: str, num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch_refs.randomize_bn_stats(torch_refs.TORCH_REFS[arch](num_classes), seed=seed + 1)


def _compare(arch: str, size: int, batch: int, num_classes: int | None = None) -> float:
    """Max |logit difference| of torch vs converted flax on N(0,1) inputs (NCHW vs NHWC)."""
    spec = registry.get_spec(arch)
    num_classes = num_classes or spec.num_classes
    ref_model = _torch_ref(arch, num_classes)
    x = torch.randn(batch, spec.channels, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = ref_model(x).numpy()
    variables = convert.convert_state_dict(ref_model.state_dict(), arch, num_classes)
    model = registry.create_model(arch, num_classes)
    out = jax.jit(lambda v, xs: model.apply(v, xs, train=False))(
        variables, x.permute(0, 2, 3, 1).numpy())
    out = np.asarray(out)
    assert out.shape == (batch, num_classes)
    # A model that ignored its input or weights would give near-constant logits.
    assert np.ptp(ref, axis=-1).min() > 1e-2, f"{arch}: degenerate reference logits"
    diff = float(np.abs(out - ref).max())
    assert diff < TOL, f"{arch}: max |flax - torch| = {diff:.3g} >= {TOL}"
    return diff


def test_owned_architectures_registered_and_covered():
    registered = set(registry.list_models())
    assert OWNED <= registered, f"not registered: {sorted(OWNED - registered)}"
    assert OWNED <= set(torch_refs.TORCH_REFS), \
        f"no torch reference: {sorted(OWNED - set(torch_refs.TORCH_REFS))}"
    assert set(torch_refs.TORCH_REFS) <= registered


@pytest.mark.parametrize("arch", sorted(LAYOUT_ONLY))
def test_layout_converts_strictly(arch):
    """The reference's state_dict fits the Flax tree exactly (names, ranks, shapes)."""
    spec = registry.get_spec(arch)
    variables = convert.convert_state_dict(
        torch_refs.TORCH_REFS[arch](spec.num_classes).state_dict(), arch)
    assert set(variables) == {"params", "batch_stats"}


@pytest.mark.parametrize("arch", [a for a in _ALL if a not in LAYOUT_ONLY])
def test_logits_match_torch(arch):
    if arch not in torch_refs.TORCH_REFS:
        pytest.skip(f"{arch}: no PyTorch reference in tests/torch_refs.py")
    spec = registry.get_spec(arch)
    small = spec.input_size <= 32
    # ImageNet nets at 64x64 (the pool is global) keep the test fast.
    _compare(arch, size=32 if small else 64, batch=2 if small else 1)


def test_vgg11_64px_uses_fourth_pool():
    """At 64x64 the reference max-pools after block3 too; both sides must agree."""
    _compare("vgg11", size=64, batch=1)


def test_other_num_classes():
    """Heads follow num_classes (CIFAR-100 students)."""
    _compare("wrn16_1", size=32, batch=2, num_classes=100)


def test_train_mode_uses_batch_statistics_like_torch():
    """train=True normalizes with the batch's (biased) statistics, as torch.train() does."""
    arch = "wrn16_1"
    ref_model = _torch_ref(arch, 10).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ref_model(x).numpy()
    # Convert the pre-forward running stats: torch updated them in place during forward,
    # but train-mode outputs do not depend on them, so either is fine for the output.
    variables = convert.convert_state_dict(ref_model.state_dict(), arch)
    model = registry.create_model(arch)
    xs = x.permute(0, 2, 3, 1).numpy()
    out, _ = jax.jit(lambda v, xs: model.apply(v, xs, train=True, mutable=["batch_stats"]))(
        variables, xs)
    assert np.abs(np.asarray(out) - ref).max() < TOL
    eval_out = jax.jit(lambda v, xs: model.apply(v, xs, train=False))(variables, xs)
    assert np.abs(np.asarray(eval_out) - ref).max() > 1e-3  # the two modes really differ


def test_model_layouts_have_expected_sizes():
    """Parameter counts equal the torch references' (catches silently dropped layers)."""
    for arch in ("resnet18", "wrn40_2", "vgg11", "resnet50_imagenet"):
        spec = registry.get_spec(arch)
        ref = torch_refs.TORCH_REFS[arch](spec.num_classes)
        n_torch = sum(p.numel() for p in ref.parameters())
        shapes = jax.eval_shape(lambda: registry.create_model(arch).init(
            jax.random.key(0), np.zeros((1, spec.input_size, spec.input_size, 3), np.float32),
            train=False))
        n_flax = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
        assert n_flax == n_torch, arch
