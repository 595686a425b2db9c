"""The rebalancer Lambda: observe, decide (pure policy), act, record. One region, one cycle per invocation.

The handler is thin: it builds adapters once per container, then `run_cycle` takes the lease, gathers the
observation, asks the policy, applies the decision (in `enforce` mode) and records it with its reasons.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from crossfleet_control import policy, serving
from crossfleet_control.adapters import (
    AutoScalingFleets,
    ControllerState,
    LeaseLost,
    MalformedMessage,
    QueueAges,
    ReceivedJob,
    RegionForwarder,
    SqsQueues,
)
from crossfleet_control.capacity_health import (
    ANY_TYPE,
    CLOSED,
    STATUS_RANK,
    Offering,
    PoolHealth,
    RegionSummary,
    Signal,
    pool_health,
)
from crossfleet_control.endpoint import EndpointClient, serving_override
from crossfleet_control.health_store import WRITE_ATTEMPTS, HealthStore
from crossfleet_control.ledger import Ledger
from crossfleet_control.metrics import MetricsRecorder
from crossfleet_control.policy_types import (
    ControllerMemory,
    Decision,
    Observation,
    PoolSpec,
    PoolTelemetry,
    QueuedJob,
)
from crossfleet_control.serving import ServingDecision, ServingObservation
from crossfleet_control.settings import Settings

# A sampled message is held this long; the cycle releases it sooner (or moves it) well within the timeout.
SAMPLE_HOLD_SECONDS = 60
# Stop starting new AWS work when less than this much of the invocation remains.
SAFETY_MARGIN_SECONDS = 5.0


@dataclass
class Dependencies:
    settings: Settings
    queues: SqsQueues
    fleets: AutoScalingFleets
    state: ControllerState
    metrics: MetricsRecorder
    ledger: Ledger | None = None
    ages: QueueAges | None = None
    health: HealthStore | None = None
    forwarder: RegionForwarder | None = None
    endpoint: EndpointClient | None = None
    clock: Callable[[], float] = time.time


def build_dependencies(settings: Settings, *, session: Any = None) -> Dependencies:
    import boto3
    from botocore.config import Config

    # Standard retries with backoff and jitter: throttling is normal at fleet scale (failure case 8).
    config = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=10)
    session = session or boto3.session.Session(region_name=settings.region)
    metrics = MetricsRecorder(settings.deployment, settings.region)

    def on_error(where: str, error: Exception) -> None:
        metrics.add("Errors", 1, Operation=where.split("[")[0])
        print(f"crossfleet rebalancer error at {where}: {error}")

    dynamodb = session.client("dynamodb", config=config)
    peer_dynamodb = {region: session.client("dynamodb", region_name=region, config=config)
                     for region in settings.peers}
    peer_sqs = {region: session.client("sqs", region_name=region, config=config) for region in settings.peers}
    return Dependencies(
        settings=settings,
        queues=SqsQueues(session.client("sqs", config=config),
                         {p: s.queue_url for p, s in settings.pools.items()},
                         {p: s.dead_letter_url for p, s in settings.pools.items()}, on_error),
        fleets=AutoScalingFleets(session.client("autoscaling", config=config),
                                 {p: s.group_name for p, s in settings.pools.items()}, on_error),
        state=ControllerState(dynamodb, settings.table_name, settings.region),
        metrics=metrics,
        ledger=Ledger(dynamodb, settings.table_name),
        ages=QueueAges(session.client("cloudwatch", config=config),
                       {p: s.queue_url.rsplit("/", 1)[-1] for p, s in settings.pools.items()}, on_error),
        health=HealthStore(dynamodb, settings.table_name, settings.region,
                           peers={r: (peer_dynamodb[r], peer.table_name) for r, peer in settings.peers.items()},
                           on_error=on_error),
        forwarder=RegionForwarder(peer_sqs, {r: peer.gpu_queue_url for r, peer in settings.peers.items()},
                                  on_error),
        endpoint=EndpointClient(session.client("elbv2", config=config), session.client("cloudwatch", config=config),
                                settings.endpoint, on_error) if settings.endpoint else None,
    )


_DEPENDENCIES: Dependencies | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _DEPENDENCIES
    if _DEPENDENCIES is None:  # once per container: settings parsed, clients built
        _DEPENDENCIES = build_dependencies(Settings.from_json(os.environ["CROSSFLEET_SETTINGS"]))
    holder = getattr(context, "aws_request_id", None) or str(uuid.uuid4())
    remaining = getattr(context, "get_remaining_time_in_millis", lambda: 50_000)
    return run_cycle(_DEPENDENCIES, event, holder=holder, remaining_ms=remaining)


def run_cycle(deps: Dependencies, event: dict[str, Any], *, holder: str,
              remaining_ms: Callable[[], float]) -> dict[str, Any]:
    settings, metrics = deps.settings, deps.metrics
    started = deps.clock()

    def time_left() -> float:
        return remaining_ms() / 1000 - SAFETY_MARGIN_SECONDS

    try:
        stale = _stale_tick(event, started, settings.schedule_seconds)
        if stale:
            metrics.add("StaleTicks")
            return {"status": "skipped", "reason": stale}
        try:
            fence = deps.state.acquire_lease(holder, settings.lease_seconds)
        except LeaseLost as lost:
            metrics.add("LeaseBusy")
            return {"status": "skipped", "reason": str(lost)}
        except Exception as error:  # the table itself failed: nothing safe to do this cycle
            metrics.add("Errors", 1, Operation="dynamodb.acquire_lease")
            return {"status": "error", "reason": f"lease: {error}"}
        try:
            return _cycle(deps, holder, fence, time_left)
        finally:
            try:
                deps.state.release_lease(holder, fence)
            except Exception:  # the lease expires by itself
                metrics.add("Errors", 1, Operation="dynamodb.release_lease")
    finally:
        metrics.flush()


def observe(deps: Dependencies, now: float, overrides: dict[str, Any], *, record_signals: bool = False
            ) -> Observation:
    """Everything the policy sees, read fresh from AWS (failure case 9: AWS is the source of truth)."""
    settings, metrics = deps.settings, deps.metrics
    groups = deps.fleets.telemetry()
    ages = deps.ages.oldest_ages(now) if deps.ages else {}
    telemetry: dict[str, PoolTelemetry] = {}
    for pool in settings.pools:
        queue = deps.queues.telemetry(pool)
        group = groups[pool]
        tag_ok = group.deployment_tag == settings.deployment
        if group.desired is not None and not tag_ok:
            # Failure case 22: a group that lost or never had our tag is not ours to size.
            metrics.add("Errors", 1, Operation="foreign_group")
        telemetry[pool] = PoolTelemetry(
            visible=queue.visible, in_flight=queue.in_flight, oldest_age_seconds=ages.get(pool),
            desired=group.desired if tag_ok else None, in_service=group.in_service if tag_ok else None,
            pending=group.pending, failed_launches=deps.fleets.failed_launches(pool, now))
    health, peers = _capacity(deps, telemetry, now, record_signals)
    return Observation(now=now, pools=telemetry, overrides=overrides, health=health, peers=peers,
                       region=settings.region, configured_regions=settings.configured_regions,
                       on_demand_percentage={pool: groups[pool].on_demand_percentage for pool in settings.pools})


def gap_signals(region: str, telemetry: dict[str, PoolTelemetry], pool_wide: dict[str, str],
                now: float) -> list[Signal]:
    """The group's own evidence: desired above in-service + pending while launches fail opens the pool-wide
    breaker (after two cycles); a group that has everything it asked for closes a half-open one."""
    signals = []
    for pool, t in telemetry.items():
        if t.desired is None or t.in_service is None:
            continue
        offering = Offering(region, pool, ANY_TYPE, "on-demand")
        gap = t.desired - t.in_service - (t.pending or 0)
        if gap > 0 and (t.failed_launches or 0) > 0:
            signals.append(Signal(offering, "launch_gap", now,
                                  f"desired {t.desired}, in service {t.in_service}, pending {t.pending}, "
                                  f"{t.failed_launches} failed launches"))
        elif gap <= 0 and t.desired > 0 and pool_wide.get(pool, CLOSED) != CLOSED:
            signals.append(Signal(offering, "success", now, f"{t.in_service} of {t.desired} in service"))
    return signals


def _capacity(deps: Dependencies, telemetry: dict[str, PoolTelemetry], now: float,
              record_signals: bool) -> tuple[dict[str, PoolHealth], dict[str, RegionSummary]]:
    """This region's pool health (its breakers, plus the gap signals this cycle) and the other regions' GPU."""
    settings = deps.settings
    if deps.health is None:
        return {}, {}
    try:
        breakers = deps.health.breakers()
        if record_signals:
            pool_wide = {b.offering.pool: b.state for b in breakers if b.offering.instance_type == ANY_TYPE
                         and b.offering.market == "on-demand"}
            signals = gap_signals(settings.region, telemetry, pool_wide, now)
            if signals:
                written = {b.offering: b for b in deps.health.record(signals)}
                breakers = [written.pop(b.offering, b) for b in breakers] + list(written.values())
    except Exception as error:
        # Unknown health is not "short": the queue and group telemetry still drive the pools as before.
        deps.metrics.add("Errors", 1, Operation="dynamodb.capacity_health")
        print(f"crossfleet rebalancer: capacity health unreadable: {error}")
        return {}, {}
    health = {pool: pool_health([b for b in breakers if b.offering.pool == pool], spec.instance_types, now)
              for pool, spec in settings.pools.items()}
    peers = {r: s for r, s in deps.health.summaries().items() if r != settings.region}
    return health, peers


def _serve(deps: Dependencies, observation: Observation, specs: Mapping[str, PoolSpec],
           memory: ControllerMemory) -> tuple[Observation, ServingDecision | None]:
    """The real-time endpoint's split, and the observation with the instances that split needs added to each
    pool's want (unchanged, with no decision, where this region has no endpoint)."""
    if deps.endpoint is None or deps.settings.endpoint is None:
        return observation, None
    config = deps.settings.endpoint.serving
    telemetry = deps.endpoint.telemetry(observation.now, int(config.period_seconds))
    seen = ServingObservation(gpu_weight=deps.endpoint.gpu_weight(), telemetry=telemetry,
                              health=observation.health, override=serving_override(observation.overrides))
    endpoint = serving.decide(seen, specs, config, memory.serving)
    return replace(observation, serving_instances=endpoint.instances), endpoint


