"""Config validation before any work starts: known keys, value ranges, one line each.

`check_run_config` checks the loop's base fields; method Settings dataclasses declare
their own ranges in `POSITIVE` / `NON_NEGATIVE` class attributes, checked by
`distill.settings_from`. `suggest_key` gives the "did you mean" of a mistyped field.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Iterable

from nayer_jax.errors import ConfigError

# base fields: (name, minimum); ints must be >= minimum, floats > minimum when strict
_AT_LEAST_ONE = ("epochs", "kd_steps", "batch_size", "eval_batch_size", "checkpoint_every",
                 "keep_checkpoints")
_NON_NEGATIVE = ("warmup", "eval_limit", "num_devices", "aug_pad", "checkpoint_every_s",
                 "lr_min", "momentum", "weight_decay")
_STRICTLY_POSITIVE = ("temperature", "lr")
_CHOICES = {"compute_dtype": ("float32", "bfloat16"), "kd_loss": ("kl", "l1")}


def suggest_key(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known key, or ''."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(key: str, known: Iterable[str]) -> ConfigError:
    return ConfigError(f"config.{key}: no such field{suggest_key(key, known)}")


def check_ranges(values: dict, at_least_one: Iterable[str] = (),
                 non_negative: Iterable[str] = (), strictly_positive: Iterable[str] = (),
                 where: str = "config") -> None:
    """Raise one ConfigError naming the first field out of its range."""
    for name in at_least_one:
        if name in values and not values[name] >= 1:
            raise ConfigError(f"{where}.{name}={values[name]!r}: expected >= 1")
    for name in non_negative:
        if name in values and not values[name] >= 0:
            raise ConfigError(f"{where}.{name}={values[name]!r}: expected >= 0")
    for name in strictly_positive:
        if name in values and not values[name] > 0:
            raise ConfigError(f"{where}.{name}={values[name]!r}: expected > 0")


def check_settings(settings) -> None:
    """Ranges a Settings dataclass declares (POSITIVE: >= 1 / > 0, NON_NEGATIVE: >= 0)
    and its string fields' allowed values (CHOICES: {field: (value, ...)})."""
    values = dataclasses.asdict(settings)
    ints = [k for k in getattr(settings, "POSITIVE", ()) if isinstance(values[k], int)]
    floats = [k for k in getattr(settings, "POSITIVE", ()) if not isinstance(values[k], int)]
    check_ranges(values, at_least_one=ints, strictly_positive=floats,
                 non_negative=getattr(settings, "NON_NEGATIVE", ()))
    check_choices(values, getattr(settings, "CHOICES", {}))


def check_choices(values: dict, choices: dict[str, tuple]) -> None:
    """Each named field holds one of its allowed values, else a one-line ConfigError."""
    for name, allowed in choices.items():
        if values[name] not in allowed:
            raise ConfigError(f"config.{name}={values[name]!r}: expected one of {list(allowed)}")


def check_run_config(config) -> None:
    """The loop's fields: ranges, choices, a registered method and student (the teacher and
    eval_data specs are checked where they load, first thing in the run)."""
    from nayer_jax import synthesis
    from nayer_jax.models import registry

    values = config.to_dict()
    check_ranges(values, _AT_LEAST_ONE, _NON_NEGATIVE, _STRICTLY_POSITIVE)
    check_choices(values, _CHOICES)
    if values["warmup"] > values["epochs"]:
        raise ConfigError(f"config.warmup={values['warmup']}: expected <= config.epochs="
                          f"{values['epochs']} (no KD epoch would run)")
    if values["method"] not in synthesis.METHODS:
        raise ConfigError(f"config.method={values['method']!r}: expected one of "
                          f"{sorted(synthesis.METHODS)}")
    if values["student"] not in registry.list_models():
        raise ConfigError(f"config.student={values['student']!r}: not a registered "
                          f"architecture{suggest_key(values['student'], registry.list_models())}")
    check_method_settings(config, synthesis.get_method_module(values["method"]))


def check_method_settings(config, module) -> None:
    """The ranges of the method's Settings dataclasses (those of `module` that declare
    POSITIVE / NON_NEGATIVE and whose fields the config holds), checked here too so that
    e.g. g_steps=0 is refused before the teacher is converted, not after."""
    for cls in vars(module).values():
        if (isinstance(cls, type) and dataclasses.is_dataclass(cls)
                and cls.__module__ == module.__name__
                and (hasattr(cls, "POSITIVE") or hasattr(cls, "NON_NEGATIVE"))
                and all(f.name in config for f in dataclasses.fields(cls))):
            check_settings(cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)}))
