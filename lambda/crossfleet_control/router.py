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

from crossfleet_control.capacity_health import SHORT, RegionSummary, admits, failover_target, pool_health
from crossfleet_control.capacity_health import PoolHealth as CapacityHealth
from crossfleet_control.jobs import Job, JobRejected, parse_job
from crossfleet_control.ledger import Ledger
from crossfleet_control.metrics import MetricsRecorder


@dataclass(frozen=True)
class PoolHealth:
    """The router's view of a pool: the share of new `either` work it admits, and whether it is short."""

    admit: float = 1.0
    reason: str = ""
    short: bool = False

    @property
    def accepting(self) -> bool:
        return self.admit > 0


def choose_pool(job: Job, health: Mapping[str, PoolHealth]) -> tuple[str, str]:
    """Pure placement rule: (pool, why). `*_only` jobs always go to their one pool, whatever its health.

    An `either` job goes to its preferred pool unless that pool admits less than all new work (short, probing or
    ramping back after a shortage) and this job falls outside the admitted share (decided by its id, so a
    redelivery lands in the same place), and the other pool is accepting."""
    if job.placement != "either":
        pool = job.allowed_pools()[0]
        return pool, f"placement {job.placement}"
    preferred = job.preference
    other = "cpu" if preferred == "gpu" else "gpu"
    mine = health.get(preferred, PoolHealth())
    if not admits(job.id, mine.admit) and health.get(other, PoolHealth()).accepting:
        return other, f"preferred {preferred} admitting {mine.admit:.0%} ({mine.reason})"
    return preferred, f"preference {preferred}"


def place(job: Job, health: Mapping[str, PoolHealth], failover: tuple[str | None, str]
          ) -> tuple[str | None, str, str]:
    """(other region or None, pool, why). GPU work is not sent to a short (or not yet fully admitting) GPU pool
    here when a healthy configured region can take it: a GPU elsewhere is the cheap, fast place for it. With
    nowhere to fail over to, `either` work falls back to this region's CPU (`choose_pool`). Pinned jobs stay."""
    target, target_why = failover
    gpu = health.get("gpu", PoolHealth())
    can_fail_over = target is not None and job.region is None and job.may_run_on("gpu")
    if job.placement == "gpu_only" and gpu.short and can_fail_over:
        return target, "gpu", f"gpu short here ({gpu.reason}); {target_why}"
    if job.placement == "either" and job.preference == "gpu" and not admits(job.id, gpu.admit) and can_fail_over:
        return target, "gpu", f"gpu here admitting {gpu.admit:.0%} ({gpu.reason}); {target_why}"
    pool, why = choose_pool(job, health)
    return None, pool, why


def health_from_decision(record: Mapping[str, Any] | None) -> dict[str, PoolHealth]:
    """What the rebalancer last saw: a pool frozen by an operator, unable to launch with nothing in service, or
    pinned at zero takes no new `either` work; its capacity health (admit share) carries over."""
    if not record:
        return {}
    health = {}
    for pool, observed in record.get("observation", {}).items():
        override = record.get("overrides", {}).get(pool, {})
        decision = record.get("pools", {}).get(pool, {})
        capacity = record.get("health", {}).get(pool, {})
        if override.get("frozen"):
            health[pool] = PoolHealth(0.0, "frozen by operator")
        elif (observed.get("failed_launches") or 0) > 0 and not observed.get("in_service"):
            health[pool] = PoolHealth(0.0, "launches failing and nothing in service")
        elif decision.get("desired") == 0 and decision.get("wanted") == 0 and observed.get("desired") == 0 \
                and "pinned" in decision.get("reason", ""):
            health[pool] = PoolHealth(0.0, "pinned at zero")
        else:
            health[pool] = PoolHealth(float(capacity.get("admit", 1.0)), capacity.get("reason", ""),
                                      capacity.get("status") == SHORT)
    return health


def merge_health(*views: Mapping[str, PoolHealth]) -> dict[str, PoolHealth]:
    """The most cautious view of each pool wins."""
    merged: dict[str, PoolHealth] = {}
    for view in views:
        for pool, health in view.items():
            known = merged.get(pool)
            if known is None or health.admit < known.admit or (health.short and not known.short):
                merged[pool] = PoolHealth(min(health.admit, known.admit) if known else health.admit,
                                          health.reason or (known.reason if known else ""),
                                          health.short or bool(known and known.short))
    return merged


