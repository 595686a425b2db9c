"""`crossfleet submit`: validate jobs locally, send them in batches to a region's intake queue."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from crossfleet_control.core.jobs import SCHEMA_VERSION, JobRejected, parse_job


@dataclass
class SubmitReport:
    accepted: list[str] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line or index, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, SQS error)


class JobsFileError(ValueError):
    """A jobs file that is not JSON, a JSON list or JSON Lines; the message names the line."""


def read_jobs(text: str) -> list[tuple[int, Any]]:
    """A JSON object, a JSON list of objects, or JSON Lines, as (position, item) pairs: the line number for JSON
    Lines (blank lines skipped, but counted), the 1-based index for a list or a single object."""
    stripped = text.strip()
    if not stripped:
        return []
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as whole:
        if stripped[0] == "[":
            raise JobsFileError(f"line {whole.lineno}: {whole.msg}") from None
    except RecursionError:
        raise JobsFileError("nested too deeply to be a job") from None
    else:
        return list(enumerate(value, start=1)) if isinstance(value, list) else [(1, value)]
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise JobsFileError(f"line {number}: {error.msg} (column {error.colno})") from None
        except RecursionError:
            raise JobsFileError(f"line {number}: nested too deeply to be a job") from None
    return items


def complete(raw: Any, now: float) -> Any:
    """Fill what a person need not type: schema version, an id, the submission time."""
    if not isinstance(raw, dict):
        return raw
    return {"schema_version": SCHEMA_VERSION, "id": f"job-{uuid.uuid4().hex[:16]}", "submitted_at": now, **raw}


def submit(sqs: Any, queue_url: str, items: Iterable[tuple[int, Any]], *, now: float | None = None) -> SubmitReport:
    """Send the valid items in batches of ten; invalid ones are reported by their position and never sent."""
    report = SubmitReport()
    now = time.time() if now is None else now
    valid = []
    for index, raw in items:
        try:
            valid.append(parse_job(complete(raw, now)))
        except JobRejected as rejected:
            report.invalid.append((index, rejected.reason))
    for start in range(0, len(valid), 10):
        batch = valid[start:start + 10]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(i), "MessageBody": job.to_json()} for i, job in enumerate(batch)])
        for ok in response.get("Successful", []):
            report.accepted.append(batch[int(ok["Id"])].id)
        for failed in response.get("Failed", []):
            report.failed.append((batch[int(failed["Id"])].id, f"{failed.get('Code')}: {failed.get('Message')}"))
    return report