def plan(deps: Dependencies) -> dict[str, Any]:
    """What the policy would do now, without the lease, sampling, writes or actions (`crossfleet plan`)."""
    memory, overrides = deps.state.load_controls()
    observation = observe(deps, deps.clock(), overrides)
    specs = deps.settings.specs()
    observation, endpoint = _serve(deps, observation, specs, memory)
    decision = policy.decide(observation, specs, deps.settings.policy, memory)
    sampling = policy.plan_sampling(observation, specs, deps.settings.policy)
    planned = {"at": observation.now, "observation": {p: asdict(t) for p, t in observation.pools.items()},
               "overrides": {p: asdict(o) for p, o in overrides.items()},
               "pools": {p: asdict(d) for p, d in decision.pools.items()},
               "would_sample": [asdict(r) for r in sampling]}
    if endpoint is not None:
        planned["endpoint"] = endpoint.summary()
    return planned


def _cycle(deps: Dependencies, holder: str, fence: int, time_left: Callable[[], float]) -> dict[str, Any]:
    settings, metrics = deps.settings, deps.metrics
    specs = settings.specs()
    now = deps.clock()
    try:
        memory, overrides = deps.state.load_controls()
    except Exception as error:
        # Without memory or overrides an operator's freeze could be ignored: hold everything this cycle.
        metrics.add("Errors", 1, Operation="dynamodb.load_controls")
        return {"status": "held", "reason": f"could not read controls: {error}"}

    observation = observe(deps, now, overrides, record_signals=settings.mode == "enforce")
    observation, endpoint = _serve(deps, observation, specs, memory)
    # Sample move candidates only where the policy sees a reason to.
    received: list[ReceivedJob] = []
    malformed: list[MalformedMessage] = []
    for request in policy.plan_sampling(observation, specs, settings.policy):
        jobs, bad = deps.queues.sample(request.pool, request.count, SAMPLE_HOLD_SECONDS, time_left)
        received += jobs
        malformed += bad
    for message in malformed:
        # Poison messages are quarantined with their reason in either mode: they can never run (case 11).
        if deps.queues.dead_letter(message, settings.deployment):
            metrics.add("Quarantined", 1, Pool=message.pool)

    decision = policy.decide(observation, specs, settings.policy, memory,
                             [QueuedJob(pool=r.pool, job=r.job) for r in received])
    applied = _apply(deps, decision, received, holder, fence, time_left) if settings.mode == "enforce" else {}
    if settings.mode != "enforce":
        _release(deps, received, moved=set())
    if endpoint is not None and endpoint.changed and settings.mode == "enforce" and deps.endpoint is not None:
        applied["endpoint_gpu_weight"] = endpoint.gpu_weight if deps.endpoint.set_gpu_weight(
            endpoint.gpu_weight) else None
    if endpoint is not None:
        decision = replace(decision, memory=replace(decision.memory, serving=endpoint.memory))

    _publish_summary(deps, observation, decision, specs)
    try:
        deps.state.save_memory(decision.memory, fence)
    except LeaseLost:
        metrics.add("LeaseLostAfterAct")
    except Exception:
        # Memory only delays scale-in; losing one write restarts the delay, which is the safe direction.
        metrics.add("Errors", 1, Operation="dynamodb.save_memory")
    record = _record(settings, observation, decision, applied, len(malformed))
    if endpoint is not None:
        record["endpoint"] = endpoint.summary()
        metrics.put("EndpointGpuWeight", endpoint.gpu_weight if endpoint.gpu_weight is not None else -1)
        metrics.add("EndpointWeightChanges", int(endpoint.changed))
    try:
        deps.state.record_decision(record, fence, settings.decision_ttl_seconds)
    except Exception:
        metrics.add("Errors", 1, Operation="dynamodb.record_decision")
    _emit(metrics, observation, decision, applied)
    return {"status": "ok", "mode": settings.mode, "fence": fence, **record["summary"]}


