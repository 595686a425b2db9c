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


def read_jobs(text: str) -> list[Any]:
    """A JSON object, a JSON list of objects, or JSON Lines."""
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] == "[" or (stripped[0] == "{" and "\n" not in stripped):
        value = json.loads(stripped)
        return value if isinstance(value, list) else [value]
    try:
        return [json.loads(stripped)]
    except json.JSONDecodeError:
        return [json.loads(line) if line.strip() else None for line in text.splitlines() if line.strip()]


def complete(raw: Any, now: float) -> Any:
    """Fill what a person need not type: schema version, an id, the submission time."""
    if not isinstance(raw, dict):
        return raw
    return {"schema_version": SCHEMA_VERSION, "id": f"job-{uuid.uuid4().hex[:16]}", "submitted_at": now, **raw}


def submit(sqs: Any, queue_url: str, items: Iterable[Any], *, now: float | None = None) -> SubmitReport:
    report = SubmitReport()
    now = time.time() if now is None else now
    valid = []
    for index, raw in enumerate(items, start=1):
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

