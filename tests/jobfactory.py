"""Valid job messages for tests, built through the real schema."""

from __future__ import annotations

import itertools
from typing import Any

from crossfleet_control.core.jobs import Job, parse_job

_ids = itertools.count()


def job_message(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema_version": 1, "id": f"job-{next(_ids):06d}", "class": "inference", "placement": "either",
        "preference": "gpu", "size": {"input_tokens": 1469, "output_tokens": 13}, "deadline_seconds": 120,
        "priority": 5, "submitted_at": 1_700_000_000.0, "payload": {"prompt": "def add(a, b):"},
    }
    body.update(overrides)
    return body


def make_job(**overrides: Any) -> Job:
    return parse_job(job_message(**overrides))
