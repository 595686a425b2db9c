"""In-memory SQS, DynamoDB, S3 and Auto Scaling for the chaos test: exactly the calls crossfleet's agent, router,
ledger and rebalancer adapters make, with the semantics they rely on, on a virtual clock.

Why not moto: its SQS scans every message on each receive (quadratic in queue depth), too slow for 10,000 jobs.
What is modelled (and what the code under test depends on):
- SQS: visibility timeouts, a new receipt handle per receive (a stale one cannot delete or extend the message),
  ApproximateReceiveCount, the redrive to the DLQ on the receive after `maxReceiveCount`, at-least-once
  delivery (a send may store two copies), batch calls that succeed per entry.
- DynamoDB: conditional writes evaluated on the item (the ledger's condition and update expressions:
  attribute_not_exists, =, <, IN, AND, OR, parentheses; SET, REMOVE, ADD), ALL_NEW, consistent reads, query
  by partition key and sort-key prefix.
Every call takes one lock: the agent's heartbeat and a nested worker may call from other threads.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def client_error(code: str, operation: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message or code}}, operation)


# -- SQS ------------------------------------------------------------------------------------------------------

@dataclass
class _Message:
    id: str
    body: str
    attributes: dict[str, Any]
    visible_at: float = 0.0
    receive_count: int = 0
    receipt: str | None = None
    version: int = 0


@dataclass
class _Queue:
    name: str
    max_receive: int | None = None
    dead_letter_url: str | None = None
    messages: dict[str, _Message] = field(default_factory=dict)
    heap: list[tuple[float, int, str, int]] = field(default_factory=list)  # (visible_at, tie, id, version)
    by_receipt: dict[str, str] = field(default_factory=dict)


class FakeSqs:
    def __init__(self, clock: Clock, lock: threading.RLock, duplicate: Callable[[], bool] = lambda: False,
                 tie: Callable[[], int] | None = None) -> None:
        # `tie` orders messages that become visible at the same moment (the test draws it from its seed).
        self.clock, self._lock, self._duplicate = clock, lock, duplicate
        self._tie = tie or itertools.count().__next__
        self.queues: dict[str, _Queue] = {}
        self._ids = itertools.count()
        self.redriven = 0  # messages SQS itself moved to a DLQ

    # set-up (not an SQS call the code makes)
    def create(self, name: str, *, dead_letter_url: str | None = None, max_receive: int | None = None) -> str:
        url = f"https://sqs.fake/{name}"
        self.queues[url] = _Queue(name, max_receive, dead_letter_url)
        return url

    def bodies(self, url: str) -> list[str]:
        return [m.body for m in self.queues[url].messages.values()]

    def _push(self, queue: _Queue, message: _Message) -> None:
        message.version += 1
        heapq.heappush(queue.heap, (message.visible_at, self._tie(), message.id, message.version))

    def _store(self, url: str, body: str, attributes: dict[str, Any] | None) -> str:
        queue = self.queues[url]
        message = _Message(f"m{next(self._ids)}", body, attributes or {}, visible_at=self.clock())
        queue.messages[message.id] = message
        self._push(queue, message)
        return message.id

    def _send(self, url: str, body: str, attributes: dict[str, Any] | None) -> str:
        message_id = self._store(url, body, attributes)
        if self._duplicate():  # SQS is at-least-once: a standard queue may deliver a second copy
            self._store(url, body, attributes)
        return message_id

    def get_queue_url(self, QueueName: str) -> dict[str, Any]:
        with self._lock:
            for url, queue in self.queues.items():
                if queue.name == QueueName:
                    return {"QueueUrl": url}
            raise client_error("AWS.SimpleQueueService.NonExistentQueue", "GetQueueUrl")

    def send_message(self, QueueUrl: str, MessageBody: str, MessageAttributes: dict[str, Any] | None = None,
                     **_: Any) -> dict[str, Any]:
        with self._lock:
            return {"MessageId": self._send(QueueUrl, MessageBody, MessageAttributes)}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            for entry in Entries:
                self._send(QueueUrl, entry["MessageBody"], entry.get("MessageAttributes"))
            return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def receive_message(self, QueueUrl: str, MaxNumberOfMessages: int = 1, VisibilityTimeout: int | None = None,
                        **_: Any) -> dict[str, Any]:
        with self._lock:
            queue, now = self.queues[QueueUrl], self.clock()
            hold = 30 if VisibilityTimeout is None else VisibilityTimeout
            out: list[dict[str, Any]] = []
            while queue.heap and queue.heap[0][0] <= now and len(out) < MaxNumberOfMessages:
                _, _, message_id, version = heapq.heappop(queue.heap)
                message = queue.messages.get(message_id)
                if message is None or message.version != version:
                    continue  # deleted, or its visibility changed since this entry was pushed
                if queue.max_receive is not None and message.receive_count >= queue.max_receive:
                    # SQS's redrive: the receive after maxReceiveCount moves the message to the DLQ instead.
                    del queue.messages[message_id]
                    assert queue.dead_letter_url is not None
                    self._store(queue.dead_letter_url, message.body, message.attributes)
                    self.redriven += 1
                    continue
                if message.receipt:
                    queue.by_receipt.pop(message.receipt, None)
                message.receive_count += 1
                message.receipt = f"{message_id}#{message.receive_count}"
                queue.by_receipt[message.receipt] = message_id
                message.visible_at = now + hold
                self._push(queue, message)
                out.append({"MessageId": message_id, "ReceiptHandle": message.receipt, "Body": message.body,
                            "Attributes": {"ApproximateReceiveCount": str(message.receive_count)},
                            "MessageAttributes": message.attributes})
            return {"Messages": out} if out else {}

    def _current(self, queue: _Queue, receipt: str) -> _Message | None:
        message_id = queue.by_receipt.get(receipt)
        return queue.messages.get(message_id) if message_id else None

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> dict[str, Any]:
        with self._lock:
            queue = self.queues[QueueUrl]
            message = self._current(queue, ReceiptHandle)
            if message is not None:  # a stale handle (the message was received again) deletes nothing
                del queue.messages[message.id]
                queue.by_receipt.pop(ReceiptHandle, None)
            return {}

    def change_message_visibility(self, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> dict[str, Any]:
        with self._lock:
            queue = self.queues[QueueUrl]
            message = self._current(queue, ReceiptHandle)
            if message is None:
                raise client_error("ReceiptHandleIsInvalid", "ChangeMessageVisibility")
            message.visible_at = self.clock() + VisibilityTimeout
            self._push(queue, message)
            return {}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        for entry in Entries:
            self.delete_message(QueueUrl, entry["ReceiptHandle"])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        ok, failed = [], []
        for entry in Entries:
            try:
                self.change_message_visibility(QueueUrl, entry["ReceiptHandle"], entry["VisibilityTimeout"])
                ok.append({"Id": entry["Id"]})
            except ClientError:
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True})
        return {"Successful": ok, "Failed": failed}


# -- DynamoDB: the ledger's expressions --------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(attribute_not_exists|begins_with|AND|OR|IN|\(|\)|,|=|<|[#:]?[A-Za-z_][A-Za-z0-9_]*)")


def _tokens(text: str) -> list[str]:
    out, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position:].strip():
                raise ValueError(f"unsupported expression at {text[position:]!r}")
            break
        out.append(match.group(1))
        position = match.end()
    return out


def _number_or_string(value: dict[str, Any]) -> Any:
    return float(value["N"]) if "N" in value else value.get("S")


class _Condition:
    """Recursive descent over the tokens of a condition expression, evaluated on one item."""

    def __init__(self, text: str, item: dict[str, Any], names: dict[str, str], values: dict[str, Any]) -> None:
        self.tokens, self.at = _tokens(text), 0
        self.item, self.names, self.values = item, names, values

    def evaluate(self) -> bool:
        result = self._or()
        assert self.at == len(self.tokens), self.tokens[self.at:]
        return result

    def _peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self.tokens[self.at]
        assert expected is None or token == expected, (token, expected)
        self.at += 1
        return token

    def _or(self) -> bool:
        result = self._and()
        while self._peek() == "OR":
            self._take()
            right = self._and()
            result = result or right
        return result

    def _and(self) -> bool:
        result = self._factor()
        while self._peek() == "AND":
            self._take()
            right = self._factor()
            result = result and right
        return result

    def _operand(self) -> Any:
        token = self._take()
        if token.startswith(":"):
            return _number_or_string(self.values[token])
        name = self.names.get(token, token)
        value = self.item.get(name)
        return None if value is None else _number_or_string(value)

    def _factor(self) -> bool:
        token = self._peek()
        if token == "(":
            self._take()
            result = self._or()
            self._take(")")
            return result
        if token == "attribute_not_exists":
            self._take()
            self._take("(")
            name = self._take()
            self._take(")")
            return self.names.get(name, name) not in self.item
        left = self._operand()
        operator = self._take()
        if operator == "IN":
            self._take("(")
            options = [self._operand()]
            while self._peek() == ",":
                self._take()
                options.append(self._operand())
            self._take(")")
            return left is not None and left in options
        right = self._operand()
        if left is None or right is None:
            return False
        return bool(left == right) if operator == "=" else bool(left < right)


def _apply_update(item: dict[str, Any], text: str, names: dict[str, str], values: dict[str, Any]) -> None:
    for clause, body in re.findall(r"(SET|REMOVE|ADD)\s+(.*?)(?=\s+(?:SET|REMOVE|ADD)\s|$)", text.strip()):
        for part in (p.strip() for p in body.split(",")):
            if clause == "SET":
                name, value = (s.strip() for s in part.split("="))
                item[names.get(name, name)] = values[value]
            elif clause == "REMOVE":
                item.pop(names.get(part, part), None)
            else:
                name, value = part.split()
                name = names.get(name, name)
                total = float(item.get(name, {"N": "0"})["N"]) + float(values[value]["N"])
                item[name] = {"N": str(int(total)) if total.is_integer() else repr(total)}


class FakeDynamoDb:
    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.by_partition: dict[str, list[str]] = {}

    @staticmethod
    def _key(key: dict[str, Any]) -> tuple[str, str]:
        return key["pk"]["S"], key["sk"]["S"]

    def _check(self, item: dict[str, Any], condition: str | None, names: dict[str, str] | None,
               values: dict[str, Any] | None, operation: str) -> None:
        if condition and not _Condition(condition, item, names or {}, values or {}).evaluate():
            raise client_error("ConditionalCheckFailedException", operation, "The conditional request failed")

    def _put(self, item: dict[str, Any]) -> None:
        key = self._key(item)
        if key not in self.items:
            self.by_partition.setdefault(key[0], []).append(key[1])
        self.items[key] = dict(item)

    def put_item(self, TableName: str, Item: dict[str, Any], ConditionExpression: str | None = None,
                 ExpressionAttributeNames: dict[str, str] | None = None,
                 ExpressionAttributeValues: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._lock:
            self._check(self.items.get(self._key(Item), {}), ConditionExpression, ExpressionAttributeNames,
                        ExpressionAttributeValues, "PutItem")
            self._put(Item)
            return {}

    def update_item(self, TableName: str, Key: dict[str, Any], UpdateExpression: str,
                    ConditionExpression: str | None = None, ExpressionAttributeNames: dict[str, str] | None = None,
                    ExpressionAttributeValues: dict[str, Any] | None = None, ReturnValues: str = "NONE",
                    ) -> dict[str, Any]:
        with self._lock:
            item = dict(self.items.get(self._key(Key), {}))
            self._check(item, ConditionExpression, ExpressionAttributeNames, ExpressionAttributeValues, "UpdateItem")
            item.update(Key)
            _apply_update(item, UpdateExpression, ExpressionAttributeNames or {}, ExpressionAttributeValues or {})
            self._put(item)
            return {"Attributes": dict(item)} if ReturnValues == "ALL_NEW" else {}

    def get_item(self, TableName: str, Key: dict[str, Any], **_: Any) -> dict[str, Any]:
        with self._lock:
            item = self.items.get(self._key(Key))
            return {"Item": dict(item)} if item else {}

    def query(self, TableName: str, KeyConditionExpression: str, ExpressionAttributeValues: dict[str, Any],
              **_: Any) -> dict[str, Any]:
        assert KeyConditionExpression == "pk = :pk AND begins_with(sk, :event)", KeyConditionExpression
        with self._lock:
            pk, prefix = ExpressionAttributeValues[":pk"]["S"], ExpressionAttributeValues[":event"]["S"]
            keys = sorted(sk for sk in self.by_partition.get(pk, []) if sk.startswith(prefix))
            return {"Items": [dict(self.items[(pk, sk)]) for sk in keys]}

    def batch_write_item(self, RequestItems: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        with self._lock:
            for requests in RequestItems.values():
                for request in requests:
                    self._put(request["PutRequest"]["Item"])
            return {"UnprocessedItems": {}}


class FakeS3:
    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        with self._lock:
            self.objects[(Bucket, Key)] = Body
            return {}


class FakeAutoScaling:
    """The lifecycle and protection calls: an instance has an active termination action until it is completed."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.active: set[str] = set()
        self.completed: list[str] = []
        self.protected: dict[str, bool] = {}

    def set_instance_protection(self, InstanceIds: list[str], ProtectedFromScaleIn: bool, **_: Any) -> dict[str, Any]:
        with self._lock:
            for instance in InstanceIds:
                self.protected[instance] = ProtectedFromScaleIn
            return {}

    def record_lifecycle_action_heartbeat(self, InstanceId: str, **_: Any) -> dict[str, Any]:
        with self._lock:
            if InstanceId not in self.active:
                raise client_error("ValidationError", "RecordLifecycleActionHeartbeat",
                                   f"No active Lifecycle Action found with instance ID {InstanceId}")
            return {}

    def complete_lifecycle_action(self, InstanceId: str, **_: Any) -> dict[str, Any]:
        with self._lock:
            if InstanceId not in self.active:
                raise client_error("ValidationError", "CompleteLifecycleAction",
                                   f"No active Lifecycle Action found with instance ID {InstanceId}")
            self.active.discard(InstanceId)
            self.completed.append(InstanceId)
            return {}


