"""The run loop under failure: a non-finite run, bad config fields, a rerun after a failed
start, damaged checkpoints, unwritable workdirs, a full disk, a kill after a time-based
mid-epoch checkpoint and SIGTERM. Each failure is one line and a non-zero exit, saved
files stay as they were, and a resumed run ends bitwise equal to a straight one.

Tiny sizes on the real shared resnet20 teacher (converted once per session) and real
CIFAR-10 test images; CLI cases run `python -m nayer_jax.main` in a subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from nayer_jax import loop, main
from nayer_jax.checkpoint import MANIFEST, RunCheckpointer, position
from nayer_jax.classifier import load_classifier
from nayer_jax.configs.common import nayer_cifar
from tests.conftest import require_shared

REPO = Path(__file__).resolve().parent.parent
KD_STEPS = 2
TIMING = ("synthesis_seconds", "kd_seconds", "eval_seconds", "seconds_total")


def tiny_fields(teacher_dir) -> dict:
    """The fields a tiny 3-epoch NAYER run overrides (epoch 0 is warmup: no KD)."""
    return {
        "teacher": str(teacher_dir), "student": "resnet20", "epochs": 3, "warmup": 1,
        "eval_data": f"npz:{require_shared('data/cifar10-jpeg/test_lossless_846.npz')}",
        "eval_limit": 40, "eval_batch_size": 40, "synthesis_batch_size": 20, "g_steps": 2,
        "gwp_loops": 1, "g_loops": 1, "g_life": 2, "ngf": 8, "le_emb_size": 16,
        "kd_steps": KD_STEPS, "batch_size": 16, "lr": 0.05, "tensorboard": False,
    }


def tiny_config(teacher_dir, **extra):
    c = nayer_cifar("cifar10", student="resnet20")
    for key, value in {**tiny_fields(teacher_dir), **extra}.items():
        c[key] = value
    return c


_CONFIG_FILE = '''"""A tiny NAYER run (tests/test_reliability_run.py)."""
import json
from nayer_jax.configs.common import nayer_cifar

FIELDS = json.loads({fields!r})


def get_config():
    c = nayer_cifar("cifar10", student="resnet20")
    for key, value in FIELDS.items():
        c[key] = value
    return c
'''


def config_file(directory: Path, teacher_dir, **extra) -> Path:
    """A config file for the CLI that builds exactly `tiny_config(teacher_dir, **extra)`."""
    path = directory / "tiny_config.py"
    path.write_text(_CONFIG_FILE.format(fields=json.dumps({**tiny_fields(teacher_dir), **extra})))
    return path


def cli_args(config: Path, workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "nayer_jax.main", "--config", str(config),
            "--workdir", str(workdir), *overrides]


def run_cli(config: Path, workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(config, workdir, *overrides), cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def message_lines(stderr: str) -> list[str]:
    """stderr without the progress bar: what a person reads."""
    lines = (ln.strip() for ln in re.split(r"[\r\n]", stderr))
    return [ln for ln in lines if ln and not ln.startswith("epochs:")]


def one_line_failure(proc: subprocess.CompletedProcess, code: int | None = None) -> str:
    """Assert a non-zero exit (`code` if given) with exactly one message line; return it."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def digest(directory: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `directory`."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def params(workdir: Path) -> dict:
    return traverse_util.flatten_dict(load_classifier(workdir / "student").variables)


def history(workdir: Path) -> list[dict]:
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_run(expected: Path, actual: Path) -> None:
    """Final student bitwise equal, metrics equal but for the timing fields."""
    a, b = params(expected), params(actual)
    assert a.keys() == b.keys()
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), key
    assert history(expected) == history(actual)


def steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


@pytest.fixture(scope="module")
def teacher(converted_teacher):
    return converted_teacher("resnet20")


@pytest.fixture(scope="module")
def straight(teacher, tmp_path_factory) -> Path:
    """The uninterrupted 3-epoch run every resumed run is compared with."""
    workdir = tmp_path_factory.mktemp("straight")
    main.run(tiny_config(teacher), str(workdir))
    assert steps(workdir) == [position(1, None, KD_STEPS), position(2, None, KD_STEPS)]
    return workdir


# ----------------------------------------------------------------------- non-finite run

