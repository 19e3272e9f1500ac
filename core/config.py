"""Typed configs, one way for every package: frozen dataclasses whose fields declare their range or choices,
built from plain data, checked, and refused with one :class:`ConfigError` that names the key.

A config is a frozen dataclass (sections are dataclass fields); a number declares the values it may take
with :func:`ranged` (or :func:`at_least`, :func:`fraction`), a word its choices with :func:`one_of`::

    @dataclass(frozen=True)
    class Dedup:
        k: int = at_least(64, 1)
        threshold: float = fraction(0.6, open_low=True)
        index: str = one_of("auto", "flat", "ivf")

    build(Dedup, {"threshold": 1.5})   # ConfigError: threshold=1.5: must be in (0, 1]

:func:`build` types plain data (a YAML mapping) against the dataclass and then :func:`check` s it; a config
assembled another way (pretraining merges presets and dotted overrides with OmegaConf, which types them
against the same dataclasses) is checked with :func:`check` alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config file, preset or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Range:
    """The values a number (or each number of a tuple) of a config may take: ``low``/``high`` inclusive,
    unless ``open_low`` (then ``low`` itself is excluded); NaN is never in range."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def holds(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.low is None:
            return f"<= {self.high:g}"
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


def ranged(default: Any, low: float | None = None, high: float | None = None, open_low: bool = False) -> Any:
    """A field whose value (each item of a tuple; ``None`` passes) must lie in :class:`Range` ``(low, high)``."""
    return field(default=default, metadata={"range": Range(low, high, open_low)})


def at_least(default: Any, low: float) -> Any:
    return ranged(default, low)


def positive(default: Any) -> Any:
    """A field that must be above 0."""
    return ranged(default, 0.0, open_low=True)


def fraction(default: Any, open_low: bool = False) -> Any:
    """A field in ``[0, 1]`` (``(0, 1]`` with ``open_low``)."""
    return ranged(default, 0.0, 1.0, open_low)


def ranged_tuple(low: float) -> Any:
    """A tuple field (default empty) each of whose items must be at least ``low``."""
    return field(default=(), metadata={"range": Range(low)})


def one_of(default: str, *others: str) -> Any:
    """A field whose value must be ``default`` or one of ``others``."""
    return field(default=default, metadata={"choices": (default, *others)})


def check(config: Any, prefix: str = "") -> None:
    """:class:`ConfigError` naming the first key of ``config`` (a dataclass, sections walked too) whose value
    lies outside its declared range or choices."""
    for item in dataclasses.fields(config):
        key, value = f"{prefix}{item.name}", getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{key}.")
            continue
        choices = item.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(choices)}")
        allowed = item.metadata.get("range")
        if allowed is None or value is None:
            continue
        several = isinstance(value, (tuple, list))
        if not all(allowed.holds(number) for number in (value if several else (value,))):
            shown = list(value) if several else value
            raise ConfigError(f"{key}={shown!r}: must be {allowed}{' (each item)' if several else ''}")


def build(kind: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """A ``kind`` config (a dataclass; fields not in ``data`` keep their defaults) from plain data, each value
    typed against its field and the whole :func:`check` ed; :class:`ConfigError` naming the key otherwise."""
    config = _typed(kind, data, prefix)
    if not prefix:
        check(config)
    return config


def _typed(kind: type, data: Mapping[str, Any], prefix: str) -> Any:
    fields = {item.name: item for item in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    sections = all(dataclasses.is_dataclass(hints[name]) for name in fields)
    values = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            what = f"section {name!r}" if sections else f"key {name}"
            raise ConfigError(f"unknown config {what} (known: {', '.join(fields)})")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, Mapping):
                raise ConfigError(f"section {name!r} must be a mapping")
            values[key] = _typed(hints[key], value, f"{name}.")
        else:
            values[key] = coerce(name, value, hints[key])
    return kind(**values)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (an int is a float too; a number is a string too); :class:`ConfigError` otherwise."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(coerce(key, item, typing.get_args(hint)[0]) for item in items)
    if origin in (typing.Union, types.UnionType):
        return value
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping")  # the value is not echoed: it may hold credentials
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}={value!r}: expected a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r}: expected a string")
    return value
