"""Where the configuration comes from: CDK context, or a whole file selected with `-c config=PATH`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crossfleet.config.errors import ConfigError
from crossfleet.config.model import AppConfig, parse_config

CONTEXT_KEY = "crossfleet"
FILE_CONTEXT_KEY = "config"


# The CLI reads the same config the synth read: `--config PATH`, else this variable, else the project's cdk.json.
CONFIG_ENVIRONMENT_VARIABLE = "CROSSFLEET_CONFIG"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def read_config_file(path: Path, *, key: str = FILE_CONTEXT_KEY, shown: str | None = None) -> AppConfig:
    """A whole config file (the `crossfleet` block's contents) as one validated model, or one ConfigError line
    naming the file as the user wrote it (`shown`)."""
    name = shown if shown is not None else str(path)
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(key, name, "a path to an existing JSON config file") from None
    except json.JSONDecodeError as error:
        raise ConfigError(key, name, f"valid JSON ({error.msg} at line {error.lineno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(key, name, f"a readable UTF-8 JSON file ({type(error).__name__})") from None
    except (ValueError, RecursionError) as error:
        # A 5,000-digit integer (int conversion limit) or nesting past the parser's depth: not a config.
        what = "nested too deeply" if isinstance(error, RecursionError) else str(error).split(":")[0]
        raise ConfigError(key, name, f"a JSON config file ({what})") from None
    if not isinstance(raw, dict):
        # [], null or false would otherwise give every default without a word.
        raise ConfigError(key, name, f"a JSON object with the crossfleet block's keys (the file holds "
                                     f"{json.dumps(raw)[:40]})")
    return parse_config(raw)


def load_for_cli(path: str | None, environment: Mapping[str, str]) -> AppConfig:
    """The config `crossfleet` commands use: the file given, else $CROSSFLEET_CONFIG, else cdk.json's block."""
    chosen = path or environment.get(CONFIG_ENVIRONMENT_VARIABLE)
    if chosen:
        return read_config_file(Path(chosen), key="--config" if path else CONFIG_ENVIRONMENT_VARIABLE)
    cdk_json = PROJECT_ROOT / "cdk.json"
    context = json.loads(cdk_json.read_text()).get("context", {}) if cdk_json.exists() else {}
    return parse_config(context.get(CONTEXT_KEY))


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
        return read_config_file(path, shown=str(file_name))
    raw = get_context(CONTEXT_KEY)
    if isinstance(raw, str):  # `-c crossfleet='{...}'` arrives as a string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ConfigError(CONTEXT_KEY, raw, f"a JSON object ({error.msg})") from None
    return parse_config(raw)
