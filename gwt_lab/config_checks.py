"""Up-front checks of a composed entrypoint config: known keys, value types and ranges, and the
comparison of a resumed run's config with the one its checkpoint was written under.

Every problem is a ``ConfigError`` whose message is one line naming the key, the bad value and
what is valid; the training loop turns it into ``error: ...`` on stderr and exit status 2
before anything is written.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming the key."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Int:
    """An integer ``>= low`` (``null`` too when ``null=True``)."""

    low: int = 1
    null: bool = False

    def ok(self, value) -> bool:
        return (value is None and self.null) or (_is_int(value) and value >= self.low)

    def describe(self) -> str:
        text = "a positive integer" if self.low == 1 else f"an integer >= {self.low}"
        return text + (" or null" if self.null else "")


@dataclass(frozen=True)
class Number:
    """A finite int or float in ``[low, high]`` (``low`` excluded when ``open_low``)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    null: bool = False

    def ok(self, value) -> bool:
        if value is None:
            return self.null
        return _is_number(value) and (value > self.low if self.open_low else value >= self.low) and value <= self.high

    def describe(self) -> str:
        if self.high < math.inf:
            text = f"a number in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        elif self.low > -math.inf:
            text = f"a number {'>' if self.open_low else '>='} {self.low:g}"
        else:
            text = "a finite number"
        return text + (" or null" if self.null else "")


@dataclass(frozen=True)
class OneOf:
    """One of ``choices``."""

    choices: tuple

    def ok(self, value) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return f"one of {list(self.choices)}"


@dataclass(frozen=True)
class Flag:
    def ok(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Text:
    """A string (``null`` too when ``null=True``)."""

    null: bool = False

    def ok(self, value) -> bool:
        return isinstance(value, str) or (value is None and self.null)

    def describe(self) -> str:
        return "a string" + (" or null" if self.null else "")


ANY = None  # a known key whose value is checked elsewhere

POSITIVE = Int()
POSITIVE_OR_NULL = Int(null=True)
FRACTION = Number(0.0, 1.0)


def resolve_all(cfg: DictConfig) -> dict:
    """The resolved config as plain containers; a missing value (``???``) or a broken interpolation
    becomes a ``ConfigError`` naming its key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(f"{key}: {getattr(err, 'msg', None) or err}".splitlines()[0]) from None


def check_value(key: str, value, kind) -> None:
    """``ConfigError`` unless ``kind.ok(value)`` (``kind=ANY`` accepts everything)."""
    if kind is None or kind.ok(value):
        return
    if isinstance(kind, OneOf):
        raise ConfigError(f"{key}={value!r} is unknown; choose one of {list(kind.choices)}")
    raise ConfigError(f"{key}={value!r} must be {kind.describe()}")


def check_known_keys(section: Mapping, prefix: str, valid: Iterable[str]) -> None:
    """``ConfigError`` for the first key of ``section`` not in ``valid``, naming the closest valid one."""
    valid = sorted(valid)
    for key in section:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean {prefix}.{close[0]}? " if close else ""
            raise ConfigError(f"{prefix}.{key} is not a config key; {hint}valid keys: {', '.join(valid)}")


def check_section(cfg: DictConfig, prefix: str, spec: Mapping[str, object]) -> None:
    """Known keys, then each value against ``spec`` (key -> kind); a missing key is not checked here."""
    section = cfg[prefix] if prefix else cfg
    check_known_keys(section, prefix, spec)
    for key, kind in spec.items():
        if key in section:
            check_value(f"{prefix}.{key}" if prefix else key, section[key], kind)


def check_top_level(cfg: DictConfig, spec: Mapping[str, object]) -> None:
    """Values of top-level keys (unknown top-level keys are left to Hydra's own struct check)."""
    for key, kind in spec.items():
        if key in cfg:
            check_value(key, cfg[key], kind)


# Optimizer options that are numbers in every registered optimizer that has them; the optimizer
# itself checks their ranges, this only makes a string such as optimizer.lr=abc one clear line.
OPTIMIZER_NUMBERS = {"lr": Number(0.0), "weight_decay": Number(0.0), "eps": Number(0.0),
                     "alpha": Number(), "scale": Number(), "rank": Number(0.0, open_low=True),
                     "decay_rate": Number(), "clip_threshold": Number(), "beta1": Number(null=True),
                     "level": Int(), "update_proj_gap": Int()}


def check_optimizer_values(optimizer: DictConfig) -> None:
    """Types of the numeric optimizer options present (names are checked by ``gwt.optim``'s registry)."""
    for key, kind in OPTIMIZER_NUMBERS.items():
        if key in optimizer:
            check_value(f"optimizer.{key}", optimizer[key], kind)


# ------------------------------------------------------------------------------------------------
# resume: the new config against the checkpoint's
# ------------------------------------------------------------------------------------------------
def flatten(tree, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for every leaf of a nested dict (lists are leaves)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _allowed(key: str, may_change: Iterable[str]) -> bool:
    return any(key == pattern or key.startswith(pattern + ".") for pattern in may_change)


def config_changes(old: Mapping, new: Mapping, may_change: Iterable[str]) -> list[str]:
    """``"key: old -> new"`` for every leaf that differs between two resolved configs, except the keys
    (or key prefixes) in ``may_change``; a key present on one side only counts as a difference."""
    old_flat, new_flat = flatten(old), flatten(new)
    missing = object()
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        a, b = old_flat.get(key, missing), new_flat.get(key, missing)
        if a != b and not _allowed(key, may_change):
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            changes.append(f"{key}: {show(a)} -> {show(b)}")
    return changes


def check_resume_config(saved: Mapping, cfg: DictConfig, may_change: Iterable[str], where: str) -> None:
    """``ConfigError`` listing every difference between ``saved`` (the checkpoint's resolved config) and
    ``cfg`` outside ``may_change``; such a change would make the resumed run a different computation."""
    changes = config_changes(saved, OmegaConf.to_container(cfg, resolve=True), may_change)
    if changes:
        raise ConfigError(f"resume=true with a config that differs from the one {where} was written with: "
                          f"{'; '.join(changes)}. These keys change the computation; resume with the saved "
                          f"values, or start a new run in another output_dir")
