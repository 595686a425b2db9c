"""Ledger reconciliation for messages SQS dead-letters on its own.

A pool queue's redrive policy moves a message to its DLQ after `maxReceiveCount` receives, without telling
anyone: a job whose worker kept dying (or whose copies kept meeting a live claim) would stay `running` or
`queued` in the ledger forever. Each rebalancer cycle reads a bounded number of DLQ messages; a raw job body
(the workers' and the rebalancer's own entries are envelopes) is settled: the ledger records
`dead_lettered` with the reason first, then an envelope replaces the raw body (send, then delete), so each is
reconciled once and `crossfleet redrive` sees one format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from crossfleet_control.aws.errors import AwsError
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.aws.queues import SqsQueues
from crossfleet_control.core.jobs import JobRejected, parse_job

# DLQ messages read per pool per rebalancer cycle (a long DLQ is worked through over several cycles).
DEAD_LETTERS_PER_CYCLE = 50
# Envelopes are held this long while a pass looks past them, then released.
_HOLD_SECONDS = 30


@dataclass(frozen=True)
class Reconciled:
    settled: int = 0  # raw bodies recorded dead_lettered and wrapped
    duplicates: int = 0  # raw copies of a job already settled elsewhere: deleted
    deferred: int = 0  # a copy of a job another worker is running right now: looked at again next cycle


def reconcile_dead_letters(queues: SqsQueues, ledger: Ledger, pool: str, *, limit: int,
                           time_left: Callable[[], float]) -> Reconciled:
    url = queues.dead_letter_urls[pool]
    settled = duplicates = deferred = seen = 0
    held: list[str] = []
    while seen < limit and time_left() > 0:
        try:
            messages = queues.client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=min(10, limit - seen), VisibilityTimeout=_HOLD_SECONDS,
                WaitTimeSeconds=0, MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
        except AwsError as error:
            queues.on_error(f"sqs.receive_message[{pool}-dlq]", error)
            break
        if not messages:
            break
        for message in messages:
            seen += 1
            body, handle = message.get("Body", ""), message["ReceiptHandle"]
            if '"rejected_by"' in body:
                held.append(handle)  # already an envelope with its reason
                continue
            try:
                job = parse_job(body)
            except JobRejected as rejected:
                # Not a job at all: wrap it with the reason, nothing for the ledger.
                if _wrap(queues, pool, url, handle, body, None, f"malformed: {rejected.reason}"):
                    settled += 1
                continue
            reason = f"SQS moved it to the DLQ after it was received {_receives(message)} times without an outcome"
            try:
                state = ledger.settle_dead_letter(job.id, reason=reason)
            except AwsError as error:
                queues.on_error("dynamodb.settle_dead_letter", error)
                held.append(handle)
                continue
            if state == "settled":
                if _wrap(queues, pool, url, handle, body, job.id, reason):
                    settled += 1
            elif state == "terminal":
                # The job has its outcome (this was a redundant copy): dropping the copy loses nothing.
                _delete(queues, pool, url, handle)
                duplicates += 1
            else:
                held.append(handle)
                deferred += 1
    for handle in held:
        try:
            queues.client.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
        except AwsError as error:
            queues.on_error(f"sqs.change_message_visibility[{pool}-dlq]", error)
    return Reconciled(settled, duplicates, deferred)


def _receives(message: dict[str, object]) -> str:
    attributes = message.get("Attributes")
    return str(attributes.get("ApproximateReceiveCount", "?")) if isinstance(attributes, dict) else "?"


def _wrap(queues: SqsQueues, pool: str, url: str, handle: str, body: str, job_id: str | None,
          reason: str) -> bool:
    envelope = {"rejected_by": "sqs", "pool": pool, "reason": reason, "job_id": job_id, "body": body}
    try:
        queues.client.send_message(QueueUrl=url, MessageBody=json.dumps(envelope), MessageAttributes={
            "reason": {"DataType": "String", "StringValue": reason[:256]}})
    except AwsError as error:
        queues.on_error(f"sqs.send_message[{pool}-dlq]", error)
        return False
    return _delete(queues, pool, url, handle)


def _delete(queues: SqsQueues, pool: str, url: str, handle: str) -> bool:
    try:
        queues.client.delete_message(QueueUrl=url, ReceiptHandle=handle)
    except AwsError as error:
        queues.on_error(f"sqs.delete_message[{pool}-dlq]", error)
        return False
    return True
