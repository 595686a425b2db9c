"""Thin boto3 adapters behind small ports. Clients are injected; none is created at import time.

Each read returns None for what it could not read (the policy treats None as unknown, never zero) and records
the error; each write raises, and the handler decides what a failure means.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from crossfleet_control.jobs import Job, JobRejected, parse_job
from crossfleet_control.policy_types import ControllerMemory, Override, PoolMemory, ServingMemory
from crossfleet_control.table_schema import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE

AwsError = (BotoCoreError, ClientError)
DEPLOYMENT_TAG = "crossfleet:deployment"


class ErrorSink(Protocol):
    def __call__(self, where: str, error: Exception) -> None: ...


@dataclass(frozen=True)
class QueueTelemetry:
    visible: int | None
    in_flight: int | None


@dataclass(frozen=True)
class ReceivedJob:
    pool: str
    job: Job
    receipt_handle: str
    message_id: str
    body: str
    receive_count: int = 1  # SQS's ApproximateReceiveCount: the queue's redrive moves it to the DLQ past the max


@dataclass(frozen=True)
class MalformedMessage:
    pool: str
    receipt_handle: str
    message_id: str
    body: str
    reason: str


@dataclass
class SqsQueues:
    """The work queues of one region, by pool, and their dead-letter queues."""

    client: Any
    queue_urls: Mapping[str, str]
    dead_letter_urls: Mapping[str, str]
    on_error: ErrorSink

    def telemetry(self, pool: str) -> QueueTelemetry:
        try:
            attributes = self.client.get_queue_attributes(
                QueueUrl=self.queue_urls[pool],
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            return QueueTelemetry(visible=int(attributes["ApproximateNumberOfMessages"]),
                                  in_flight=int(attributes["ApproximateNumberOfMessagesNotVisible"]))
        except (*AwsError, KeyError, ValueError) as error:
            self.on_error(f"sqs.get_queue_attributes[{pool}]", error)
            return QueueTelemetry(visible=None, in_flight=None)

    def sample(self, pool: str, count: int, hold_seconds: int,
               time_left: Callable[[], float]) -> tuple[list[ReceivedJob], list[MalformedMessage]]:
        """Receive up to `count` messages, holding them `hold_seconds` while the cycle decides."""
        jobs: list[ReceivedJob] = []
        malformed: list[MalformedMessage] = []
        while len(jobs) + len(malformed) < count and time_left() > 0:
            try:
                response = self.client.receive_message(
                    QueueUrl=self.queue_urls[pool], MaxNumberOfMessages=min(10, count - len(jobs) - len(malformed)),
                    VisibilityTimeout=hold_seconds, WaitTimeSeconds=0, MessageSystemAttributeNames=["All"])
            except AwsError as error:
                self.on_error(f"sqs.receive_message[{pool}]", error)
                break
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                body = message.get("Body", "")
                try:
                    job = parse_job(body)
                except JobRejected as rejected:
                    malformed.append(MalformedMessage(pool, message["ReceiptHandle"], message["MessageId"], body,
                                                      rejected.reason))
                    continue
                receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
                jobs.append(ReceivedJob(pool, job, message["ReceiptHandle"], message["MessageId"], body, receives))
        return jobs, malformed

    def send_jobs(self, pool: str, jobs: Sequence[Job]) -> set[str]:
        """Send jobs to a pool's queue; return the ids SQS durably accepted."""
        accepted: set[str] = set()
        for start in range(0, len(jobs), 10):
            batch = jobs[start:start + 10]
            entries = [{"Id": str(i), "MessageBody": job.to_json(),
                        "MessageAttributes": {"job_id": {"DataType": "String", "StringValue": job.id}}}
                       for i, job in enumerate(batch)]
            try:
                response = self.client.send_message_batch(QueueUrl=self.queue_urls[pool], Entries=entries)
            except AwsError as error:
                self.on_error(f"sqs.send_message_batch[{pool}]", error)
                continue
            for ok in response.get("Successful", []):
                accepted.add(batch[int(ok["Id"])].id)
            self._report_failed(f"sqs.send_message_batch[{pool}]", response)
        return accepted

    def delete(self, pool: str, receipt_handles: Sequence[str]) -> int:
        return self._batch(pool, receipt_handles, "delete_message_batch", {})

    def release(self, pool: str, receipt_handles: Sequence[str]) -> int:
        """Make held messages visible again at once, so workers are not kept waiting on the controller."""
        return self._batch(pool, receipt_handles, "change_message_visibility_batch", {"VisibilityTimeout": 0})

    def dead_letter(self, message: MalformedMessage, deployment: str) -> bool:
        """Quarantine a malformed message with its reason: send to the DLQ first, delete the original after."""
        wrapper = {"rejected_by": "rebalancer", "deployment": deployment, "pool": message.pool,
                   "reason": message.reason, "message_id": message.message_id, "body": message.body}
        try:
            self.client.send_message(
                QueueUrl=self.dead_letter_urls[message.pool], MessageBody=json.dumps(wrapper),
                MessageAttributes={"reason": {"DataType": "String", "StringValue": message.reason[:256]}})
        except AwsError as error:
            self.on_error(f"sqs.send_message[{message.pool}-dlq]", error)
            return False
        return self.delete(message.pool, [message.receipt_handle]) == 1

    def _batch(self, pool: str, receipt_handles: Sequence[str], operation: str, extra: dict[str, Any]) -> int:
        done = 0
        for start in range(0, len(receipt_handles), 10):
            entries = [{"Id": str(i), "ReceiptHandle": handle, **extra}
                       for i, handle in enumerate(receipt_handles[start:start + 10])]
            try:
                response = getattr(self.client, operation)(QueueUrl=self.queue_urls[pool], Entries=entries)
            except AwsError as error:
                self.on_error(f"sqs.{operation}[{pool}]", error)
                continue
            done += len(response.get("Successful", []))
            self._report_failed(f"sqs.{operation}[{pool}]", response)
        return done

    def _report_failed(self, where: str, response: Mapping[str, Any]) -> None:
        """SQS batch calls succeed as a whole and fail per entry: every failed entry is an error."""
        for failed in response.get("Failed", []):
            self.on_error(where, RuntimeError(f"{failed.get('Code')}: {failed.get('Message')}"))