def _apply(deps: Dependencies, decision: Decision, received: list[ReceivedJob], holder: str, fence: int,
           time_left: Callable[[], float]) -> dict[str, Any]:
    settings, metrics = deps.settings, deps.metrics
    applied: dict[str, Any] = {"capacity": {}, "moved": [], "move_failures": 0}
    if not deps.state.still_holds(holder, fence):
        metrics.add("LeaseLostBeforeAct")
        _release(deps, received, moved=set())
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
            print(f"crossfleet rebalancer: set_desired_capacity {pool}={desired} failed: {error}")

    for pool, market in decision.markets.items():
        if not market.changes:
            continue
        try:
            deps.fleets.set_on_demand_percentage(pool, market.desired)
            applied.setdefault("markets", {})[pool] = market.desired
        except Exception as error:
            metrics.add("Errors", 1, Operation="autoscaling.update_auto_scaling_group")
            print(f"crossfleet rebalancer: On-Demand share {pool}={market.desired} failed: {error}")

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
            accepted = deps.forwarder.send_jobs(region, [r.job.moved() for r in jobs])
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
    _release(deps, received, moved=moved)
    return applied


def _group_moves(decision: Decision) -> dict[tuple[str, str, str | None], list[Any]]:
    groups: dict[tuple[str, str, str | None], list[Any]] = {}
    for move in decision.moves:
        groups.setdefault((move.source, move.destination, move.destination_region), []).append(move)
    return groups


