"""NAYER synthesis pieces on the real shared resnet20 teacher, at tiny sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nayer_jax import augment, parallel, pool as pool_lib
from nayer_jax.classifier import load_classifier
from nayer_jax.lte import resolve_lte
from nayer_jax.models import create_model
from nayer_jax.synthesis import nayer


@pytest.fixture(scope="module")
def method(converted_teacher):
    teacher = load_classifier(converted_teacher("resnet20"))
    settings = nayer.NayerSettings(synthesis_batch_size=24, g_steps=3, le_emb_size=16, ngf=8,
                                   g_life=3, warmup=1)
    student = create_model("resnet20", 10)
    m = nayer.Nayer(settings, teacher, student, resolve_lte("shared:cifar10", 10), 32)
    sv = student.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    return m, sv


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def test_targets_cover_every_class_then_random_remainder():
    t = np.asarray(nayer.make_targets(10, 24, jax.random.key(0)))
    assert t.shape == (24,)
    np.testing.assert_array_equal(t[:20], np.tile(np.arange(10), 2))
    assert ((0 <= t[20:]) & (t[20:] < 10)).all()


def test_noisy_layer_sends_chunk_k_through_layer_k():
    layer = nayer.NoisyLayer(num_layers=3, chunk=4, features=5)
    x = jax.random.normal(jax.random.key(0), (10, 6))  # 10 rows: chunks of 4, 4, 2
    v = layer.init(jax.random.key(1), x)
    out = np.asarray(layer.apply(v, x))
    w, b = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
    for i in range(10):
        np.testing.assert_allclose(out[i], np.asarray(x[i]) @ w[i // 4] + b[i // 4], rtol=1e-5, atol=1e-5)


def test_redraw_touches_only_the_noisy_layer(method):
    m, _ = method
    params, _ = m.init_generator(jax.random.key(0))
    a = m.redraw_noisy_layer(params, jax.random.key(1))
    b = m.redraw_noisy_layer(params, jax.random.key(2))
    for name in params:
        if name != "noisy":
            jax.tree.map(np.testing.assert_array_equal, a[name], params[name])
    k = np.asarray(a["noisy"]["kernel"])
    assert k.shape == (3, 512, 16)  # ceil(24 / 10) layers, LTE 512 -> le_emb 16
    assert abs(k.mean()) < 0.02 and abs(k.std() - 1.0) < 0.02  # N(0, 1)
    assert not np.any(np.asarray(a["noisy"]["bias"]))
    assert not np.allclose(k, np.asarray(b["noisy"]["kernel"]))


def test_each_loop_redraws_and_pools_its_best_batch(method):
    m, sv = method
    state = m.init_state(jax.random.key(0), pool_capacity=96)
    first_noisy = np.asarray(state.gen_params["noisy"]["kernel"])
    state, metrics = m.synthesis_loop(state, sv, jax.random.key(3), use_adv=False)
    after_one = np.asarray(state.gen_params["noisy"]["kernel"])
    state, _ = m.synthesis_loop(state, sv, jax.random.key(4), use_adv=True)
    assert int(state.pool.count) == 48
    assert bool(state.mmt.active)
    assert not np.allclose(first_noisy, after_one)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["best_loss"]) <= float(metrics["loss"]) * 1.5


def test_best_batch_is_the_lowest_loss_step(method):
    """Step by hand: the pooled images are those of the step with the smallest loss."""
    m, sv = method
    state = m.init_state(jax.random.key(0), pool_capacity=24)
    targets = nayer.make_targets(10, 24, jax.random.key(5))
    rows, onehot = m.lte[targets], jax.nn.one_hot(targets, 10)
    params = m.redraw_noisy_layer(state.gen_params, jax.random.key(6))
    carry = nayer.LoopCarry(
        params=params, batch_stats=state.gen_batch_stats, opt_state=m.optimizer.init(params),
        best_loss=jnp.asarray(jnp.inf), best_images=jnp.zeros((24, 32, 32, 3)),
        last_stats=tuple(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), m._bn_shapes)),
        sums={k: jnp.zeros(()) for k in ("loss", "bn", "ce", "adv")})
    losses_seen, images_seen = [], []
    for i in range(4):
        images = m.generator.apply({"params": carry.params, "batch_stats": carry.batch_stats},
                                   rows, train=True, mutable=["batch_stats"])[0]
        before = float(carry.sums["loss"])
        images_seen.append(np.asarray(images))
        carry = m._step(carry, rows, onehot, state.mmt, m.teacher.variables, sv,
                        jax.random.key(10 + i), use_adv=False)
        losses_seen.append(float(carry.sums["loss"]) - before)
    best = int(np.argmin(losses_seen))
    np.testing.assert_allclose(float(carry.best_loss), losses_seen[best], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(carry.best_images), images_seen[best], atol=1e-5)


def test_generator_reinitialized_every_g_life_epochs(method):
    m, sv = method
    frozen = nayer.Nayer(nayer.NayerSettings(**{**m.s.__dict__, "lr_g": 0.0, "gwp_loops": 1,
                                                "g_loops": 1}),
                         m.teacher, m.student_model, np.asarray(m.lte), 32)
    state = frozen.init_state(jax.random.key(0), pool_capacity=96)
    conv_before = np.asarray(state.gen_params["conv1"]["kernel"])
    state, _ = frozen.synthesize_epoch(state, sv, epoch=2, rng=jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(state.gen_params["conv1"]["kernel"]), conv_before)
    for epoch in (3, 4):  # g_life = 3, warmup = 1: 3 % 3 == 0, and (4 - 1) % 3 == 0
        rng = jax.random.key(8 + epoch)
        state, _ = frozen.synthesize_epoch(state, sv, epoch=epoch, rng=rng)
        expected, _ = frozen.init_generator(jax.random.split(rng)[0])
        np.testing.assert_allclose(np.asarray(state.gen_params["conv1"]["kernel"]),
                                   np.asarray(expected["conv1"]["kernel"]), atol=1e-7)
        assert not np.allclose(np.asarray(state.gen_params["conv1"]["kernel"]), conv_before)


def test_generator_reinit_compiles_nothing_again(method):
    """Issue 14: the re-initialized generator comes back placed as before, so the jitted
    synthesis step, loop finish and init each keep the compilations of the first epochs."""
    m, sv = method
    m3 = nayer.Nayer(nayer.NayerSettings(**{**m.s.__dict__, "gwp_loops": 1, "g_loops": 2,
                                            "g_steps": 1, "warmup": 1, "g_life": 5}),
                     m.teacher, m.student_model, np.asarray(m.lte), 32)
    # placed as the loop places a fresh or restored state
    state = parallel.replicate(m3.init_state(jax.random.key(0), pool_capacity=240), m3.mesh)
    compiled = lambda: (m3._step._cache_size(), m3._finish._cache_size(),
                        m3._init_generator._cache_size())
    # warmup epoch 0, then epoch 1 (re-init: epoch - warmup = 0) and 2: every step variant
    for epoch in range(3):
        state, _ = m3.synthesize_epoch(state, sv, epoch=epoch, rng=jax.random.key(epoch))
    before = compiled()
    assert before == (3, 1, 1)  # (use_adv, student_train): (F, F), (T, F), (T, T)
    for epoch in (5, 6):  # g_life 5, warmup 1: 5 % 5 == 0 and (6 - 1) % 5 == 0 re-initialize
        assert m3.reinit_generator(epoch)
        state, _ = m3.synthesize_epoch(state, sv, epoch=epoch, rng=jax.random.key(epoch))
    assert compiled() == before


@pytest.mark.parametrize("epoch,warmup,g_life,expected", [
    (0, 20, 10, False), (10, 20, 10, True), (20, 20, 10, True), (25, 20, 10, False),
    (30, 20, 10, True), (3, 3, 10, True), (13, 3, 10, True), (10, 3, 10, True),
    (7, 3, 10, False), (5, 2, 3, True), (6, 2, 3, True), (4, 2, 3, False)])
def test_g_life_rule_is_the_official_one(method, epoch, warmup, g_life, expected):
    """Official: re-init when (epoch - warmup) % g_life == 0 or epoch % g_life == 0."""
    m, _ = method
    rule = nayer.Nayer.reinit_generator(
        type("M", (), {"s": nayer.NayerSettings(warmup=warmup, g_life=g_life)})(), epoch)
    assert rule is expected


def test_adversarial_term_uses_train_mode_student_from_the_second_loop(method, monkeypatch):
    """The official code: eval-mode student in an epoch's first synthesis loop, train mode
    (batch BN statistics) from the second on; warmup loops have no L_adv at all."""
    m, sv = method
    seen = []
    original = m.synthesis_loop

    def spy(state, student_vars, rng, use_adv, student_train=False, to_pool=True):
        seen.append((use_adv, student_train))
        return original(state, student_vars, rng, use_adv, student_train, to_pool)

    two_loops = nayer.Nayer(nayer.NayerSettings(**{**m.s.__dict__, "g_loops": 3, "g_steps": 1,
                                                   "gwp_loops": 2}),
                            m.teacher, m.student_model, np.asarray(m.lte), 32)
    monkeypatch.setattr(two_loops, "synthesis_loop", spy)
    original = nayer.Nayer.synthesis_loop.__get__(two_loops)
    state = two_loops.init_state(jax.random.key(0), pool_capacity=200)
    state, _ = two_loops.synthesize_epoch(state, sv, epoch=0, rng=jax.random.key(1))
    state, _ = two_loops.synthesize_epoch(state, sv, epoch=1, rng=jax.random.key(2))
    assert seen == [(False, False), (False, False), (True, False), (True, True), (True, True)]


def test_pool_ring_buffer_and_uniform_sampling():
    p = pool_lib.create_pool(10, (2, 2, 1))
    for v in range(4):  # 4 batches of 3 -> 12 writes into 10 slots
        p = pool_lib.add(p, jnp.full((3, 2, 2, 1), v / 255.0))
    assert int(p.count) == 12 and int(pool_lib.size(p)) == 10
    values = np.asarray(p.images[:, 0, 0, 0])
    np.testing.assert_array_equal(values, [3, 3, 0, 1, 1, 1, 2, 2, 2, 3])  # slot 9, then wraps to 0, 1
    np.testing.assert_array_equal(np.asarray(pool_lib.latest(p, 3))[:, 0, 0, 0], [3, 3, 3])
    small = pool_lib.add(pool_lib.create_pool(50, (1, 1, 1)),
                         jnp.linspace(0, 1, 5).reshape(5, 1, 1, 1))
    draws = np.asarray(pool_lib.sample(small, jax.random.key(0), 5000)).ravel()
    assert set(np.round(draws * 255).astype(int)) == {0, 64, 128, 191, 255}  # only valid rows
    counts = np.unique(draws, return_counts=True)[1]
    assert counts.min() > 850 and counts.max() < 1150  # uniform: 1000 each


def test_augmentation_ranges_shifts_and_flips():
    x = jax.random.uniform(jax.random.key(0), (64, 8, 8, 3))
    y = np.asarray(augment.random_crop_flip(jax.random.key(1), x, pad=2))
    assert y.shape == x.shape and y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_array_equal(np.asarray(augment.random_crop_flip(jax.random.key(1), x, pad=0,
                                                                      flip=False)), np.asarray(x))
    xn = np.asarray(x)
    n_flipped, n_match = 0, 0
    for i in range(64):  # each output is a (maybe flipped) shift of its input by <= 2 px
        for flip in (False, True):
            src = xn[i, :, ::-1] if flip else xn[i]
            padded = np.pad(src, ((2, 2), (2, 2), (0, 0)))
            hits = [(dy, dx) for dy in range(5) for dx in range(5)
                    if np.allclose(padded[dy:dy + 8, dx:dx + 8], y[i])]
            if hits:
                n_match += 1
                n_flipped += flip
                break
    assert n_match == 64
    assert 16 < n_flipped < 48  # p = 0.5 per image
    grads = jax.grad(lambda z: augment.random_crop_flip(jax.random.key(2), z).sum())(x)
    assert np.isfinite(np.asarray(grads)).all()


def test_imagenet_generator_emits_224_images_in_unit_range():
    """NAYER's deep generator: 14x14 seed, four x2 up-samplings -> 224x224x3 in [0, 1]."""
    gen = nayer.NLGeneratorDeep(num_classes=4, num_noisy=2, le_emb_size=8, ngf=4)
    rows = jax.random.normal(jax.random.key(0), (6, 16))
    v = gen.init(jax.random.key(1), rows)
    images, _ = gen.apply(v, rows, mutable=["batch_stats"])
    assert images.shape == (6, 224, 224, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_bf16_compute_keeps_float32_state(method):
    """compute_dtype=bfloat16: forward passes in bf16, parameters/optimizer/losses in f32."""
    from nayer_jax import distill

    m, sv = method
    losses_by_dtype = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        mb = nayer.Nayer(m.s, m.teacher, m.student_model, np.asarray(m.lte), 32,
                         compute_dtype=dtype)
        state = mb.init_state(jax.random.key(0), pool_capacity=24)
        state, metrics = mb.synthesis_loop(state, sv, jax.random.key(1), use_adv=True)
        losses_by_dtype[dtype] = float(metrics["loss"])
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.gen_params))
        kd = distill.make_kd_step(m.teacher, mb.sample, 8, compute_dtype=dtype)
        student = distill.create_student_state(m.student_model, jax.random.key(2), (32, 32, 3), 0.05)
        student, loss = kd(student, state, m.teacher.variables, jax.random.key(3))
        assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(student.params))
    np.testing.assert_allclose(losses_by_dtype[jnp.bfloat16], losses_by_dtype[jnp.float32], rtol=0.05)