@dataclass
class RegionForwarder:
    """Sends jobs to another configured region's GPU queue (failover): send first, the caller deletes after."""

    clients: Mapping[str, Any]  # region -> SQS client in that region
    queue_urls: Mapping[str, str]  # region -> its GPU queue URL
    on_error: ErrorSink

    def send_jobs(self, region: str, jobs: Sequence[Job]) -> set[str]:
        if region not in self.queue_urls:  # never outside the configured regions
            raise LookupError(f"{region} is not a configured region")
        queues = SqsQueues(self.clients[region], {"gpu": self.queue_urls[region]}, {}, self.on_error)
        return queues.send_jobs("gpu", jobs)


@dataclass
class QueueAges:
    """The age of each pool queue's oldest message: a CloudWatch metric (SQS exposes no API for it)."""

    client: Any
    queue_names: Mapping[str, str]
    on_error: ErrorSink
    window_seconds: int = 300

    def oldest_ages(self, now: float) -> dict[str, float | None]:
        """One GetMetricData call for every pool; a pool with no recent datapoint is unknown (None)."""
        import datetime

        queries = [{"Id": f"age{i}", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": "AWS/SQS", "MetricName": "ApproximateAgeOfOldestMessage",
                       "Dimensions": [{"Name": "QueueName", "Value": name}]},
            "Period": 60, "Stat": "Maximum"}} for i, name in enumerate(self.queue_names.values())]
        ages: dict[str, float | None] = {pool: None for pool in self.queue_names}
        try:
            results = self.client.get_metric_data(
                MetricDataQueries=queries,
                StartTime=datetime.datetime.fromtimestamp(now - self.window_seconds, tz=datetime.UTC),
                EndTime=datetime.datetime.fromtimestamp(now, tz=datetime.UTC), ScanBy="TimestampDescending",
            )["MetricDataResults"]
        except AwsError as error:
            self.on_error("cloudwatch.get_metric_data", error)
            return ages
        pools = list(self.queue_names)
        for result in results:
            values = result.get("Values", [])
            if values:
                ages[pools[int(result["Id"][3:])]] = float(values[0])
        return ages


@dataclass(frozen=True)
class GroupTelemetry:
    desired: int | None
    in_service: int | None
    pending: int | None
    min_size: int | None
    max_size: int | None
    deployment_tag: str | None
    on_demand_percentage: int | None = None  # None: not a mixed-instances group (or unknown)