def _publish_summary(deps: Dependencies, observation: Observation, decision: Decision,
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


def _release(deps: Dependencies, received: list[ReceivedJob], *, moved: set[str]) -> None:
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


def _stale_tick(event: dict[str, Any], now: float, schedule_seconds: int) -> str | None:
    """An EventBridge tick delivered long after its time acts on a world that has moved on (case 15)."""
    stamp = event.get("time") if isinstance(event, dict) else None
    if not stamp:
        return None
    try:
        scheduled = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    if now - scheduled > 3 * schedule_seconds:
        return f"tick from {stamp} is {now - scheduled:.0f}s old"
    return None


def _record(settings: Settings, observation: Observation, decision: Decision, applied: dict[str, Any],
            quarantined: int) -> dict[str, Any]:
    return {
        "at": observation.now,
        "mode": settings.mode,
        "region": settings.region,
        "observation": {pool: asdict(t) for pool, t in observation.pools.items()},
        "overrides": {pool: asdict(o) for pool, o in observation.overrides.items()},
        "pools": {pool: asdict(d) for pool, d in decision.pools.items()},
        "moves": [asdict(m) for m in decision.moves],
        "health": {pool: asdict(h) for pool, h in observation.health.items()},
        "peers": {region: asdict(p) for region, p in observation.peers.items()},
        "markets": {pool: asdict(m) for pool, m in decision.markets.items()},
        "applied": applied,
        "notes": list(decision.notes),
        "summary": {
            "desired": {pool: d.desired for pool, d in decision.pools.items()},
            "moves_decided": len(decision.moves),
            "moves_applied": len(applied.get("moved", [])),
            "quarantined": quarantined,
            "held": [pool for pool, d in decision.pools.items() if d.held],
        },
    }


def _emit(metrics: MetricsRecorder, observation: Observation, decision: Decision, applied: dict[str, Any]) -> None:
    for pool, telemetry in observation.pools.items():
        if telemetry.visible is not None:
            metrics.put("Backlog", telemetry.visible + (telemetry.in_flight or 0), Pool=pool)
        if telemetry.failed_launches is not None:
            metrics.put("FailedLaunches", telemetry.failed_launches, Pool=pool)
        pool_decision = decision.pools[pool]
        if pool_decision.desired is not None:
            metrics.put("DesiredCapacity", pool_decision.desired, Pool=pool)
        if pool_decision.held:
            metrics.add("Holds", 1, Pool=pool)
    for pool, health in observation.health.items():
        metrics.put("CapacityStatus", STATUS_RANK[health.status], Pool=pool)
        metrics.put("SpotFallback", int(health.spot_short), Pool=pool)
    for move in decision.moves:
        metrics.add("MovesDecided", 1, Reason=move.reason)
    if applied:
        metrics.put("MovesApplied", len(applied.get("moved", [])))
        metrics.put("MoveFailures", applied.get("move_failures", 0))


def api_call_bound(settings: Settings) -> int:
    """Most AWS calls one cycle can make (documented in the README; asserted in tests).

    Fixed: lease take + release (2), controls query (1), oldest-message ages (1), group describe (1), per pool
    queue attributes and
    scaling activities (2 each), lease check before acting (1), desired capacity per pool (1 each), memory
    and decision writes (2). Moves: per 10 sampled messages one receive, one send, one delete or release;
    per 25 moves one ledger batch write; per malformed message a DLQ send and a delete.
    """
    pools = len(settings.pools)
    fixed = 2 + 1 + 1 + 1 + 2 * pools + 1 + pools + 2
    # Capacity health: breakers query, a gap signal per pool (read + conditional write, retried on conflict),
    # every configured region's summary, this region's summary, an On-Demand share change per pool.
    fixed += 1 + 2 * WRITE_ATTEMPTS * pools + (1 + len(settings.peers)) + 1 + pools
    # The real-time endpoint: its rule read, its metrics (one call), a weight change.
    fixed += 3 if settings.endpoint else 0
    batches = math.ceil(settings.policy.move_budget / 10) + len(settings.pools)
    ledger_writes = math.ceil(settings.policy.move_budget / 25) + len(settings.pools)
    return fixed + 4 * batches + ledger_writes + 2 * settings.policy.move_budget
