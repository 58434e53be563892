"""Entry point: python -m nayer_jax.main --config PRESET|FILE.py[:ARG] --workdir DIR
(= `nayer-jax run`; PRESET: a module of nayer_jax/configs, e.g. nayer_cpu_cifar10_r32_r20)

Any config field can be overridden: --config.epochs=5 --config.g_steps=10. A workdir
that holds an interrupted run resumes it. The last stdout line is machine-readable:
final_top1=<fraction> best_top1=<fraction> epochs=<n> seconds=<s>

Exit codes: 0 done; 1 bad input (one line naming the file/field); 2 the run went
non-finite (last finite checkpoint kept); 75 stopped by SIGTERM after a checkpoint.
"""

from __future__ import annotations

import errno
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and images")
_STOP = flags.DEFINE_integer("stop_after_epoch", None,
                             "checkpoint and exit after this epoch (time-sliced jobs); "
                             "rerun with the same --workdir to resume")
flags.mark_flags_as_required(["config", "workdir"])

NON_FINITE_EXIT_CODE = 2


def run(config, workdir: str, stop_after_epoch: int | None = None) -> dict:
    """Run the configured method; returns the summary dict (also printed)."""
    from nayer_jax import loop

    summary, _ = loop.train_and_evaluate(config, workdir, stop_after_epoch=stop_after_epoch)
    print(f"final_top1={summary['final_top1']:.4f} best_top1={summary['best_top1']:.4f} "
          f"epochs={summary['epochs']} seconds={summary['seconds']:.1f}")
    return summary


def run_guarded(config, workdir: str, stop_after_epoch: int | None = None) -> dict:
    """`run`, with bad input, a non-finite run and preemption as one line + exit code."""
    from nayer_jax import loop
    from nayer_jax.errors import InputError, NonFiniteError

    try:
        return run(config, workdir, stop_after_epoch)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    except NonFiniteError as e:
        print(f"error: non-finite run: {e}", file=sys.stderr)
        raise SystemExit(NON_FINITE_EXIT_CODE) from None
    except loop.Preempted as e:
        print(f"preempted: SIGTERM at {e}; rerun the same command to resume",
              file=sys.stderr)
        raise SystemExit(loop.PREEMPTED_EXIT_CODE) from None
    except OSError as e:  # a full disk or a read-only mount outside the checkpoint writes
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise SystemExit(f"error: {e.filename or workdir}: {e.strerror}; the checkpoints "
                         "written so far are intact, rerun to resume") from None


def check_override_keys(argv: list[str]) -> None:
    """A mistyped `--config.<field>` becomes one line with a suggestion (before absl's
    multi-line traceback): the keys are checked against the loaded config file."""
    from nayer_jax import config_check
    from nayer_jax.errors import InputError

    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    keys = [m.group(1) for a in argv if (m := re.match(r"--config\.([\w.]+)(=|$)", a))]
    if not path or not keys:
        return
    try:
        base = _load_config_file(path)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    except Exception as e:  # noqa: BLE001 - absl reports file problems itself
        del e
        return
    known = base.keys()
    for key in keys:
        top = key.split(".")[0]
        if top not in known:
            raise SystemExit(f"error: {config_check.unknown_key_error(top, known)}")


def _load_config_file(path: str):
    import importlib.util

    from nayer_jax.errors import ConfigError

    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("nayer_config", file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--config {file}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"--config {file}: no such file") from None
    return module.get_config(arg) if arg else module.get_config()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    run_guarded(_CONFIG.value, _WORKDIR.value, _STOP.value)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with its errors (and stray arguments) as one line, exit 1."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        lines = str(e).strip().splitlines()  # a failing config file: head + traceback
        message = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        raise SystemExit(f"error: {' '.join(message.split())} (--help shows the flags)") from None
    if len(rest) > 1:
        raise SystemExit(f"error: unexpected argument {rest[1]!r} (--help shows the flags)")
    return rest


def cli(argv: list[str] | None = None) -> None:
    from nayer_jax.cli import prepare_run_argv  # --help; --config PRESET -> its file

    argv = prepare_run_argv(sys.argv if argv is None else argv)
    check_override_keys(argv[1:])
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
