"""The intake router: SQS intake queue in, one pool queue per job out, rejects kept with their reason.

For each message: parse against the job schema; an invalid one goes to the rejects queue with the reason (and
to the ledger when it has an id); a valid one is placed (placement rule, region pin, the pool health the
rebalancer last recorded), sent to its pool queue and then recorded in the ledger. A message whose send fails
is reported as a batch item failure, so SQS delivers it again: nothing is acknowledged before its copy is
durable in a pool queue (or the rejects queue). Every SQS call goes through `aws.intake_queues`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from crossfleet_control.aws import logs
from crossfleet_control.aws.health_store import summary_from_dict
from crossfleet_control.aws.intake_queues import IntakeQueues
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core.capacity_health import PoolHealth as CapacityHealth
from crossfleet_control.core.capacity_health import failover_target, pool_health
from crossfleet_control.core.jobs import Job, JobRejected, parse_job, payload_uri_problem
from crossfleet_control.core.marginal_cost import PoolView
from crossfleet_control.core.placement import (
    PoolHealth,
    health_from_decision,
    merge_health,
    place,
    views_from_record,
)
from crossfleet_control.core.settings import RouterSettings


@dataclass(frozen=True)
class RoutingView:
    """Read once per batch: each local pool's health and the failover target for GPU work, if any."""

    pools: Mapping[str, PoolHealth]
    failover: tuple[str | None, str] = (None, "")
    # The pools as the rebalancer last saw them, for placement by marginal cost (None: by preference). Each job
    # this batch places joins its pool's queue here, so one batch does not fill one pool's free slots twice.
    views: dict[str, PoolView] | None = None
    now: float = 0.0


@dataclass
class Router:
    settings: RouterSettings
    sqs: Any
    ledger: Ledger
    health: Callable[[], RoutingView]
    metrics: MetricsRecorder
    sqs_for_region: Callable[[str], Any] | None = None
    _adapter: IntakeQueues | None = None

    def _queues(self) -> IntakeQueues:
        if self._adapter is None:
            self._adapter = IntakeQueues(self.sqs, self.settings, self.sqs_for_region)
        return self._adapter

    def route_batch(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        failures = []
        health = self.health()
        for record in records:
            try:
                self._route(record.get("body", ""), health)
            except Exception as error:  # send failed: SQS redelivers it (partial batch response)
                self.metrics.add("Errors", 1, Operation="router.route")
                logs.error("message not routed: SQS delivers it again", message_id=record.get("messageId"),
                           error=str(error))
                failures.append({"itemIdentifier": record.get("messageId")})
        self.metrics.flush()
        return {"batchItemFailures": failures}

    def _route(self, body: str, view: RoutingView) -> None:
        try:
            job = parse_job(body)
        except JobRejected as rejected:
            self.reject(body, rejected.reason, rejected.job_id)
            return
        if (problem := payload_uri_problem(job, self.settings.results_bucket)) is not None:
            self.reject(body, problem, job.id)
            return
        if job.region and job.region != self.settings.region:
            configured = (self.settings.region, *self.settings.peer_gpu_queue_urls)
            if job.region not in configured:
                # A valid US region this deployment does not run in: no queue there will ever exist, so
                # retrying cannot help (it only ends in the intake DLQ without a reason).
                self.reject(body, f"region={job.region!r}: not a region of this deployment; one of "
                                  f"{', '.join(configured)}, or absent", job.id)
                return
            conflict = self._id_conflict(job)
            if conflict:
                self.reject(body, conflict, job.id)
                return
            self._forward(job)
            return
        forwarded = job.origin is not None and job.origin != self.settings.region
        # A job another region's router forwarded here was checked and recorded in its origin's ledger, where the
        # workers here claim it: this region's ledger never holds it.
        conflict = None if forwarded else self._id_conflict(job)
        if conflict:
            self.reject(body, conflict, job.id)
            return
        region, pool, why = place(job, view.pools, view.failover, view.views, view.now)
        if view.views is not None and region is None and pool in view.views:
            placed = view.views[pool]
            view.views[pool] = replace(placed, visible=placed.visible + 1)
        if region is not None and region in self.settings.peer_gpu_queue_urls:
            self._queues().send_to_peer(region, job)
            self.metrics.add("FailedOver", 1, Region=region)
            logs.info("failed over", job_id=job.id, to_region=region, why=why)
            why = f"failover: {why}"
        else:
            region = self.settings.region
            self._queues().send_to_pool(pool, job)
        self.metrics.add("Routed", 1, Pool=pool)
        if forwarded:
            return
        try:
            if not self.ledger.record_queued(job.id, pool=pool, region=region, via=f"router: {why}",
                                             fingerprint=job.fingerprint()):
                self.metrics.add("DuplicateSubmissions")
        except Exception:
            # The job is durable in its pool queue; the worker's claim creates the ledger entry if this did not.
            self.metrics.add("Errors", 1, Operation="ledger.record_queued")

    def _id_conflict(self, job: Job) -> str | None:
        """The reason to refuse a job whose id the ledger holds for a different job (another fingerprint), or
        None. Same id and fingerprint is a duplicate: sent again (the worker settles it), in case the first
        send is the one that failed. An unreadable ledger is no conflict here: the worker's claim checks too."""
        try:
            head = self.ledger.head(job.id)
        except Exception:
            self.metrics.add("Errors", 1, Operation="ledger.head")
            return None
        if not head or head.get("status") == "rejected" or head.get("fingerprint") in (None, job.fingerprint()):
            return None
        return (f"id={job.id!r}: already names a different job in this deployment (status {head.get('status')}); "
                "resubmit with a new id")

    def _forward(self, job: Job) -> None:
        """A job pinned to another configured region goes to that region's intake queue, stamped with this region
        as its origin, and is recorded here: the user asks about it where they submitted it, and the workers
        there claim and finish it in this ledger (docs/job-lifecycle.md)."""
        destination = job.region
        assert destination is not None
        job = replace(job, origin=job.origin or self.settings.region)
        self._queues().forward(destination, job)
        self.metrics.add("Forwarded", 1, Region=destination)
        try:
            if not self.ledger.record_queued(job.id, pool="intake", region=destination,
                                             via=f"router: pinned to {destination}", fingerprint=job.fingerprint()):
                self.metrics.add("DuplicateSubmissions")
        except Exception:
            # Durable in the other region's intake queue; that region's workers create the entry when they claim.
            self.metrics.add("Errors", 1, Operation="ledger.record_queued")

    def reject(self, body: str, reason: str, job_id: str | None) -> None:
        self._queues().reject(body, reason, job_id)
        logs.info("rejected", job_id=job_id, reason=reason)
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
    peers = {region: summary_from_dict(summary) for region, summary in (record or {}).get("peers", {}).items()}
    others = tuple(r for r in configured if r != configured[0])
    # Placement by marginal cost trusts the rebalancer's pool views only while they are fresh: a stalled
    # rebalancer's hours-old views would keep steering jobs by capacity that is long gone.
    fresh = record is not None and now - float(record.get("at", 0) or 0) <= stale_after_seconds
    return RoutingView(merge_health(*views), failover_target(peers, others, now, stale_after_seconds),
                       views=views_from_record(record) if fresh else None, now=now)


def _routing(health: CapacityHealth) -> PoolHealth:
    return PoolHealth(health.admit, health.reason, health.short)