@dataclass
class AutoScalingFleets:
    client: Any
    group_names: Mapping[str, str]
    on_error: ErrorSink
    failure_window_seconds: float = 900.0
    _mixed_policies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def telemetry(self) -> dict[str, GroupTelemetry]:
        unknown = GroupTelemetry(None, None, None, None, None, None)
        result = {pool: unknown for pool in self.group_names}
        try:
            groups = self.client.describe_auto_scaling_groups(
                AutoScalingGroupNames=list(self.group_names.values()))["AutoScalingGroups"]
        except AwsError as error:
            self.on_error("autoscaling.describe_auto_scaling_groups", error)
            return result
        by_name = {g["AutoScalingGroupName"]: g for g in groups}
        for pool, name in self.group_names.items():
            group = by_name.get(name)
            if group is None:
                self.on_error("autoscaling.describe_auto_scaling_groups", LookupError(f"group {name} not found"))
                continue
            states = [i.get("LifecycleState", "") for i in group.get("Instances", [])]
            tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
            mixed = group.get("MixedInstancesPolicy")
            percentage = None
            if mixed:
                self._mixed_policies[pool] = mixed
                percentage = mixed.get("InstancesDistribution", {}).get("OnDemandPercentageAboveBaseCapacity", 100)
            result[pool] = GroupTelemetry(
                desired=group["DesiredCapacity"], in_service=sum(s == "InService" for s in states),
                pending=sum(s.startswith("Pending") for s in states), min_size=group["MinSize"],
                max_size=group["MaxSize"], deployment_tag=tags.get(DEPLOYMENT_TAG), on_demand_percentage=percentage)
        return result

    def set_on_demand_percentage(self, pool: str, percentage: int) -> None:
        """Spot <-> On-Demand for capacity launched from now on; running instances are left alone.

        The whole policy as last read goes back with only the share changed, so the launch template and the
        type overrides cannot be lost by a partial update."""
        mixed = self._mixed_policies.get(pool)
        if mixed is None:
            raise LookupError(f"{self.group_names[pool]} has no mixed instances policy to change")
        distribution = {**mixed.get("InstancesDistribution", {}), "OnDemandPercentageAboveBaseCapacity": percentage}
        self.client.update_auto_scaling_group(AutoScalingGroupName=self.group_names[pool],
                                              MixedInstancesPolicy={**mixed, "InstancesDistribution": distribution})

    def failed_launches(self, pool: str, now: float) -> int | None:
        try:
            activities = self.client.describe_scaling_activities(
                AutoScalingGroupName=self.group_names[pool], MaxRecords=20)["Activities"]
        except AwsError as error:
            self.on_error(f"autoscaling.describe_scaling_activities[{pool}]", error)
            return None
        cutoff = now - self.failure_window_seconds
        return sum(1 for a in activities
                   if a.get("StatusCode") in ("Failed", "Cancelled") and _epoch(a.get("StartTime")) >= cutoff)

    def set_desired(self, pool: str, desired: int) -> None:
        self.client.set_desired_capacity(AutoScalingGroupName=self.group_names[pool], DesiredCapacity=desired,
                                         HonorCooldown=False)


def _epoch(value: Any) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else 0.0


class LeaseLost(RuntimeError):
    """Another invocation holds the lease, or took it over: this one must not act."""


