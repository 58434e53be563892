"""Luo et al. 2020 (generator ensemble) on the real shared resnet20 teacher, at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nayer_jax import parallel
from nayer_jax.checkpoint import RunCheckpointer
from nayer_jax.classifier import load_classifier
from nayer_jax.synthesis import luo

REPO = Path(__file__).resolve().parent.parent
CPU_CONFIG = "nayer_jax/configs/luo_cpu_cifar10_r32_r20.py"
TINY = dict(gen_batch_size=8, ngf=8, latent_dim=16, lr_g=1e-3)


@pytest.fixture(scope="module")
def teacher(converted_teacher):
    return load_classifier(converted_teacher("resnet20"))


def _method(teacher, impl: str, members: int = 3, **kw) -> luo.Luo:
    settings = luo.LuoSettings(num_generators=members, ensemble_impl=impl, **{**TINY, **kw})
    return luo.Luo(settings, teacher, 32)


def _assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def _relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def test_generator_architecture_and_output_range():
    g = luo.LuoGenerator(num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                                latent_dim=16, ngf=8, img_size=32)
    z = jax.random.normal(jax.random.key(0), (6, 16))
    y = jax.nn.one_hot(jnp.arange(6) % 10, 10)
    v = g.init(jax.random.key(1), z, y)
    p = v["params"]
    assert p["fc"]["kernel"].shape == (26, 16 * 8 * 8)           # z ⊕ one-hot -> (img/4)² x 2ngf
    assert p["conv1"]["kernel"].shape == (3, 3, 16, 16)          # 2ngf, then ngf
    assert p["conv2"]["kernel"].shape == (3, 3, 16, 8)
    assert set(p["bn_out"]) == {"scale"}                         # output BN: scale, no shift
    x, _ = g.apply(v, z, y, train=True, mutable=["batch_stats"])
    assert x.shape == (6, 32, 32, 3) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # before the clip, the output BN makes each channel's batch mean the teacher's mean
    inner = np.asarray((x - 0.5) / 0.25).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(inner, 0.0, atol=0.05)
    deep = luo.LuoGenerator(num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, latent_dim=4,
                                   ngf=4, img_size=224, num_up=luo.num_up_for(224))
    shapes = jax.eval_shape(lambda: deep.init(jax.random.key(0), z[:2, :4], y[:2]))["params"]
    assert shapes["fc"]["kernel"].shape == (14, 14 * 14 * 8) and "conv4" in shapes


@pytest.mark.parametrize("impl", ["vmap", "unroll"])
def test_ensemble_step_equals_separate_member_steps(teacher, impl):
    """M=3 in one jitted step == each generator stepped alone with its key (two steps).

    Plain SGD with a small lr, compared per leaf (params and BN running stats) as the
    relative L2 error of the update (value after the step - value before). Rounding differs
    between the batched and the single computation, and where an activation sits on a
    LeakyReLU kink or the output clip that flips a few gradient entries. Measured worst leaf:
    1.9e-2 (vmap, second step), 2e-7 (unroll); a member stepped with another member's key:
    1.36. The bound 0.1 sits between them; elementwise atol cannot, one flipped entry fails
    it. Adam, which divides by |g|, would magnify the flips; the method's Adam is optax's,
    and the ensemble mechanics (member axis, per-member keys, BN stats, donation) are what
    this checks.
    """
    m = _method(teacher, impl)
    m.optimizer = optax.sgd(1e-4)  # before any trace: steps read it when traced
    state = m.init_state(jax.random.key(0))
    init_keys = m.member_keys(jax.random.key(0))
    singles = [m.init_member(k) for k in init_keys]      # members differ by seed only
    for i, single in enumerate(singles):
        _assert_trees_close(single[0], jax.tree.map(lambda a: a[i], state.params), rtol=0, atol=0)
    step = jax.jit(m.member_step)
    sums, single_losses = None, np.zeros(3)
    for r in (jax.random.key(1), jax.random.key(2)):
        before = [jax.tree.map(np.array, (p, b)) for p, b, _ in singles]  # copies: steps donate
        state, sums = m.ensemble_step(state, r, sums)
        keys = m.member_keys(r)
        outs = [step(p, b, o, teacher.variables, keys[i]) for i, (p, b, o) in enumerate(singles)]
        singles = [out[:3] for out in outs]
        single_losses += [float(out[3]["loss"]) for out in outs]
        np.testing.assert_allclose(np.asarray(sums["loss"]), single_losses, rtol=1e-5)
        for i, (p, b, _) in enumerate(singles):
            member = jax.tree.map(lambda a: a[i], (state.params, state.batch_stats))
            errors = jax.tree.map(
                lambda v0, want, got: _relative_l2(np.asarray(got) - v0, np.asarray(want) - v0),
                before[i], (p, b), member)
            worst = max(jax.tree.leaves(errors))
            assert worst < 0.1, f"member {i}: update off by {worst:.3g} relative L2"
    assert int(state.steps) == 2
    assert sums["loss"].shape == (3,) and np.isfinite(np.asarray(sums["loss"])).all()
    assert not np.allclose(state.params["conv1"]["kernel"][0], state.params["conv1"]["kernel"][1])


def test_adam_ensemble_learns(teacher):
    """The real optimizer: a few unrolled Adam steps lower every member's loss."""
    m = _method(teacher, "auto", members=2, lr_g=1e-2)
    state = m.init_state(jax.random.key(0))
    first = None
    for j in range(6):
        state, sums = m.ensemble_step(state, jax.random.key(j))
        first = np.asarray(sums["loss"]) if first is None else first
    assert (np.asarray(sums["loss"]) < first).all()
    assert jax.tree.leaves(state.opt_state)[0].shape[0] == 2  # Adam state per member