def test_huge_lr_exits_2_naming_epoch_phase_and_term(teacher, tmp_path):
    """Epoch 0 (warmup, no KD) is finite and checkpointed; epoch 1's KD goes NaN at lr=1e9:
    exit 2, one line naming epoch 1, the KD phase and the loss term, no checkpoint for the
    NaN epoch, and the finite one untouched."""
    workdir = tmp_path / "w"
    main.run(tiny_config(teacher, lr=1e9), str(workdir), stop_after_epoch=0)
    first = position(0, None, KD_STEPS)
    assert steps(workdir) == [first]
    before = digest(workdir / "checkpoints")
    proc = run_cli(config_file(tmp_path, teacher), workdir, "--config.lr=1e9")
    line = one_line_failure(proc, code=main.NON_FINITE_EXIT_CODE)
    assert line.startswith("error: non-finite run: epoch 1: KD loss term 'kd_loss' is nan"), line
    assert digest(workdir / "checkpoints") == before  # no NaN checkpoint, the finite one intact
    assert RunCheckpointer(workdir / "checkpoints")._damage(first) is None


# ----------------------------------------------------------------------- config fields

@pytest.mark.parametrize("override, expected", [
    ("batch_size=0", "config.batch_size=0: expected >= 1"),
    ("g_steps=0", "config.g_steps=0: expected >= 1"),
    ("kd_steps=0", "config.kd_steps=0: expected >= 1"),
    ("keep_checkpoints=0", "config.keep_checkpoints=0: expected >= 1"),
    ("student=resnet21", "config.student='resnet21': not a registered architecture"),
    ("method=nope", "config.method='nope': expected one of"),
    ("g_step=5", "config.g_step: no such field (did you mean 'g_steps'?)"),
])
def test_bad_field_is_one_line_before_any_work(override, expected, tmp_path):
    """Checked before the workdir is created: no teacher conversion, no config.json."""
    teacher = f"torch:resnet20:{require_shared('teachers/cifar10_resnet20.th')}"
    workdir = tmp_path / "w"
    proc = run_cli(config_file(tmp_path, teacher), workdir, f"--config.{override}")
    line = one_line_failure(proc, code=1)
    assert line.startswith("error: ") and expected in line, line
    assert not workdir.exists()


def _readme_fields() -> dict[str, str]:
    """`--config.<field>` named in the README -> the '## ' section naming it (but for the
    example of a typo: "a mistyped `--config.g_step=5`")."""
    fields, section = {}, ""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:]
        for m in re.finditer(r"--config\.(\w+)", line):
            if not re.search(r"(mistyped|typo)\W*$", line[max(0, m.start() - 20):m.start()]):
                fields.setdefault(m.group(1), section)
    return fields


def _shipped_configs() -> dict:
    out = {}
    for path in sorted((REPO / "nayer_jax/configs").glob("*.py")):
        if path.stem in ("__init__", "common", "luo_common"):
            continue
        module = importlib.import_module(f"nayer_jax.configs.{path.stem}")
        if hasattr(module, "get_config"):
            out[path.stem] = module.get_config()
    return out


def test_readme_config_fields_exist_in_the_shipped_configs():
    """A field the README names is in every shipped config; a method's own field that a
    method's section names (Luo's stage1_dir under '## Luo et al.', NAYER's g_steps under
    '## Run NAYER') is in every config of that method."""
    from nayer_jax import distill

    fields, configs = _readme_fields(), _shipped_configs()
    assert {"teacher", "g_steps", "num_devices", "compute_dtype"} <= fields.keys()
    assert configs
    methods, base = {c.method for c in configs.values()}, distill.default_config()
    for field, section in fields.items():
        named = [] if field in base else [m for m in methods if m.lower() in section.lower()]
        for name, config in configs.items():
            if named and config.method not in named:
                continue
            assert field in config, (f"README section {section!r} names --config.{field}, "
                                     f"missing in nayer_jax/configs/{name}.py")


# ----------------------------------------------------------------------- failed start