# -- faults ------------------------------------------------------------------------------------------------------

class Crash(BaseException):
    """The process died. A BaseException, so the agent's and router's `except Exception` cannot swallow it."""


WRITES = {"send_message", "send_message_batch", "delete_message", "delete_message_batch", "change_message_visibility",
          "change_message_visibility_batch", "put_item", "update_item", "batch_write_item", "put_object",
          "complete_lifecycle_action", "set_instance_protection", "record_lifecycle_action_heartbeat"}
READS = {"receive_message", "get_item", "query", "get_queue_url"}


@dataclass
class FaultPlan:
    """Per-call probabilities; `armed` is switched off for the quiet phase at the end."""

    roll: Callable[[], float]
    throttle: float = 0.02
    crash_before: float = 0.004
    crash_after: float = 0.004
    armed: bool = True
    seen: dict[str, int] = field(default_factory=dict)

    def note(self, what: str) -> None:
        self.seen[what] = self.seen.get(what, 0) + 1


class Faulty:
    """Wraps a fake client: a write may be throttled, or the process may die just before or just after it is
    durable; a read may be throttled."""

    def __init__(self, client: Any, plan: FaultPlan, crash_ok: Callable[[], bool] = lambda: True) -> None:
        self._client, self._plan, self._crash_ok = client, plan, crash_ok

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in WRITES and name not in READS:
            return attribute
        plan = self._plan

        def call(*args: Any, **kwargs: Any) -> Any:
            if not plan.armed:
                return attribute(*args, **kwargs)
            roll = plan.roll()
            if roll < plan.throttle:
                plan.note(f"throttled {name}")
                raise client_error("ThrottlingException", name, "Rate exceeded")
            crash_ok = name in WRITES and self._crash_ok()
            if crash_ok and roll < plan.throttle + plan.crash_before:
                plan.note(f"crash before {name}")
                raise Crash(f"before {name}")
            result = attribute(*args, **kwargs)
            if crash_ok and roll < plan.throttle + plan.crash_before + plan.crash_after:
                plan.note(f"crash after {name}")
                raise Crash(f"after {name}")
            return result

        return call


def job_of(body: str) -> dict[str, Any] | None:
    """The job a queue message carries (a DLQ envelope carries it in `body`)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("body"), str):
        return job_of(document["body"])
    return document if isinstance(document, dict) else None