def test_ensemble_step_compiles_once_on_a_replicated_state(teacher):
    """Laid out as the loop lays it, two stage-1 epochs run one compiled ensemble step
    (fresh unreplicated metric sums used to compile a second program)."""
    m = _method(teacher, "auto", members=2, gen_steps_per_epoch=2)
    state = parallel.replicate(m.init_state(jax.random.key(0)), parallel.make_mesh(1))
    for epoch in range(2):
        state, metrics = m.synthesize_epoch(state, None, epoch, jax.random.key(epoch))
    assert np.isfinite(float(metrics["loss"]))
    assert m._step._cache_size() == 1


def test_sample_picks_random_members_and_returns_unit_images(teacher):
    m = _method(teacher, "unroll")
    state = m.init_state(jax.random.key(0))
    draw = jax.jit(m.draw, static_argnums=(2,))
    members = []
    for j in range(24):
        images, member, labels = draw(state, jax.random.key(100 + j), 6)
        members.append(int(member))
        assert images.shape == (6, 32, 32, 3) and images.dtype == jnp.float32
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert len(set(members)) == 3  # 24 keys over 3 members
    # the batch is member `member`'s generator applied to the key's latents
    rng = jax.random.key(7)
    images, member, labels = m.draw(state, rng, 6)
    z, y = m.draw_latents(jax.random.split(rng)[1], 6)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(labels))
    i = int(member)
    expected = m.generate(jax.tree.map(lambda a: a[i], state.params),
                          jax.tree.map(lambda a: a[i], state.batch_stats), z,
                          jax.nn.one_hot(y, 10))
    np.testing.assert_allclose(np.asarray(images), np.asarray(expected), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(m.sample(state, rng, 6)), np.asarray(images))
    preview = np.asarray(m.preview(state))
    assert preview.shape == (30, 32, 32, 3) and preview.dtype == np.uint8  # 3 members x 10 classes


TINY_RUN = dict(epochs=2, stage1_epochs=1, num_generators=2, gen_steps_per_epoch=2,
                gen_batch_size=8, ngf=8, latent_dim=16, kd_steps=2, batch_size=8, eval_limit=40,
                eval_batch_size=40)


def _tiny_config(teacher_dir, **overrides):
    """The CPU config with TINY_RUN overrides, built in-process like the CLI builds it."""
    sys.path.insert(0, str(REPO))
    from nayer_jax.configs import luo_cpu_cifar10_r32_r20 as cfg

    c = cfg.get_config()
    c.teacher = str(teacher_dir)
    for k, v in {**TINY_RUN, **overrides}.items():
        c[k] = v
    assert c.warmup == c.stage1_epochs  # tied by reference
    return c


