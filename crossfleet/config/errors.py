"""The one error type a bad configuration raises."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value that crossfleet will not synthesize.

    The message names the key path, the offending value and what is allowed, so that a person can fix the
    config without reading code. `app.py` prints it alone, with no stack trace.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"crossfleet config: {key} = {value!r} is not allowed: {allowed}")
