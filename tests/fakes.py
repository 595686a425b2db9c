"""Fault injection and call counting around real (moto) clients, and a fast in-memory SQS for huge queues."""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from tests.jobfactory import job_message


class FaultyClient:
    """Wraps a boto3 client; chosen operations raise instead of reaching the service."""

    def __init__(self, client: Any, failing: dict[str, Callable[[], Exception]]) -> None:
        self._client = client
        self._failing = failing
        self.failures = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name in self._failing:
            def fail(*args: Any, **kwargs: Any) -> Any:
                self.failures[name] += 1
                raise self._failing[name]()
            return fail
        return attribute


def throttled(operation: str) -> Callable[[], Exception]:
    return lambda: ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, operation)


def count_calls(*clients: Any) -> Counter:
    """Count every API call the clients make, by operation name, through botocore's own event hooks."""
    calls: Counter = Counter()

    def on_call(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    for client in clients:
        client.meta.events.register("before-call", on_call)
    return calls


def capture_metrics(deps: Any) -> io.StringIO:
    stream = io.StringIO()
    deps.metrics.stream = stream
    return stream


def metric_total(stream: io.StringIO, name: str) -> float:
    total = 0.0
    for line in stream.getvalue().splitlines():
        document = json.loads(line)
        total += document.get(name, 0)
    return total


class FakeSqs:
    """Just enough of SQS for the rebalancer, with `depth` queued jobs per queue generated on demand."""

    def __init__(self, depths: dict[str, int], placement: str = "either", deadline_seconds: float = 60,
                 submitted_at: float = 0.0) -> None:
        self.depths = dict(depths)
        self.in_flight = Counter()
        self.sent: Counter = Counter()
        self.calls: Counter = Counter()
        self._ids = itertools.count()
        self._template = dict(placement=placement, deadline_seconds=deadline_seconds, submitted_at=submitted_at)

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        self.calls["GetQueueAttributes"] += 1
        return {"Attributes": {"ApproximateNumberOfMessages": str(self.depths[QueueUrl]),
                               "ApproximateNumberOfMessagesNotVisible": str(self.in_flight[QueueUrl])}}

    def receive_message(self, QueueUrl: str, MaxNumberOfMessages: int, **_: Any) -> dict[str, Any]:
        self.calls["ReceiveMessage"] += 1
        count = min(MaxNumberOfMessages, self.depths[QueueUrl])
        self.depths[QueueUrl] -= count
        self.in_flight[QueueUrl] += count
        messages = []
        for _ in range(count):
            n = next(self._ids)
            body = job_message(id=f"fake-{n}", **self._template)
            messages.append({"MessageId": f"m{n}", "ReceiptHandle": f"r{n}", "Body": json.dumps(body)})
        return {"Messages": messages}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls["SendMessageBatch"] += 1
        self.depths[QueueUrl] += len(Entries)
        self.sent[QueueUrl] += len(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def send_message(self, QueueUrl: str, **_: Any) -> dict[str, Any]:
        self.calls["SendMessage"] += 1
        return {"MessageId": "dlq"}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls["DeleteMessageBatch"] += 1
        self.in_flight[QueueUrl] -= len(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]],
                                        ) -> dict[str, Any]:
        self.calls["ChangeMessageVisibilityBatch"] += 1
        self.in_flight[QueueUrl] -= len(Entries)
        self.depths[QueueUrl] += len(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}
