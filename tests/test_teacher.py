"""apply_with_bn_stats on the real converted resnet32 teacher vs PyTorch forward hooks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nayer_jax import classifier
from nayer_jax.losses import bn_moment_loss
from nayer_jax.teacher import apply_with_bn_stats
from tests.conftest import require_shared

torch = pytest.importorskip("torch")

N_IMAGES = 64


@pytest.fixture(scope="module")
def teacher_and_batch(converted_teacher, lossless_cifar10):
    clf = classifier.load_classifier(converted_teacher("resnet32"))
    x = clf.normalize(jnp.asarray(lossless_cifar10[0][:N_IMAGES], jnp.float32) / 255.0)
    return clf, x


@pytest.fixture(scope="module")
def torch_bn_hooks(teacher_and_batch):
    """Per BN layer in forward order: (batch mean, biased batch var, running mean, running var)."""
    from tests.torch_refs import load_shared_teacher

    _, x = teacher_and_batch
    model = load_shared_teacher(require_shared("teachers/cifar10_resnet32.th"), 32)
    records = []

    def hook(module, inputs, output):
        a = inputs[0]
        records.append((a.mean([0, 2, 3]), a.var([0, 2, 3], unbiased=False),
                        module.running_mean.clone(), module.running_var.clone()))

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    handles = [m.register_forward_hook(hook) for m in bns]
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()))
    for h in handles:
        h.remove()
    return [tuple(t.numpy() for t in r) for r in records], logits.numpy(), len(bns)


def test_bn_stats_match_pytorch_hooks(teacher_and_batch, torch_bn_hooks):
    clf, x = teacher_and_batch
    ref, _, n_bn = torch_bn_hooks
    _, stats = apply_with_bn_stats(clf.model, clf.variables, x)
    assert n_bn == 31 and len(ref) == n_bn  # resnet32: stem + 2 per block * 15 blocks
    assert len(stats) == n_bn
    worst = 0.0
    for i, (s, (mean, var, r_mean, r_var)) in enumerate(zip(stats, ref)):
        assert s.batch_mean.dtype == jnp.float32 and s.batch_mean.shape == mean.shape, i
        for got, want in ((s.batch_mean, mean), (s.batch_var, var)):
            worst = max(worst, float(np.abs(np.asarray(got) - want).max()))
            np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4, err_msg=f"layer {i}")
        np.testing.assert_allclose(np.asarray(s.running_mean), r_mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(s.running_var), r_var, rtol=0, atol=1e-6)
    print(f"max |batch stat - torch hook| over {n_bn} layers: {worst:.3g}")


def test_logits_and_variables_unchanged(teacher_and_batch, torch_bn_hooks):
    clf, x = teacher_and_batch
    before = jax.tree.map(np.array, clf.variables)
    logits, _ = apply_with_bn_stats(clf.model, clf.variables, x)
    plain = clf.model.apply(clf.variables, x, train=False)
    chex.assert_trees_all_close(logits, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logits), torch_bn_hooks[1], rtol=0, atol=1e-3)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, clf.variables), before)


def test_bn_loss_gradient_under_jit(teacher_and_batch):
    clf, x = teacher_and_batch
    x = x[:8]  # gradients only need a few images; keeps the compile + run small

    def loss(images):
        return bn_moment_loss(apply_with_bn_stats(clf.model, clf.variables, images)[1])

    g = jax.jit(jax.grad(loss))(x)
    assert g.shape == x.shape
    chex.assert_tree_all_finite(g)
    assert float(jnp.abs(g).max()) > 0.0
    # The jitted stats equal the eager ones (nothing depends on Python-side state).
    eager = apply_with_bn_stats(clf.model, clf.variables, x)[1]
    jitted = jax.jit(lambda im: apply_with_bn_stats(clf.model, clf.variables, im)[1])(x)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-5)
    # Directional derivative matches a central difference of the eager loss.
    d = jax.random.normal(jax.random.key(1), x.shape)
    d = d / jnp.linalg.norm(d)
    h = 1e-2
    fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=5e-2, atol=1e-3)
