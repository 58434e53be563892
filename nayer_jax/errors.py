"""The one base class of every error that describes bad input (a file, a field, a value).

Entry points (`nayer-jax ...`, `python -m nayer_jax.<cli>`) catch `InputError` and print
its message as one line with a non-zero exit; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the file or field and what was expected."""


class ConfigError(InputError):
    """A run config field has a value the run cannot use."""


class ConfigMismatchError(ConfigError):
    """A workdir holds a run started with a different configuration."""


class NonFiniteError(RuntimeError):
    """A run produced a NaN/inf loss or parameter; the message names epoch, phase and term."""
