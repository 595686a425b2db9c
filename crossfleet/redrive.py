"""`crossfleet redrive POOL`: move a pool's dead-lettered jobs back to its queue so they run again.

Every entry goes back as a DLQ envelope (a raw body SQS dead-lettered by itself is wrapped first): a worker
that receives an envelope knows it is a redrive, reopens the job's ledger entry (dead_lettered -> queued, fresh
attempts) and claims it. A stale entry for a job that has since succeeded is settled as a duplicate and never
runs. Send first, delete after: a crash in between leaves a copy in both queues, and the claim runs it once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RedriveReport:
    moved: list[str] = field(default_factory=list)  # job ids (or message ids when the body has no id)
    failed: int = 0


def redrive(sqs: Any, dead_letter_url: str, queue_url: str, *, limit: int = 100) -> RedriveReport:
    report = RedriveReport()
    while len(report.moved) + report.failed < limit:
        wanted = min(10, limit - len(report.moved) - report.failed)
        messages = sqs.receive_message(QueueUrl=dead_letter_url, MaxNumberOfMessages=wanted, VisibilityTimeout=60,
                                       WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            break
        for message in messages:
            envelope, job_id = as_envelope(message.get("Body", ""))
            try:
                sqs.send_message(QueueUrl=queue_url, MessageBody=envelope)
            except Exception:
                report.failed += 1  # stays in the DLQ (visible again after its hold)
                continue
            sqs.delete_message(QueueUrl=dead_letter_url, ReceiptHandle=message["ReceiptHandle"])
            report.moved.append(job_id or str(message.get("MessageId")))
    return report


def as_envelope(body: str) -> tuple[str, str | None]:
    """The body as a DLQ envelope (unchanged if it already is one, else wrapped) and its job id if known."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and "rejected_by" in parsed and isinstance(parsed.get("body"), str):
        job_id = parsed.get("job_id")
        return body, job_id if isinstance(job_id, str) else None
    job_id = parsed.get("id") if isinstance(parsed, dict) and isinstance(parsed.get("id"), str) else None
    return json.dumps({"rejected_by": "sqs", "reason": "dead-lettered by SQS (redriven by crossfleet redrive)",
                       "job_id": job_id, "body": body}), job_id
