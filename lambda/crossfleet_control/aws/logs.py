"""Structured logs: one JSON object per line on stdout, which CloudWatch Logs stores and Logs Insights parses
field by field (`fields request_id, job_id, message | filter level = "ERROR"`).

Each entry carries the invocation's fields (function, request id), bound once by the handler, plus its own (a
job id, a decision id, the operation that failed). No dependency: the format is the point, not a library.
"""

from __future__ import annotations

import json
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

_BOUND: ContextVar[dict[str, Any] | None] = ContextVar("crossfleet_log_fields", default=None)


def bind(**fields: Any) -> None:
    """The fields every entry of this invocation carries (the handler calls this first, each invocation)."""
    _BOUND.set({key: value for key, value in fields.items() if value is not None})


def entry(level: str, message: str, **fields: Any) -> dict[str, Any]:
    stamp = time.time()
    return {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z",
            "level": level, "message": message, **(_BOUND.get() or {}),
            **{key: value for key, value in fields.items() if value is not None}}


def _write(level: str, message: str, fields: dict[str, Any], stream: TextIO | None) -> None:
    line = json.dumps(entry(level, message, **fields), default=str, sort_keys=True)
    print(line, file=stream or sys.stdout, flush=True)


def info(message: str, *, stream: TextIO | None = None, **fields: Any) -> None:
    _write("INFO", message, fields, stream)


def warning(message: str, *, stream: TextIO | None = None, **fields: Any) -> None:
    _write("WARNING", message, fields, stream)


def error(message: str, *, stream: TextIO | None = None, **fields: Any) -> None:
    _write("ERROR", message, fields, stream)
