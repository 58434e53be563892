"""The structure the methods rely on: one error base, the method registry and contract,
configs built by adding, no method importing the loop."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nayer_jax import errors, synthesis
from nayer_jax.synthesis import MethodBase

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "nayer_jax"
# what a method may use of distill: the KD step's config and API (the student's LR schedule
# included, which a generator may follow), nothing of the loop
DISTILL_API = {"default_config", "add_settings", "settings_from", "make_kd_step",
               "kd_objective", "student_variables", "StudentState", "epoch_cosine_schedule"}


def _sources():
    return {p: p.read_text() for p in PKG.rglob("*.py")}


def test_no_error_lists_or_config_get_defaults():
    for path, text in _sources().items():
        assert "_input_errors" not in text, path
        assert not re.search(r"config\.get\(", text), path


def test_methods_use_only_the_kd_step_api_of_distill():
    for path in (PKG / "synthesis").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "nayer_jax.distill":
                assert {a.name for a in node.names} <= DISTILL_API, path
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "distill":
                assert node.attr in DISTILL_API, f"{path}: distill.{node.attr}"
            if isinstance(node, ast.ImportFrom) and node.module == "nayer_jax":
                assert "loop" not in {a.name for a in node.names}, path


def test_every_input_error_class_derives_from_input_error():
    from nayer_jax import classifier, convert, data, evaluate, lte, paths, teacher_source
    from nayer_jax import train_teacher
    from nayer_jax.synthesis import luo

    for cls in (classifier.ClassifierFileError, convert.ConversionError, data.DatasetError,
                errors.ConfigError, lte.LTEError, teacher_source.TeacherSpecError,
                paths.SharedMissingError, luo.StageOneDirError, evaluate.EvaluationError,
                train_teacher.TrainTeacherError):
        assert issubclass(cls, errors.InputError), cls


@pytest.mark.parametrize("name", sorted(synthesis.METHODS))
def test_registered_methods_follow_the_contract(name):
    module = synthesis.get_method_module(name)
    c = module.default_config()
    assert c.method == name
    base = synthesis.get_method_module("noise").default_config()
    assert set(base) - {"noise_mean", "noise_std"} <= set(c), "configs add, never delete"
    cls = next(v for v in vars(module).values()
               if isinstance(v, type) and issubclass(v, MethodBase) and v is not MethodBase)
    for member in ("synthesize_epoch", "kd_active", "sample", "preview", "after_epoch",
                   "interleave_step"):
        assert callable(getattr(cls, member)), (cls, member)
        assert not isinstance(vars(cls).get(member), staticmethod), (cls, member)


def test_unknown_method_is_one_line():
    with pytest.raises(errors.ConfigError, match=r"config.method='nope': expected one of"):
        synthesis.get_builder("nope")


def _cli(args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "nayer_jax.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_bad_stage1_dir_is_one_line(converted_teacher, tmp_path):
    proc = _cli(["--config", "nayer_jax/configs/luo_cpu_cifar10_r32_r20.py",
                 f"--config.teacher={converted_teacher('resnet20')}", "--workdir",
                 str(tmp_path / "w"), "--config.stage1_dir=/nonexistent/stage1"])
    assert proc.returncode == 1, proc.stderr[-800:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: config.stage1_dir: /nonexistent/stage1"), proc.stderr[-800:]
    assert "Traceback" not in proc.stderr


def test_luo_warmup_other_than_stage1_is_one_line(converted_teacher, tmp_path, capsys):
    from nayer_jax import main
    from nayer_jax.configs import luo_cpu_cifar10_r32_r20 as cfg

    c = cfg.get_config()
    c.teacher = str(converted_teacher("resnet20"))
    del c["warmup"]  # untie the reference to stage1_epochs, as a hand-written config might
    c.warmup = 2
    with pytest.raises(SystemExit) as exit_info:
        main.run_guarded(c, str(tmp_path / "w"))
    message = str(exit_info.value.code)
    assert message.startswith("error: config.warmup=2 but config.stage1_epochs=3")
    assert "\n" not in message
