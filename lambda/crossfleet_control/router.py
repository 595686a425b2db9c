"""The intake router Lambda: SQS intake queue in, one pool queue per job out, rejects kept with their reason.

For each message: parse against the job schema; an invalid one goes to the rejects queue with the reason (and
to the ledger when it has an id); a valid one is placed (placement rule, region pin, the pool health the
rebalancer last recorded), sent to its pool queue and then recorded in the ledger. A message whose send fails
is reported as a batch item failure, so SQS delivers it again: nothing is acknowledged before its copy is
durable in a pool queue (or the rejects queue).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crossfleet_control.jobs import Job, JobRejected, parse_job
from crossfleet_control.ledger import Ledger
from crossfleet_control.metrics import MetricsRecorder


@dataclass(frozen=True)
class PoolHealth:
    accepting: bool
    reason: str = ""


def choose_pool(job: Job, health: Mapping[str, PoolHealth]) -> tuple[str, str]:
    """Pure placement rule: (pool, why). `*_only` jobs always go to their one pool, whatever its health."""
    if job.placement != "either":
        pool = job.allowed_pools()[0]
        return pool, f"placement {job.placement}"
    preferred = job.preference
    other = "cpu" if preferred == "gpu" else "gpu"
    if not health.get(preferred, PoolHealth(True)).accepting and health.get(other, PoolHealth(True)).accepting:
        return other, f"preferred {preferred} not accepting ({health[preferred].reason})"
    return preferred, f"preference {preferred}"


def health_from_decision(record: Mapping[str, Any] | None) -> dict[str, PoolHealth]:
    """What the rebalancer last saw: a pool frozen by an operator, unable to launch with nothing in service, or
    capped at zero is not accepting new `either` work."""
    if not record:
        return {}
    health = {}
    for pool, observed in record.get("observation", {}).items():
        override = record.get("overrides", {}).get(pool, {})
        decision = record.get("pools", {}).get(pool, {})
        if override.get("frozen"):
            health[pool] = PoolHealth(False, "frozen by operator")
        elif (observed.get("failed_launches") or 0) > 0 and not observed.get("in_service"):
            health[pool] = PoolHealth(False, "launches failing and nothing in service")
        elif decision.get("desired") == 0 and decision.get("wanted") == 0 and observed.get("desired") == 0 \
                and "pinned" in decision.get("reason", ""):
            health[pool] = PoolHealth(False, "pinned at zero")
        else:
            health[pool] = PoolHealth(True)
    return health


@dataclass
class RouterSettings:
    deployment: str
    region: str
    table_name: str
    queue_urls: dict[str, str]
    rejects_url: str

    @classmethod
    def from_json(cls, text: str) -> RouterSettings:
        return cls(**json.loads(text))


@dataclass
class Router:
    settings: RouterSettings
    sqs: Any
    ledger: Ledger
    health: Callable[[], dict[str, PoolHealth]]
    metrics: MetricsRecorder
    sqs_for_region: Callable[[str], Any] | None = None
    _intake_urls: dict[str, str] = field(default_factory=dict)

    def route_batch(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        failures = []
        health = self.health()
        for record in records:
            try:
                self._route(record.get("body", ""), health)
            except Exception as error:  # send failed: SQS redelivers it (partial batch response)
                self.metrics.add("Errors", 1, Operation="router.route")
                print(f"crossfleet router: message {record.get('messageId')} not routed: {error}")
                failures.append({"itemIdentifier": record.get("messageId")})
        self.metrics.flush()
        return {"batchItemFailures": failures}

    def _route(self, body: str, health: dict[str, PoolHealth]) -> None:
        try:
            job = parse_job(body)
        except JobRejected as rejected:
            self.reject(body, rejected.reason, rejected.job_id)
            return
        if job.region and job.region != self.settings.region:
            self._forward(job)
            return
        pool, why = choose_pool(job, health)
        self.sqs.send_message(QueueUrl=self.settings.queue_urls[pool], MessageBody=job.to_json(),
                              MessageAttributes={"job_id": {"DataType": "String", "StringValue": job.id}})
        self.metrics.add("Routed", 1, Pool=pool)
        try:
            if not self.ledger.record_queued(job.id, pool=pool, region=self.settings.region, via=f"router: {why}"):
                self.metrics.add("DuplicateSubmissions")
        except Exception:
            # The job is durable in its pool queue; the worker's claim creates the ledger entry if this did not.
            self.metrics.add("Errors", 1, Operation="ledger.record_queued")

    def _forward(self, job: Job) -> None:
        """A job pinned to another configured region goes to that region's intake queue, unchanged."""
        assert job.region is not None
        client = self.sqs_for_region(job.region) if self.sqs_for_region else self.sqs
        if job.region not in self._intake_urls:
            name = f"{self.settings.deployment}-{job.region}-intake"
            self._intake_urls[job.region] = client.get_queue_url(QueueName=name)["QueueUrl"]
        client.send_message(QueueUrl=self._intake_urls[job.region], MessageBody=job.to_json())
        self.metrics.add("Forwarded", 1, Region=job.region)

    def reject(self, body: str, reason: str, job_id: str | None) -> None:
        self.sqs.send_message(QueueUrl=self.settings.rejects_url, MessageBody=json.dumps(
            {"reason": reason, "job_id": job_id, "body": body[:200_000], "rejected_at": time.time(),
             "region": self.settings.region}),
            MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:256]}})
        self.metrics.add("Rejected")
        if job_id:
            try:
                self.ledger.record_rejected(job_id, reason)
            except Exception:
                self.metrics.add("Errors", 1, Operation="ledger.record_rejected")


_ROUTER: Router | None = None


def build_router(settings: RouterSettings, *, session: Any = None) -> Router:
    import boto3
    from botocore.config import Config

    from crossfleet_control.adapters import ControllerState

    config = Config(retries={"mode": "standard", "max_attempts": 4})
    session = session or boto3.session.Session(region_name=settings.region)
    dynamodb = session.client("dynamodb", config=config)
    state = ControllerState(dynamodb, settings.table_name, settings.region)

    def health() -> dict[str, PoolHealth]:
        try:
            latest = state.recent_decisions(1)
        except Exception:
            return {}  # no health is "accepting": placement falls back to the producer's preference
        return health_from_decision(latest[0] if latest else None)

    return Router(settings=settings, sqs=session.client("sqs", config=config),
                  ledger=Ledger(dynamodb, settings.table_name), health=health,
                  metrics=MetricsRecorder(settings.deployment, settings.region),
                  sqs_for_region=lambda region: session.client("sqs", region_name=region, config=config))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _ROUTER
    if _ROUTER is None:
        _ROUTER = build_router(RouterSettings.from_json(os.environ["CROSSFLEET_ROUTER_SETTINGS"]))
    return _ROUTER.route_batch(event.get("Records", []))