@dataclass
class ControllerState:
    """Lease, operator overrides, controller memory and the decision log, all in the state table."""

    client: Any
    table_name: str
    region: str
    clock: Callable[[], float] = time.time
    _controls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"rebalancer#{self.region}"

    def _key(self, sort_key: str) -> dict[str, Any]:
        return {PARTITION_KEY: {"S": self.key}, SORT_KEY: {"S": sort_key}}

    def acquire_lease(self, holder: str, lease_seconds: float) -> int:
        """Take the singleton lease; return the fencing token (a version that only grows)."""
        now = self.clock()
        try:
            response = self.client.update_item(
                TableName=self.table_name, Key=self._key("lease"),
                UpdateExpression="SET holder = :holder, lease_until = :until ADD fence :one",
                ConditionExpression="attribute_not_exists(pk) OR lease_until < :now OR holder = :holder",
                ExpressionAttributeValues={":holder": {"S": holder}, ":until": {"N": str(now + lease_seconds)},
                                           ":now": {"N": str(now)}, ":one": {"N": "1"}},
                ReturnValues="ALL_NEW")
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise LeaseLost("lease held by another invocation") from None
            raise
        return int(response["Attributes"]["fence"]["N"])

    def release_lease(self, holder: str, fence: int) -> None:
        try:
            self.client.update_item(
                TableName=self.table_name, Key=self._key("lease"),
                UpdateExpression="SET lease_until = :zero",
                ConditionExpression="holder = :holder AND fence = :fence",
                ExpressionAttributeValues={":zero": {"N": "0"}, ":holder": {"S": holder},
                                           ":fence": {"N": str(fence)}})
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def still_holds(self, holder: str, fence: int, margin_seconds: float = 2.0) -> bool:
        item = self.client.get_item(TableName=self.table_name, Key=self._key("lease"),
                                    ConsistentRead=True).get("Item", {})
        return (item.get("holder", {}).get("S") == holder and int(item.get("fence", {}).get("N", "-1")) == fence
                and float(item.get("lease_until", {}).get("N", "0")) > self.clock() + margin_seconds)

    def load_controls(self) -> tuple[ControllerMemory, dict[str, Override]]:
        """Memory and overrides in one Query (they share the partition)."""
        items = self.client.query(TableName=self.table_name, KeyConditionExpression="pk = :pk",
                                  ExpressionAttributeValues={":pk": {"S": self.key}},
                                  ConsistentRead=True)["Items"]
        memory = ControllerMemory()
        overrides: dict[str, Override] = {}
        for item in items:
            sort_key = item[SORT_KEY]["S"]
            if sort_key == "memory":
                data = json.loads(item["data"]["S"])
                memory = ControllerMemory(pools={pool: PoolMemory(low_since=entry.get("low_since"))
                                                 for pool, entry in data.get("pools", {}).items()},
                                          serving=ServingMemory(**data.get("serving", {})))
            elif sort_key.startswith("override#"):
                pinned = item.get("pinned_desired", {}).get("N")
                overrides[sort_key.split("#", 1)[1]] = Override(
                    frozen=item.get("frozen", {}).get("BOOL", False),
                    pinned_desired=int(pinned) if pinned is not None else None,
                    note=item.get("note", {}).get("S", ""))
        return memory, overrides

    def save_memory(self, memory: ControllerMemory, fence: int) -> None:
        """Fenced write: an invocation with an older token can never overwrite a newer one's memory."""
        data = {"pools": {pool: {"low_since": m.low_since} for pool, m in memory.pools.items()},
                "serving": asdict(memory.serving)}
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={**self._key("memory"), "data": {"S": json.dumps(data)},
                      "fence": {"N": str(fence)}},
                ConditionExpression="attribute_not_exists(fence) OR fence <= :fence",
                ExpressionAttributeValues={":fence": {"N": str(fence)}})
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise LeaseLost("a newer invocation wrote controller memory") from None
            raise

    def set_override(self, pool: str, *, frozen: bool = False, pinned_desired: int | None = None,
                     note: str = "") -> None:
        item: dict[str, Any] = {**self._key(f"override#{pool}"),
                                "frozen": {"BOOL": frozen}, "note": {"S": note},
                                "set_at": {"N": str(self.clock())}}
        if pinned_desired is not None:
            item["pinned_desired"] = {"N": str(pinned_desired)}
        self.client.put_item(TableName=self.table_name, Item=item)

    def clear_override(self, pool: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key=self._key(f"override#{pool}"))

    def record_decision(self, record: Mapping[str, Any], fence: int, ttl_seconds: float) -> None:
        now = self.clock()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        self.client.put_item(TableName=self.table_name, Item={
            PARTITION_KEY: {"S": f"decisions#{self.region}"}, SORT_KEY: {"S": f"{stamp}#{fence:010d}"},
            "record": {"S": json.dumps(record, default=_json_default, sort_keys=True)},
            TTL_ATTRIBUTE: {"N": str(int(now + ttl_seconds))}})

    def recent_decisions(self, limit: int) -> list[dict[str, Any]]:
        items = self.client.query(TableName=self.table_name, KeyConditionExpression="pk = :pk",
                                  ExpressionAttributeValues={":pk": {"S": f"decisions#{self.region}"}},
                                  ScanIndexForward=False, Limit=limit)["Items"]
        return [json.loads(item["record"]["S"]) for item in items]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")

