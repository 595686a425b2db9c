"""Where the configuration comes from: CDK context, or a whole file selected with `-c config=PATH`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossfleet.config.errors import ConfigError
from crossfleet.config.model import AppConfig, parse_config

CONTEXT_KEY = "crossfleet"
FILE_CONTEXT_KEY = "config"


def load_from_context(get_context: Any, base_dir: Path) -> AppConfig:
    """Read config from CDK context.

    `get_context` is `app.node.try_get_context`. `-c config=path.json` names a whole config file that replaces
    the `crossfleet` context block; otherwise the block from cdk.json is used (and defaults fill the rest).
    """
    file_name = get_context(FILE_CONTEXT_KEY)
    if file_name:
        path = Path(file_name)
        if not path.is_absolute():
            path = base_dir / path
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(FILE_CONTEXT_KEY, file_name, "a path to an existing JSON config file") from None
        except json.JSONDecodeError as error:
            raise ConfigError(FILE_CONTEXT_KEY, file_name, f"valid JSON ({error.msg} at line {error.lineno})") from None
        return parse_config(raw)
    raw = get_context(CONTEXT_KEY)
    if isinstance(raw, str):  # `-c crossfleet='{...}'` arrives as a string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ConfigError(CONTEXT_KEY, raw, f"a JSON object ({error.msg})") from None
    return parse_config(raw)
