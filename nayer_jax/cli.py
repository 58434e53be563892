"""The `nayer-jax` command (also `python -m nayer_jax`): one entry point, one subcommand
per tool, each delegating to that module's own command line.

    nayer-jax run --config PRESET|FILE[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
    nayer-jax presets | convert | evaluate | train-teacher | lte | quickstart  [--help]

`python -m nayer_jax.<module>` keeps working; a subcommand's arguments are exactly the
module's. Bad input ends in one line `error: ...` and a non-zero exit code.
"""

from __future__ import annotations

import ast
import difflib
import sys
from pathlib import Path
from typing import Callable, Sequence

PROG = "nayer-jax"

# subcommand -> (module, one-line summary, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("nayer_jax.main", "data-free distillation run (NAYER, Luo et al.) from a config",
            "nayer-jax run --config nayer_cpu_cifar10_r32_r20 --workdir runs/nayer_cpu"),
    "presets": ("", "list the configs shipped in nayer_jax/configs (for run --config)",
                "nayer-jax presets"),
    "convert": ("nayer_jax.convert", "convert a PyTorch classifier checkpoint to a Flax "
                "classifier directory",
                "nayer-jax convert --arch resnet34 --src resnet34.pth --out runs/teacher_r34"),
    "evaluate": ("nayer_jax.evaluate", "top-1/top-5 accuracy of a classifier directory",
                 "nayer-jax evaluate --model runs/nayer_cpu/student "
                 "--data npz:test_lossless_846.npz"),
    "train-teacher": ("nayer_jax.train_teacher", "train a teacher classifier on real data",
                      "nayer-jax train-teacher --arch digits_cnn --data digits "
                      "--out runs/teacher_digits --epochs 10"),
    "lte": ("nayer_jax.lte", "compute a label-text-embedding table with a local model",
            "nayer-jax lte --model-dir MODEL_DIR --kind sentence --labels cat,dog "
            "--out runs/lte/pets.npy"),
    "quickstart": ("nayer_jax.quickstart", "the offline digits demo (teacher, NAYER, noise)",
                   "nayer-jax quickstart --workdir runs/quickstart"),
}
# No `bench`: the benchmarks are scripts in experiments/ (not part of the installed package).

_HELP = ("-h", "--help", "-help", "--helpshort")
_NOT_PRESETS = {"__init__", "common", "luo_common"}


# ----------------------------------------------------------------------------- presets

def configs_dir() -> Path:
    return Path(__file__).resolve().parent / "configs"


def presets() -> dict[str, str]:
    """Preset name -> first docstring line, for every config module with a get_config."""
    out = {}
    for path in sorted(configs_dir().glob("*.py")):
        if path.stem in _NOT_PRESETS or path.stem.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError):
            continue
        if any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body):
            doc = ast.get_docstring(tree) or ""
            out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def resolve_config(value: str) -> str:
    """`--config` value -> a config file path (with its ':ARG'): a file as given, or a
    preset name (module of nayer_jax/configs, '.py' optional) mapped to its file."""
    file, sep, arg = value.partition(":")
    if not file or Path(file).expanduser().exists():
        return value
    name = file[:-3] if file.endswith(".py") else file
    known = presets()
    if name in known:
        return str(configs_dir() / f"{name}.py") + sep + arg
    from nayer_jax.errors import ConfigError

    close = difflib.get_close_matches(Path(name).name, list(known), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"--config {file}: no such file and no preset of that name ({hint}"
                      f"`{PROG} presets` lists them)")


def expand_config_preset(argv: Sequence[str]) -> list[str]:
    """argv (without the program) with a `--config` preset name replaced by its path."""
    argv = list(argv)
    for i, a in enumerate(argv):
        for flag in ("--config", "-config"):
            if a.startswith(flag + "="):
                argv[i] = flag + "=" + resolve_config(a[len(flag) + 1:])
            elif a == flag and i + 1 < len(argv):
                argv[i + 1] = resolve_config(argv[i + 1])
    return argv


def format_presets() -> str:
    items = presets()
    width = max(map(len, items), default=0)
    return "\n".join(f"  {name:<{width}}  {doc}" for name, doc in items.items())