@dataclass
class RouterSettings:
    deployment: str
    region: str
    table_name: str
    queue_urls: dict[str, str]
    rejects_url: str
    # Failover: the other configured regions' GPU queues (nothing else is ever a destination).
    peer_gpu_queue_urls: dict[str, str] = field(default_factory=dict)
    pool_instance_types: dict[str, list[str]] = field(default_factory=dict)
    stale_peer_seconds: float = 300.0

    @classmethod
    def from_json(cls, text: str) -> RouterSettings:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RoutingView:
    """Read once per batch: each local pool's health and the failover target for GPU work, if any."""

    pools: Mapping[str, PoolHealth]
    failover: tuple[str | None, str] = (None, "")


@dataclass
class Router:
    settings: RouterSettings
    sqs: Any
    ledger: Ledger
    health: Callable[[], RoutingView]
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

    def _route(self, body: str, view: RoutingView) -> None:
        try:
            job = parse_job(body)
        except JobRejected as rejected:
            self.reject(body, rejected.reason, rejected.job_id)
            return
        if job.region and job.region != self.settings.region:
            self._forward(job)
            return
        region, pool, why = place(job, view.pools, view.failover)
        attributes = {"job_id": {"DataType": "String", "StringValue": job.id}}
        if region is not None and region in self.settings.peer_gpu_queue_urls:
            client = self.sqs_for_region(region) if self.sqs_for_region else self.sqs
            client.send_message(QueueUrl=self.settings.peer_gpu_queue_urls[region], MessageBody=job.to_json(),
                                MessageAttributes=attributes)
            self.metrics.add("FailedOver", 1, Region=region)
            why = f"failover: {why}"
        else:
            region = self.settings.region
            self.sqs.send_message(QueueUrl=self.settings.queue_urls[pool], MessageBody=job.to_json(),
                                  MessageAttributes=attributes)
        self.metrics.add("Routed", 1, Pool=pool)
        try:
            if not self.ledger.record_queued(job.id, pool=pool, region=region, via=f"router: {why}"):
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


def routing_view(state: Any, store: Any, pool_types: Mapping[str, list[str]], configured: tuple[str, ...],
                 now: float, stale_after_seconds: float) -> RoutingView:
    """Fresh breakers (the capacity-events Lambda writes them within seconds of a failed launch), plus what the
    rebalancer last recorded: operator holds and the other regions' GPU summaries. Unreadable is "accepting"
    here and no failover: placement falls back to the producer's preference, and the rebalancer corrects it."""
    try:
        latest = state.recent_decisions(1)
    except Exception:
        latest = []
    record = latest[0] if latest else None
    views = [health_from_decision(record)]
    try:
        breakers = store.breakers()
        views.append({pool: _routing(pool_health([b for b in breakers if b.offering.pool == pool], types, now))
                      for pool, types in pool_types.items()})
    except Exception:
        pass
    peers = {region: RegionSummary(**summary) for region, summary in (record or {}).get("peers", {}).items()}
    others = tuple(r for r in configured if r != configured[0])
    return RoutingView(merge_health(*views), failover_target(peers, others, now, stale_after_seconds))


def _routing(health: CapacityHealth) -> PoolHealth:
    return PoolHealth(health.admit, health.reason, health.short)


_ROUTER: Router | None = None


def build_router(settings: RouterSettings, *, session: Any = None) -> Router:
    import boto3
    from botocore.config import Config

    from crossfleet_control.adapters import ControllerState
    from crossfleet_control.health_store import HealthStore

    config = Config(retries={"mode": "standard", "max_attempts": 4})
    session = session or boto3.session.Session(region_name=settings.region)
    dynamodb = session.client("dynamodb", config=config)
    state = ControllerState(dynamodb, settings.table_name, settings.region)

    store = HealthStore(dynamodb, settings.table_name, settings.region)
    configured = (settings.region, *settings.peer_gpu_queue_urls)

    def health() -> RoutingView:
        return routing_view(state, store, settings.pool_instance_types, configured, time.time(),
                            settings.stale_peer_seconds)

    return Router(settings=settings, sqs=session.client("sqs", config=config),
                  ledger=Ledger(dynamodb, settings.table_name), health=health,
                  metrics=MetricsRecorder(settings.deployment, settings.region),
                  sqs_for_region=lambda region: session.client("sqs", region_name=region, config=config))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _ROUTER
    if _ROUTER is None:
        _ROUTER = build_router(RouterSettings.from_json(os.environ["CROSSFLEET_ROUTER_SETTINGS"]))
    return _ROUTER.route_batch(event.get("Records", []))