def test_rerun_after_bad_lte_in_same_workdir(teacher, tmp_path):
    """A run that failed on a bad LTE wrote no config.json, so the fixed rerun in the same
    workdir is not refused; an empty config.json (an interrupted write) is a warning."""
    workdir, config = tmp_path / "w", config_file(tmp_path, teacher, epochs=1)
    proc = run_cli(config, workdir, "--config.lte=/nonexistent.npy")
    line = one_line_failure(proc, code=1)
    assert "/nonexistent.npy" in line, line
    assert not (workdir / "config.json").exists()
    (workdir / "config.json").write_text("")
    proc = run_cli(config, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "new --workdir" not in proc.stderr
    assert message_lines(proc.stderr) == [
        f"warning: {workdir.resolve() / 'config.json'} is empty or not JSON (a write was "
        "interrupted); rewriting it"], proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("final_top1=")
    assert json.loads((workdir / "config.json").read_text())["epochs"] == 1


# ----------------------------------------------------------------------- damaged checkpoints

def _garble_meta(step_dir: Path) -> Path:
    path = step_dir / "meta" / "metadata"
    path.write_text('{"epoch": 2, "hist')
    return path


def _truncate_state_file(step_dir: Path) -> Path:
    path = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _empty_step_dir(step_dir: Path) -> Path:
    shutil.rmtree(step_dir)
    step_dir.mkdir()
    return step_dir / "meta" / "metadata"


@pytest.mark.parametrize("damage", [_garble_meta, _truncate_state_file, _empty_step_dir],
                         ids=["garbled_meta", "truncated_state_file", "empty_step_dir"])
def test_damaged_latest_checkpoint_falls_back(damage, straight, teacher, tmp_path, capfd):
    """The newest checkpoint (end of epoch 2) damaged: one warning naming it and the file,
    it is moved aside, the run resumes from epoch 1's and ends equal to the straight run."""
    workdir = tmp_path / "w"
    shutil.copytree(straight, workdir)
    shutil.rmtree(workdir / "student")
    latest, older = steps(workdir)[-1], steps(workdir)[-2]
    before = digest(workdir / "checkpoints" / str(older))
    bad_file = damage(workdir / "checkpoints" / str(latest))
    capfd.readouterr()
    main.run(tiny_config(teacher), str(workdir))
    err = capfd.readouterr().err
    warnings = [ln for ln in message_lines(err) if ln.startswith("warning")]
    assert len(warnings) == 1 and "Traceback" not in err, err[-3000:]
    assert warnings[0].startswith(f"warning: checkpoint {latest} damaged ({bad_file.resolve()}")
    assert (workdir / "checkpoints_damaged" / str(latest)).is_dir()
    assert digest(workdir / "checkpoints" / str(older)) == before  # the older one as it was
    assert_same_run(straight, workdir)


# ----------------------------------------------------------------------- unwritable workdirs

def _read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    # root ignores permission bits; sysfs refuses even root a new file
    d = Path("/sys/kernel")
    try:
        (d / ".write_probe").write_text("")
    except OSError:
        return d
    pytest.skip("running as root without a read-only directory to try (chmod does not "
                "stop root); the path-under-a-file case covers an unusable workdir")


def test_workdir_check_is_safe_when_processes_share_the_workdir(tmp_path):
    """The processes of a multi-host run check one workdir at once. A fixed probe name let
    one delete the other's probe: 'not writable (No such file or directory)' failed CI's
    2-process run. Threads race the same way (measured: 311 of 1200 checks failed)."""
    errors = []

    def check_many():
        for _ in range(300):
            try:
                loop._check_workdir(tmp_path / "w")
            except Exception as e:  # noqa: BLE001 - any failure is the bug
                errors.append(e)

    threads = [threading.Thread(target=check_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert list((tmp_path / "w").iterdir()) == []  # no probe left behind


@pytest.mark.parametrize("kind", ["file", "under_file", "read_only"])
def test_unusable_workdir_is_one_line(kind, teacher, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    workdir = {"file": lambda: a_file, "under_file": lambda: a_file / "w",
               "read_only": lambda: _read_only_dir(tmp_path)}[kind]()
    proc = run_cli(config_file(tmp_path, teacher), workdir)
    line = one_line_failure(proc, code=1)
    assert line.startswith(f"error: --workdir {workdir}: "), line
    assert ("is a file" if kind == "file" else "not writable") in line, line
    assert a_file.read_text() == "not a directory"


def test_full_disk_while_checkpointing(straight, teacher, tmp_path, capfd, monkeypatch):
    """ENOSPC inside orbax's write of epoch 1's checkpoint: one line, exit 1, epoch 0's
    checkpoint untouched; the rerun (disk freed) resumes from it, equal to a straight run."""
    from etils import epath

    workdir = tmp_path / "w"
    failing = str(position(1, None, KD_STEPS))
    seen = {}
    write_text = epath.Path.write_text

    def earlier_checkpoints() -> dict:
        """Digests of all but the failing checkpoint (orbax's temporary directory for it,
        `<step>.orbax-checkpoint-tmp`, is being written by TensorStore at the same time)."""
        return {k: v for k, v in digest(workdir / "checkpoints").items()
                if not k.startswith(f"{failing}.")}

    def full_disk(self, *args, **kwargs):
        parts = Path(str(self)).parts[len((workdir / "checkpoints").resolve().parts):]
        if (Path(str(self)).is_relative_to((workdir / "checkpoints").resolve())
                and parts and parts[0].split(".")[0] == failing):
            seen.setdefault("before", earlier_checkpoints())
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(epath.Path, "write_text", full_disk)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main.run_guarded(tiny_config(teacher), str(workdir.resolve()))
    message = str(exc.value.code)
    assert message.startswith(f"error: checkpoint {workdir.resolve()}/checkpoints/{failing}: "
                              "write failed (No space left on device); earlier checkpoints "
                              "are intact"), message
    assert "\n" not in message
    err = capfd.readouterr().err
    assert "Traceback" not in err and not [ln for ln in message_lines(err)], err[-3000:]
    monkeypatch.undo()
    assert steps(workdir) == [position(0, None, KD_STEPS)]
    assert earlier_checkpoints() == seen["before"]
    main.run(tiny_config(teacher), str(workdir))
    assert_same_run(straight, workdir)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mount point (root only; skipped where mounting is not permitted), and a
    function setting its size in bytes (a remount keeps the files)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def size(nbytes: int, remount: bool = False) -> None:
        opts = f"{'remount,' if remount else ''}size={nbytes}"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:100]}); the "
                        "monkeypatched ENOSPC test covers the write path")

    yield mount, size
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_real_full_disk_cli(straight, teacher, tmp_path, small_disk):
    """The workdir on a tmpfs with room for one and a half checkpoints: TensorStore's own
    ENOSPC (a ValueError, not an OSError) is one line too; after the disk grows, the rerun
    resumes from the intact epoch-0 checkpoint and ends equal to the straight run."""
    mount, size = small_disk
    one = sum(p.stat().st_size for p in (straight / "checkpoints" / "11").rglob("*")
              if p.is_file())
    size(int(one * 1.5) + 1024 * 1024)
    workdir, config = mount / "w", config_file(tmp_path, teacher)
    proc = run_cli(config, workdir)
    line = one_line_failure(proc, code=1)
    failed = re.fullmatch(rf"error: checkpoint {re.escape(str(workdir))}/checkpoints/(\d+): "
                          r"write failed \(No space left on device\); earlier checkpoints "
                          r"are intact", line)
    assert failed, line
    kept = steps(workdir)  # which save fills the disk depends on the pool's growth
    assert kept and max(kept) < int(failed.group(1)), (kept, line)
    for step in kept:
        assert RunCheckpointer(workdir / "checkpoints")._damage(step) is None
    size(int(one * 10), remount=True)
    proc = run_cli(config, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {workdir} at epoch " in proc.stdout
    assert_same_run(straight, workdir)


# ----------------------------------------------------------------------- interruptions

def _wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 300):
    """Block until checkpoint `step` is finished (its manifest is the last file written)."""
    deadline = time.time() + timeout
    path = workdir / "checkpoints" / str(step) / MANIFEST
    while not path.exists():
        assert proc.poll() is None, f"run ended (rc={proc.returncode}) before step {step}"
        assert time.time() < deadline, f"no checkpoint {step} after {timeout} s"
        time.sleep(0.005)


