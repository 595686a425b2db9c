"""SQS adapters: a region's work queues and their DLQs, another region's GPU queue, the queues' oldest ages.

Clients are injected; none is created at import time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crossfleet_control.aws.errors import AwsError, ErrorSink
from crossfleet_control.core.jobs import Job, JobRejected, parse_job


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
class QueueMetrics:
    """Two CloudWatch metrics per pool queue, in one GetMetricData call: the age of the oldest message (SQS exposes
    no API for it) and the messages sent in each minute (NumberOfMessagesSent, for the forecast: a burst that
    arrives and drains between two cycles leaves no queue behind, only sends). SQS publishes both as one-minute
    datapoints (Amazon SQS Developer Guide, "Available CloudWatch metrics for Amazon SQS")."""

    client: Any
    queue_names: Mapping[str, str]
    on_error: ErrorSink
    window_seconds: int = 300

    def read(self, now: float) -> tuple[dict[str, float | None], dict[str, int | None]]:
        """(oldest age, busiest minute's sends) per pool over the window; no datapoint reads as unknown (None)."""
        import datetime

        def query(kind: str, index: int, name: str, metric: str, stat: str) -> dict[str, Any]:
            return {"Id": f"{kind}{index}", "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": "AWS/SQS", "MetricName": metric,
                           "Dimensions": [{"Name": "QueueName", "Value": name}]},
                "Period": 60, "Stat": stat}}

        names = list(self.queue_names.values())
        queries = ([query("age", i, name, "ApproximateAgeOfOldestMessage", "Maximum") for i, name in enumerate(names)]
                   + [query("sent", i, name, "NumberOfMessagesSent", "Sum") for i, name in enumerate(names)])
        ages: dict[str, float | None] = {pool: None for pool in self.queue_names}
        sent: dict[str, int | None] = {pool: None for pool in self.queue_names}
        try:
            results = self.client.get_metric_data(
                MetricDataQueries=queries,
                StartTime=datetime.datetime.fromtimestamp(now - self.window_seconds, tz=datetime.UTC),
                EndTime=datetime.datetime.fromtimestamp(now, tz=datetime.UTC), ScanBy="TimestampDescending",
            )["MetricDataResults"]
        except AwsError as error:
            self.on_error("cloudwatch.get_metric_data", error)
            return ages, sent
        pools = list(self.queue_names)
        for result in results:
            values = result.get("Values", [])
            if not values:
                continue
            key = str(result["Id"])
            if key.startswith("age"):
                ages[pools[int(key[3:])]] = float(values[0])
            elif key.startswith("sent"):
                sent[pools[int(key[4:])]] = int(max(values))
        return ages, sent