@pytest.fixture(scope="module")
def cli_run(converted_teacher, tmp_path_factory):
    """`python -m nayer_jax.main` on the CPU config with tiny overrides: stopped after
    epoch 0 (the end of stage 1), then resumed to the end. (workdir, first, second)."""
    work = tmp_path_factory.mktemp("luo_cli") / "w"
    flags = [f"--config.{k}={v}" for k, v in TINY_RUN.items()]
    cmd = [sys.executable, "-m", "nayer_jax.main", "--config", CPU_CONFIG, "--workdir", str(work),
           *flags, f"--config.teacher={converted_teacher('resnet20')}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(cmd + ["--stop_after_epoch=0"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    return work, first, second


def test_cli_runs_the_cpu_config_and_resumes(cli_run):
    work, first, second = cli_run
    assert first.stdout.strip().splitlines()[-1].startswith("final_top1=")
    assert "resuming" in second.stdout + second.stderr
    last = second.stdout.strip().splitlines()[-1]
    assert last.startswith("final_top1=") and "epochs=2" in last
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["kd_loss"] is None and "syn_loss_member1" in rows[0]  # stage 1
    assert rows[1]["kd_loss"] is not None and "syn_loss" not in rows[1]  # stage 2
    assert sorted(p.name for p in (work / "images").glob("epoch_*.png")) == [
        "epoch_0000.png", "epoch_0000_member0.png", "epoch_0000_member1.png", "epoch_0001.png"]
    assert (work / "stage1" / "member1.png").is_file()
    meta = json.loads((work / "stage1" / "ensemble.json").read_text())
    assert meta["num_generators"] == 2 and meta["steps"] == 2


def _student_template(config):
    from nayer_jax import distill
    from nayer_jax.models import create_model

    schedule = distill.epoch_cosine_schedule(0.1, 0.0, 1, 1)  # same optimizer-state tree
    return distill.create_student_state(create_model(config.student, 10), jax.random.key(0),
                                        (32, 32, 3), schedule)


def _run_state(workdir, template):
    ckpt = RunCheckpointer(Path(workdir) / "checkpoints")
    state, _ = ckpt.restore(ckpt.latest_step(), template)
    ckpt.close()
    return state


def test_stage2_from_the_stage1_dir_alone_reproduces_the_run(cli_run, teacher, converted_teacher,
                                                             tmp_path):
    """A new workdir with config.stage1_dir: the saved ensemble, frozen; the student of the
    full run (same ensemble, same keys)."""
    from nayer_jax.main import run

    work, _, full = cli_run
    config = _tiny_config(converted_teacher("resnet20"), stage1_dir=str(work / "stage1"))
    _, restored = luo.build(config, teacher, None, jax.random.key(9))
    template = {"student": _student_template(config), "method": restored}
    run_a = _run_state(work, template)
    _assert_trees_close(restored.params, run_a["method"].params, rtol=0, atol=0)
    _assert_trees_close(restored.batch_stats, run_a["method"].batch_stats, rtol=0, atol=0)

    summary = run(config, str(tmp_path / "b"))
    b = tmp_path / "b"
    run_b = _run_state(b, template)
    _assert_trees_close(run_b["method"].params, run_a["method"].params, rtol=0, atol=0)  # frozen
    assert not (b / "stage1").exists()  # nothing trained, nothing exported
    rows = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kd_loss"] is None and "syn_loss" not in rows[0]  # stage 1 skipped
    assert rows[1]["kd_loss"] is not None
    _assert_trees_close(run_b["student"].params, run_a["student"].params, rtol=1e-5, atol=1e-6)
    assert f"final_top1={summary['final_top1']:.4f}" in full.stdout


def test_stage1_dir_must_match_the_run(teacher, converted_teacher, tmp_path):
    m = _method(teacher, "unroll", members=2)
    state = m.init_state(jax.random.key(0))
    luo.save_stage1(tmp_path / "s1", state, m.stage1_meta())
    c = _tiny_config(converted_teacher("resnet20"), stage1_dir=str(tmp_path / "s1"), ngf=4)
    with pytest.raises(luo.StageOneDirError, match="ngf=8, but this run expects ngf=4"):
        luo.build(c, teacher, None, jax.random.key(0))
    with pytest.raises(ValueError, match="warmup"):
        bad = _tiny_config(converted_teacher("resnet20"))
        del bad["warmup"]  # untie the reference the config sets
        bad.warmup = 0
        luo.build(bad, teacher, None, jax.random.key(0))
