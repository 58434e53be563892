"""Acceptance: nayer-jax works installed as a package, away from the checkout.

A copy of pyproject.toml, README.md and nayer_jax/ is pip-installed (dependencies
resolved offline against the installed ones: `--no-index`, so nothing is downloaded)
into a fresh venv that reuses this interpreter's packages. Then, from a directory
outside the clone: `import nayer_jax` resolves in the venv's site-packages with its
assets and configs, the `nayer-jax` command answers --help, lists the presets, turns bad
input into one line, and runs a preset end to end at tiny sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nayer_jax.paths import shared_dir
from tests.conftest import require_shared

ROOT = Path(__file__).resolve().parent.parent
PRESET = "nayer_cpu_cifar10_r32_r20"
# tests/test_distill.py's tiny_config sizes; one (warmup) epoch: synthesis, eval, logs
TINY = {"epochs": 1, "warmup": 1, "eval_limit": 40, "eval_batch_size": 40,
        "synthesis_batch_size": 20, "g_steps": 2, "gwp_loops": 1, "g_loops": 1, "g_life": 2,
        "ngf": 8, "le_emb_size": 16, "kd_steps": 2, "batch_size": 16,
        "pool_skip_loops": 0}


class Installed:
    def __init__(self, venv: Path, outside: Path, env: dict):
        self.venv, self.outside, self.env = venv, outside, env
        self.python = venv / "bin" / "python"
        self.command = venv / "bin" / "nayer-jax"
        self.site = Path(self.run([str(self.python), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                                  ).stdout.strip())

    def run(self, args, timeout: int = 300, check: bool = True):
        proc = subprocess.run([str(a) for a in args], cwd=self.outside, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, (
                f"{' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout[-2000:]}\n"
                f"{proc.stderr[-3000:]}")
        return proc

    def nayer_jax(self, *args, **kwargs):
        return self.run([self.command, *args], **kwargs)


def _outer_site_pth(venv_site: Path) -> None:
    """Run from inside a venv, `--system-site-packages` would only see the base
    interpreter's packages: add this interpreter's site-packages (with their .pth)."""
    if sys.prefix == sys.base_prefix:
        return
    import site

    lines = [f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()]
    (venv_site / "_nayer_outer_site.pth").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    src, venv, outside = base / "src", base / "venv", base / "elsewhere"
    src.mkdir()
    outside.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt",
                 "requirements-torch.txt"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "nayer_jax", src / "nayer_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["NAYER_SHARED"] = str(shared_dir())  # ../shared beside site-packages is not it
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    _outer_site_pth(site)
    # the venv has no pip of its own: the shared one installs into the venv's prefix
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--no-index", "--no-build-isolation", ".[dev]"],
                          cwd=src, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        "pip install .[dev] (offline, against the installed packages) failed: a declared "
        f"dependency is missing or pinned differently here\n{proc.stdout[-2000:]}\n"
        f"{proc.stderr[-3000:]}")
    return Installed(venv, outside, env)


def test_import_resolves_in_venv_with_assets_and_configs(installed):
    out = installed.run([installed.python, "-c", (
        "import json, importlib.resources as r, nayer_jax, nayer_jax.configs.common as c; "
        "root = r.files('nayer_jax'); "
        "print(json.dumps({'file': nayer_jax.__file__, 'common': c.__file__, "
        "'assets': sorted(p.name for p in (root / 'assets').iterdir()), "
        "'configs': sorted(p.name for p in (root / 'configs').iterdir() "
        "if p.name.endswith('.py'))}))")]).stdout
    info = json.loads(out.strip().splitlines()[-1])
    package = installed.site / "nayer_jax"
    assert Path(info["file"]).resolve() == (package / "__init__.py").resolve(), info["file"]
    assert Path(info["common"]).resolve().is_relative_to(package.resolve())
    assert not Path(info["file"]).resolve().is_relative_to(ROOT)
    assert {"digits_minilm.npy", "digits_minilm.json"} <= set(info["assets"])
    assert f"{PRESET}.py" in info["configs"] and "common.py" in info["configs"]


def test_installed_metadata_pins_torch_and_lists_the_runtime(installed):
    from importlib.metadata import Distribution

    dist_info = next(installed.site.glob("nayer_jax-*.dist-info"))
    requires = Distribution.at(dist_info).requires
    assert 'torch==2.13.0; extra == "torch"' in requires
    base = {r.split(";")[0].split(">")[0].split("=")[0].strip().lower()
            for r in requires if "extra ==" not in r}
    assert {"jax", "flax", "optax", "orbax-checkpoint", "tensorboardx"} <= base
    assert "torch" not in base and "tensorflow-datasets" not in base  # extras only
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "nayer-jax = nayer_jax.cli:main" in entry_points


def test_help_presets_and_one_line_errors(installed, tmp_path):
    top = installed.nayer_jax("--help").stdout
    for command in ("run", "presets", "convert", "evaluate", "train-teacher", "lte",
                    "quickstart"):
        assert f"\n  {command} " in top, top
    assert "example" in top
    module = installed.run([installed.python, "-m", "nayer_jax", "--help"]).stdout
    assert module == top
    for command in ("run", "quickstart", "convert", "evaluate"):
        help_text = installed.nayer_jax(command, "--help").stdout
        assert "example" in help_text and f"nayer-jax {command} " in help_text, help_text
    assert PRESET in installed.nayer_jax("run", "--help").stdout
    assert PRESET in installed.nayer_jax("presets").stdout

    bad = installed.nayer_jax("run", "--config", "nayer_cpu_cifar10_r32", "--workdir",
                              tmp_path / "w", check=False)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert bad.stderr.startswith(f"error: --config nayer_cpu_cifar10_r32: no such file and no "
                                 f"preset of that name (did you mean '{PRESET}'?")
    missing = installed.nayer_jax("evaluate", "--model", tmp_path / "nothing", "--data",
                                  "digits", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: ")
    unknown = installed.nayer_jax("distill", check=False)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown command")


def test_tiny_preset_run_end_to_end(installed, tmp_path):
    teacher = require_shared("teachers/cifar10_resnet20.th")
    workdir = tmp_path / "run"
    proc = installed.nayer_jax(
        "run", "--config", PRESET, "--workdir", workdir,
        f"--config.teacher=torch:resnet20:{teacher}",
        *(f"--config.{k}={v}" for k, v in TINY.items()), timeout=600)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("final_top1=") and "epochs=1" in last, last
    history = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0]
    config = json.loads((workdir / "config.json").read_text())
    assert config["teacher"] == f"torch:resnet20:{teacher}" and config["ngf"] == 8
    assert list(workdir.glob("events.out.tfevents.*")), sorted(p.name for p in workdir.iterdir())
    assert (workdir / "student").is_dir() and (workdir / "images" / "epoch_0000.png").exists()


def test_config_preset_names_map_to_package_files(tmp_path):
    """In-process, no venv: preset (with ':ARG', with or without '.py') -> its file; a real
    file wins; other names are one ConfigError naming the closest preset."""
    from nayer_jax import cli, errors

    configs = ROOT / "nayer_jax" / "configs"
    assert cli.resolve_config("nayer_cifar10_r34_r18:200") == \
        f"{configs / 'nayer_cifar10_r34_r18.py'}:200"
    assert cli.resolve_config(f"{PRESET}.py") == str(configs / f"{PRESET}.py")
    own = tmp_path / f"{PRESET}.py"
    own.write_text("def get_config():\n    return None\n")
    assert cli.resolve_config(f"{own}:x") == f"{own}:x"
    assert cli.expand_config_preset(["--config", PRESET, f"--config={PRESET}:1", "--workdir",
                                     "w"]) == ["--config", str(configs / f"{PRESET}.py"),
                                               f"--config={configs / f'{PRESET}.py'}:1",
                                               "--workdir", "w"]
    with pytest.raises(errors.ConfigError, match=r"did you mean 'nayer_cifar10_r34_r18'"):
        cli.resolve_config("nayer_cifar10_r34_r19")
    names = cli.presets()
    assert PRESET in names and "common" not in names and "luo_common" not in names
    assert len(names) == len(list(configs.glob("*.py"))) - 3  # __init__, common, luo_common
