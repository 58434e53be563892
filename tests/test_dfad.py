"""DFAD: each player's objective moves the L1 discrepancy its way (one generator step up,
one student step down), and a tiny end-to-end run (+ resume) on the real resnet20
teacher."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nayer_jax import distill, errors, main, parallel
from nayer_jax.classifier import load_classifier
from nayer_jax.models import create_model
from nayer_jax.synthesis import dfad
from tests.test_dafl import tiny_config as dafl_tiny_config
from tests.test_distill import _history, assert_same_run

TINY = dict(synthesis_batch_size=8, nz=8, ngf=4, lr_g=1e-2)


@pytest.fixture(scope="module")
def parts(converted_teacher):
    teacher = load_classifier(converted_teacher("resnet20"))
    student_model = create_model("resnet20", 10)
    method = dfad.Dfad(dfad.DfadSettings(**TINY), teacher, student_model)
    return teacher, student_model, method


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)  # the steps donate their inputs


def test_generator_step_increases_the_discrepancy(parts):
    teacher, student_model, method = parts
    sv = student_model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    state0 = method.init_state(jax.random.key(2))
    rng = jax.random.key(3)
    # the objective the generator minimizes is minus the discrepancy
    (z,) = method.step_latents(rng)
    loss, (_, m) = jax.jit(method._loss)(state0.params, state0.batch_stats, z,
                                         teacher.variables, sv)
    assert float(m["l1"]) > 0 and float(loss) == pytest.approx(-float(m["l1"]))
    # one step, then the same z again: the metric sums hold the L1 before each step
    state1, s1 = method.interleave_step(_copy(state0), sv, teacher.variables, rng,
                                        method.interleave_zero_sums())
    before = float(s1["l1"])
    assert before == pytest.approx(float(m["l1"]), rel=1e-5)
    _, s2 = method.interleave_step(state1, sv, teacher.variables, rng, _copy(s1))
    after = float(s2["l1"]) - before
    assert after > before * 1.001, (before, after)


def test_generator_step_compiles_once(parts):
    """Laid out as the loop lays it (replicated on its mesh), the generator step compiles
    once: from the zero sums, from its own sums, and from the sums the loop restarts an
    epoch from (fresh unplaced sums used to compile a second program)."""
    teacher, student_model, _ = parts
    mesh = parallel.make_mesh(1)
    method = dfad.Dfad(dfad.DfadSettings(**TINY), teacher, student_model, mesh=mesh)
    sv = parallel.replicate(
        student_model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False), mesh)
    tv = parallel.replicate(teacher.variables, mesh)
    state = parallel.replicate(method.init_state(jax.random.key(2)), mesh)
    sums = method.interleave_zero_sums()
    for i in range(2):
        state, sums = method.interleave_step(state, sv, tv, jax.random.key(i), sums)
    # an epoch restarts from host floats, which the loop places on its mesh (loop._kd_phase)
    sums = parallel.replicate({k: jnp.asarray(float(v), jnp.float32) for k, v in sums.items()},
                              mesh)
    state, sums = method.interleave_step(state, sv, tv, jax.random.key(3), sums)
    assert np.isfinite(float(sums["l1"]))
    assert method._step._cache_size() == 1


def test_student_step_decreases_the_discrepancy(parts):
    teacher, student_model, method = parts
    gen = method.init_state(jax.random.key(2))
    student = distill.create_student_state(student_model, jax.random.key(1), (32, 32, 3), 0.05)
    step = distill.make_kd_step(teacher, method.sample, 8, 1.0, aug_pad=0, aug_flip=False,
                                kd_loss="l1")
    rng = jax.random.key(4)
    student, before = step(student, gen, teacher.variables, rng)   # L1 before the update
    _, after = step(student, gen, teacher.variables, rng)          # same batch, after it
    assert float(after) < float(before) * 0.999, (float(before), float(after))


def tiny_config(teacher_dir, epochs: int = 2):
    return dafl_tiny_config(teacher_dir, epochs, method="dfad")


@pytest.fixture(scope="module")
def straight_run(converted_teacher, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dfad_straight")
    summary = main.run(tiny_config(converted_teacher("resnet20")), str(workdir))
    return workdir, summary


def test_tiny_run_logs_the_game(straight_run):
    workdir, summary = straight_run
    history = _history(workdir)
    assert [r["epoch"] for r in history] == [0, 1] and summary["epochs"] == 2
    for r in history:
        assert r["kd_loss"] > 0 and r["gen_l1"] > 0
    assert (workdir / "images" / "epoch_0001.png").is_file()


def test_resume_equals_straight_run(straight_run, converted_teacher, tmp_path):
    straight_dir, _ = straight_run
    config = tiny_config(converted_teacher("resnet20"))
    main.run(config, str(tmp_path), stop_after_epoch=0)
    assert [r["epoch"] for r in _history(tmp_path)] == [0]
    main.run(config, str(tmp_path))
    assert_same_run(straight_dir, tmp_path)


def test_out_of_range_field_is_one_line_config_error(converted_teacher, tmp_path):
    config = tiny_config(converted_teacher("resnet20"))
    config.adv_weight = 0.0
    with pytest.raises(errors.ConfigError, match=r"^config\.adv_weight=0\.0: expected > 0$"):
        main.run(config, str(tmp_path))


def test_normalized_generator_feeds_the_teacher_its_own_output(parts):
    """generator_output="normalized" (the DAFL/DFAD authors' tanh -> affine-free BN): the
    teacher sees the output itself, each channel standardized over the batch, and the KD
    step's normalization of the sampled images gives back that same tensor."""
    teacher, student_model, _ = parts
    method = dfad.Dfad(dfad.DfadSettings(**TINY, generator_output="normalized"), teacher,
                       student_model)
    state = method.init_state(jax.random.key(2))
    z = method.draw_z(jax.random.key(5), 8)
    out, _ = method.generate(state.params, state.batch_stats, z)
    x = np.asarray(method.teacher_input(out))
    np.testing.assert_array_equal(x, np.asarray(out))
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    images = method.sample(state, jax.random.key(5), 8)
    assert float(images.min()) < 0.0 or float(images.max()) > 1.0  # not clipped
    np.testing.assert_allclose(np.asarray(teacher.normalize(images)), x, atol=1e-5)


def test_unknown_generator_output_is_one_line_config_error(converted_teacher, tmp_path):
    config = tiny_config(converted_teacher("resnet20"))
    config.generator_output = "tanh"
    with pytest.raises(errors.ConfigError, match=r"^config\.generator_output='tanh': expected "
                                                 r"one of \['sigmoid', 'normalized'\]$"):
        main.run(config, str(tmp_path))


def test_generator_lr_follows_the_student_schedule(converted_teacher):
    """lr_g_follows_student (VainF's --scheduler): every generator Adam update is the
    constant-lr_g update times the student's LR factor of the same epoch (constant during
    warmup), fed the same gradients."""
    teacher = load_classifier(converted_teacher("resnet20"))
    config = tiny_config(converted_teacher("resnet20"), epochs=4)
    config.update(warmup=1, kd_steps=4, interleave_every=2, g_steps=1, lr_min=1e-3)
    student_model = create_model("resnet20", 10)
    built = {}
    for follows in (False, True):
        config.lr_g_follows_student = follows
        built[follows], _ = dfad.build(config, teacher, student_model, jax.random.key(0))
    per_epoch = 2  # g_steps x ceil(kd_steps / interleave_every) generator steps
    student_lr = distill.epoch_cosine_schedule(config.lr, config.lr_min, config.kd_steps, 3)
    # the student's LR by KD epoch: warmup, then the cosine of the 3 KD epochs
    expected = [1.0] * per_epoch + [float(student_lr(e * config.kd_steps)) / config.lr
                                    for e in range(3) for _ in range(per_epoch)]
    assert expected[-1] < 0.3 and expected[2] == pytest.approx(1.0)
    params = {"w": jnp.ones((3,))}
    states = {k: m.optimizer.init(params) for k, m in built.items()}
    for step, factor in enumerate(expected):
        grads = {"w": jnp.asarray([1.0, -2.0, 0.5]) * (step + 1)}
        ups = {}
        for k, m in built.items():
            ups[k], states[k] = m.optimizer.update(grads, states[k], params)
        np.testing.assert_allclose(np.asarray(ups[True]["w"]),
                                   factor * np.asarray(ups[False]["w"]), rtol=1e-5)