def test_first_loops_can_stay_out_of_the_pool(method):
    m, sv = method
    skip = nayer.Nayer(nayer.NayerSettings(**{**m.s.__dict__, "g_steps": 1, "gwp_loops": 3,
                                              "pool_skip_loops": 2}),
                       m.teacher, m.student_model, np.asarray(m.lte), 32)
    assert skip.loops_before(0) == 0 and skip.loops_before(1) == 3
    state = skip.init_state(jax.random.key(0), pool_capacity=96)
    state, _ = skip.synthesize_epoch(state, sv, epoch=0, rng=jax.random.key(1))
    assert int(state.pool.count) == skip.s.synthesis_batch_size  # loops 0 and 1 skipped


def test_pool_skip_that_empties_the_first_kd_pool_is_one_line(converted_teacher):
    from nayer_jax.configs.nayer_cpu_cifar10_r32_r20 import get_config
    from nayer_jax.errors import ConfigError

    c = get_config()
    c.teacher = str(converted_teacher("resnet20"))
    loops = c.warmup * c.gwp_loops + c.g_loops  # the warmup's loops + the first KD epoch's
    c.pool_skip_loops = loops
    teacher = load_classifier(c.teacher)
    with pytest.raises(ConfigError, match=rf"config.pool_skip_loops={loops}: expected < {loops}"):
        nayer.build(c, teacher, create_model("resnet20"), jax.random.key(0))
