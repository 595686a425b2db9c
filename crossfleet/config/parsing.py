"""Strict readers for untyped JSON config sections.

Every reader takes the dotted key path so that a failure can name it. Unknown keys are an error with a
did-you-mean, because a misspelt key silently falling back to a default is how a fleet ends up the wrong size.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from crossfleet.config.errors import ConfigError


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def section(raw: Any, path: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    """Return `raw` as a mapping after rejecting any key not in `allowed`."""
    allowed = tuple(allowed)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "<root>", raw, "an object (JSON mapping)")
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(join(path, key), raw[key], f"unknown key; {hint}known keys: {', '.join(allowed)}")
    return raw


def integer(raw: Mapping[str, Any], path: str, key: str, default: int, *, minimum: int = 0,
            maximum: int | None = None) -> int:
    value = raw.get(key, default)
    where = join(path, key)
    # bool is an int subclass in Python; `true` as a size is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, value, "a whole number")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(where, value, f"a whole number at least {minimum}{upper}")
    return value


def boolean(raw: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(join(path, key), value, "true or false")
    return value


def choice(raw: Mapping[str, Any], path: str, key: str, default: str, options: Iterable[str]) -> str:
    options = tuple(options)
    value = raw.get(key, default)
    if value not in options:
        raise ConfigError(join(path, key), value, f"one of {', '.join(options)}")
    return value


def optional_string(raw: Mapping[str, Any], path: str, key: str, *, prefix: str = "",
                    what: str = "a string") -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(prefix) or len(value) <= len(prefix):
        raise ConfigError(join(path, key), value, what)
    return value


def string_list(raw: Mapping[str, Any], path: str, key: str, default: Iterable[str], *,
                allow_empty: bool = False) -> tuple[str, ...]:
    value = raw.get(key, list(default))
    where = join(path, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(where, value, "a list of strings")
    if not value and not allow_empty:
        raise ConfigError(where, value, "a non-empty list")
    seen: set[str] = set()
    for i, item in enumerate(value):
        if item in seen:
            raise ConfigError(join(where, i), item, "each entry once (it is listed twice)")
        seen.add(item)
    return tuple(value)
