"""Act: a decision applied (desired capacity clamped again, On-Demand shares, moves sent before their originals
are deleted), unmoved samples released, and this region's GPU summary published for the other regions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from crossfleet_control.aws import logs
from crossfleet_control.aws.queues import ReceivedJob
from crossfleet_control.core import policy
from crossfleet_control.core.policy_types import (
    Decision,
    Observation,
    PoolSpec,
)
from crossfleet_control.orchestration.dependencies import Dependencies


def apply(deps: Dependencies, decision: Decision, received: list[ReceivedJob], holder: str, fence: int,
           time_left: Callable[[], float]) -> dict[str, Any]:
    settings, metrics = deps.settings, deps.metrics
    applied: dict[str, Any] = {"capacity": {}, "moved": [], "move_failures": 0}
    if not deps.state.still_holds(holder, fence):
        metrics.add("LeaseLostBeforeAct")
        release(deps, received, moved=set())
        return applied
    for pool, pool_decision in decision.pools.items():
        if not pool_decision.changes_capacity or pool_decision.desired is None:
            continue
        spec = settings.pools[pool]
        # Clamp again right before the call: IAM cannot bound a desired capacity (failure case 5).
        desired = policy.clamp(pool_decision.desired, spec.min_size, spec.max_size)
        try:
            deps.fleets.set_desired(pool, desired)
            applied["capacity"][pool] = desired
        except Exception as error:
            metrics.add("Errors", 1, Operation="autoscaling.set_desired_capacity")
            logs.error("set desired capacity failed", pool=pool, desired=desired, error=str(error))

    for pool, market in decision.markets.items():
        if not market.changes:
            continue
        try:
            deps.fleets.set_on_demand_percentage(pool, market.desired)
            applied.setdefault("markets", {})[pool] = market.desired
        except Exception as error:
            metrics.add("Errors", 1, Operation="autoscaling.update_auto_scaling_group")
            logs.error("On-Demand share change failed", pool=pool, percentage=market.desired, error=str(error))

    by_id = {r.job.id: r for r in received}
    moved: set[str] = set()
    for (source, destination, region), moves in _group_moves(decision).items():
        if time_left() <= 0:
            break
        jobs = [by_id[m.job_id] for m in moves if m.job_id in by_id]
        # Send-then-delete: the copy is durable in the destination queue before the original goes.
        if region is None:
            accepted = deps.queues.send_jobs(destination, [r.job.moved() for r in jobs])
        elif deps.forwarder is not None:
            # The copy names this region as its origin: whichever copy a worker claims first (this one, or the
            # original if its delete fails), it claims in this region's ledger, so it runs once.
            accepted = deps.forwarder.send_jobs(region, [r.job.moved(origin=settings.region) for r in jobs])
            destination = f"{region}/{destination}"
        else:
            accepted = set()
        applied["move_failures"] += len(jobs) - len(accepted)
        sent = [r for r in jobs if r.job.id in accepted]
        deleted = deps.queues.delete(source, [r.receipt_handle for r in sent])
        if deleted < len(sent):
            # The copy exists; the original reappears after its hold and the worker's claim deduplicates it.
            metrics.add("Errors", 1, Operation="sqs.delete_after_move")
        moved |= {r.job.id for r in sent}
        applied["moved"] += [r.job.id for r in sent]
        if deps.ledger is not None and sent:
            try:  # the job's history shows the move; the decision log has the reason either way
                deps.ledger.record_moves([(r.job.id, source, destination) for r in sent])
            except Exception:
                metrics.add("Errors", 1, Operation="dynamodb.record_moves")
    release(deps, received, moved=moved)
    return applied


def _group_moves(decision: Decision) -> dict[tuple[str, str, str | None], list[Any]]:
    groups: dict[tuple[str, str, str | None], list[Any]] = {}
    for move in decision.moves:
        groups.setdefault((move.source, move.destination, move.destination_region), []).append(move)
    return groups


def publish_summary(deps: Dependencies, observation: Observation, decision: Decision,
                     specs: Mapping[str, PoolSpec]) -> None:
    """This region's GPU capacity as the other regions' failover sees it (a summary nobody renews goes stale)."""
    if deps.health is None:
        return
    summary = policy.region_summary(observation, specs, deps.settings.policy, decision)
    if summary is None:
        return
    try:
        deps.health.publish(summary)
    except Exception:
        deps.metrics.add("Errors", 1, Operation="dynamodb.publish_capacity")


def release(deps: Dependencies, received: list[ReceivedJob], *, moved: set[str]) -> None:
    """Unmoved samples go back at once. One sampled so often that the next receive could be its redrive to the
    DLQ (sampling counts as a receive) is re-sent as a fresh copy first, then the original deleted."""
    limit = max(1, deps.settings.max_receive_count - 2)
    for pool in {r.pool for r in received}:
        unmoved = [r for r in received if r.pool == pool and r.job.id not in moved]
        worn = [r for r in unmoved if r.receive_count >= limit]
        refreshed: set[str] = set()
        if worn:
            accepted = deps.queues.send_jobs(pool, [r.job for r in worn])
            fresh = [r for r in worn if r.job.id in accepted]
            deps.queues.delete(pool, [r.receipt_handle for r in fresh])
            refreshed = {r.message_id for r in fresh}
            deps.metrics.add("SamplesRefreshed", len(fresh), Pool=pool)
        handles = [r.receipt_handle for r in unmoved if r.message_id not in refreshed]
        if handles:
            deps.queues.release(pool, handles)