def run_help(prog: str = f"{PROG} run") -> str:
    return f"""usage: {prog} --config PRESET|FILE[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
              [--stop_after_epoch N]

Run (or resume) a data-free distillation. The last stdout line is
final_top1=<f> best_top1=<f> epochs=<n> seconds=<s>.

  --config PRESET|FILE[:ARG]  a preset name (below) or a config .py file; ':ARG' is passed
                              to its get_config (NAYER-100/200/300: ':100', ':200', ':300')
  --workdir DIR               checkpoints, metrics.jsonl, TensorBoard events, images,
                              student/; a workdir holding an interrupted run resumes it
  --config.FIELD=VALUE        override any config field (e.g. --config.epochs=5)
  --stop_after_epoch N        checkpoint and exit after epoch N (rerun to resume)
  --helpfull                  every absl flag

Exit codes: 0 done; 1 bad input (one line); 2 the run went non-finite; 75 SIGTERM.

examples:
  {PROG} run --config nayer_cpu_cifar10_r32_r20 --workdir runs/nayer_cpu
  {PROG} run --config nayer_cifar10_r34_r18:200 --config.teacher=runs/teacher_r34 \\
      --workdir runs/nayer_c10_r34_r18
  tensorboard --logdir runs/nayer_cpu

presets (nayer_jax/configs/):
{format_presets()}
"""


def prepare_run_argv(argv: Sequence[str]) -> list[str]:
    """For `nayer_jax.main.cli`: --help prints the run help (exit 0); a preset name after
    --config becomes its file path. `argv` includes the program name."""
    argv = list(argv)
    if any(a in _HELP for a in argv[1:]):
        prog = argv[0] if argv and not argv[0].endswith(".py") else "python -m nayer_jax.main"
        print(run_help(prog))
        raise SystemExit(0)
    from nayer_jax.errors import InputError

    try:
        return argv[:1] + expand_config_preset(argv[1:])
    except InputError as e:
        raise SystemExit(f"error: {e}") from None


# ----------------------------------------------------------------------------- dispatch

def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS]   ({PROG} COMMAND --help for its arguments)", "",
             "Data-free knowledge distillation in JAX (NAYER, Luo et al.).", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary, _) in COMMANDS.items()]
    lines += ["", "examples:"] + [f"  {ex}" for ex in (
        COMMANDS["quickstart"][2], COMMANDS["run"][2], COMMANDS["evaluate"][2])]
    return "\n".join(lines)


def _delegate(command: str, args: list[str]) -> int:
    """Run the module's own main(args); after its --help, add the example."""
    import importlib

    module, _, example = COMMANDS[command]
    module_main: Callable = importlib.import_module(module).main
    asked_help = any(a in ("-h", "--help") for a in args)
    argv0, sys.argv[0] = sys.argv[0], f"{PROG} {command}"  # argparse's default prog
    try:
        code = module_main(args)
    except SystemExit as e:
        if asked_help and e.code in (0, None):
            print(f"\nexample:\n  {example}")
        raise
    finally:
        sys.argv[0] = argv0
    return int(code or 0)


def _run(args: list[str]) -> int:
    from nayer_jax import main as main_module

    main_module.cli([f"{PROG} run", *args])  # absl exits with the run's code
    return 0


def _presets(args: list[str]) -> int:
    if any(a in _HELP for a in args):
        print(f"usage: {PROG} presets\n\nThe configs shipped in nayer_jax/configs; pass a name "
              f"to `{PROG} run --config`.\n\nexample:\n  {COMMANDS['presets'][2]}")
        return 0
    if args:
        raise SystemExit(f"error: {PROG} presets takes no arguments (got {args[0]!r})")
    print(format_presets())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(usage(), file=sys.stderr)
        print(f"error: no command given ({', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    if args[0] in _HELP:
        print(usage())
        return 0
    if args[0] == "--version":
        from nayer_jax import __version__

        print(f"{PROG} {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"error: unknown command {command!r}{hint} (commands: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    from nayer_jax.errors import InputError

    try:
        if command == "run":
            return _run(rest)
        if command == "presets":
            return _presets(rest)
        return _delegate(command, rest)
    except InputError as e:  # anything a module let through: still one line
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