def test_checkpoint_every_s_kill_mid_epoch_then_resume(straight, teacher, tmp_path):
    """checkpoint_every_s=1e-9: checkpoints after synthesis and at every KD step boundary.
    SIGKILL right after epoch 1's KD-step-1 checkpoint; the rerun resumes at that step and
    ends bitwise equal to the straight run (which never checkpointed inside an epoch)."""
    workdir = tmp_path / "w"
    config = config_file(tmp_path, teacher, checkpoint_every_s=1e-9)
    proc = subprocess.Popen(cli_args(config, workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    mid = position(1, 1, KD_STEPS)
    try:
        _wait_for_step(proc, workdir, mid)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    assert position(1, 0, KD_STEPS) in steps(workdir) and steps(workdir)[-1] == mid
    meta = json.loads((workdir / "checkpoints" / str(mid) / "meta" / "metadata").read_text())
    assert meta["partial"]["epoch"] == 1 and meta["partial"]["kd_done"] == 1
    resumed = run_cli(config, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {workdir.resolve()} at epoch 1, KD step 1" in resumed.stdout
    assert_same_run(straight, workdir)


def test_sigterm_during_kd_checkpoints_and_exits_75(straight, teacher, tmp_path):
    """SIGTERM while epoch 1's KD runs (its after-synthesis checkpoint just finished): the
    run checkpoints at the next KD step boundary, exits 75 with one line; the rerun
    resumes there and ends bitwise equal to the straight run."""
    workdir = tmp_path / "w"
    config = config_file(tmp_path, teacher, checkpoint_every_s=1e-9)
    proc = subprocess.Popen(cli_args(config, workdir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(proc, workdir, position(1, 0, KD_STEPS))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = one_line_failure(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                            code=75)
    assert line == ("preempted: SIGTERM at epoch 1, KD step 1; checkpoint written; rerun the "
                    "same command to resume"), line
    assert steps(workdir)[-1] == position(1, 1, KD_STEPS)
    resumed = run_cli(config, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {workdir.resolve()} at epoch 1, KD step 1" in resumed.stdout
    assert_same_run(straight, workdir)
