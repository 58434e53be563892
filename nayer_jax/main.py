"""Entry point: python -m nayer_jax.main --config experiments/configs/X.py --workdir DIR

Any config field can be overridden: --config.epochs=5 --config.g_steps=10. A workdir
that holds an interrupted run resumes it. The last stdout line is machine-readable:
final_top1=<fraction> best_top1=<fraction> epochs=<n> seconds=<s>
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and images")
_STOP = flags.DEFINE_integer("stop_after_epoch", None,
                             "checkpoint and exit after this epoch (time-sliced jobs); "
                             "rerun with the same --workdir to resume")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, stop_after_epoch: int | None = None) -> dict:
    """Run the configured method; returns the summary dict (also printed)."""
    from nayer_jax import distill, synthesis

    summary = distill.train_and_evaluate(config, workdir, synthesis.get_builder(config.method),
                                         stop_after_epoch=stop_after_epoch)
    print(f"final_top1={summary['final_top1']:.4f} best_top1={summary['best_top1']:.4f} "
          f"epochs={summary['epochs']} seconds={summary['seconds']:.1f}")
    return summary


def _input_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input (files, fields): shown as one line, no traceback."""
    from nayer_jax.classifier import ClassifierFileError
    from nayer_jax.convert import ConversionError
    from nayer_jax.data import DatasetError
    from nayer_jax.distill import ConfigError
    from nayer_jax.lte import LTEError
    from nayer_jax.paths import SharedMissingError
    from nayer_jax.teacher_source import TeacherSpecError
    return (ClassifierFileError, ConversionError, DatasetError, ConfigError, LTEError,
            SharedMissingError, TeacherSpecError)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        run(_CONFIG.value, _WORKDIR.value, _STOP.value)
    except _input_errors() as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main)
