"""The rebalancer's cycle: observe, decide (pure policy), act, record. One region, one cycle per invocation.

`run_cycle` takes the lease, gathers the observation (`observe`), asks the policy, applies the decision in
`enforce` mode (`act`) and records it with its reasons (`record`); `_cycle` is that sequence, top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

from crossfleet_control.aws.controller_state import LeaseLost
from crossfleet_control.aws.dead_letters import DEAD_LETTERS_PER_CYCLE, reconcile_dead_letters
from crossfleet_control.aws.queues import MalformedMessage, ReceivedJob
from crossfleet_control.core import policy
from crossfleet_control.core.policy_types import (
    QueuedJob,
)
from crossfleet_control.orchestration.act import apply, publish_summary, release
from crossfleet_control.orchestration.dependencies import Dependencies
from crossfleet_control.orchestration.observe import observe, serve
from crossfleet_control.orchestration.record import decision_record, emit_metrics

# A sampled message is held this long; the cycle releases it sooner (or moves it) well within the timeout.
SAMPLE_HOLD_SECONDS = 60
# Stop starting new AWS work when less than this much of the invocation remains.
SAFETY_MARGIN_SECONDS = 5.0


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



def plan(deps: Dependencies) -> dict[str, Any]:
    """What the policy would do now, without the lease, sampling, writes or actions (`crossfleet plan`)."""
    memory, overrides = deps.state.load_controls()
    observation = observe(deps, deps.clock(), overrides)
    specs = deps.settings.specs()
    observation, endpoint = serve(deps, observation, specs, memory)
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
    observation, endpoint = serve(deps, observation, specs, memory)
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
    if deps.ledger is not None:
        # Bookkeeping, in either mode: a job SQS dead-lettered by itself gets its outcome in the ledger.
        for pool in settings.pools:
            if deps.queues.dead_letter_urls.get(pool) and time_left() > 0:
                done = reconcile_dead_letters(deps.queues, deps.ledger, pool, limit=DEAD_LETTERS_PER_CYCLE,
                                              time_left=time_left)
                metrics.add("DeadLettersReconciled", done.settled, Pool=pool)

    decision = policy.decide(observation, specs, settings.policy, memory,
                             [QueuedJob(pool=r.pool, job=r.job) for r in received])
    applied = apply(deps, decision, received, holder, fence, time_left) if settings.mode == "enforce" else {}
    if settings.mode != "enforce":
        release(deps, received, moved=set())
    if (endpoint is not None and endpoint.changed and endpoint.gpu_weight is not None
            and settings.mode == "enforce" and deps.endpoint is not None):
        applied["endpoint_gpu_weight"] = endpoint.gpu_weight if deps.endpoint.set_gpu_weight(
            endpoint.gpu_weight) else None
    if endpoint is not None:
        decision = replace(decision, memory=replace(decision.memory, serving=endpoint.memory))

    publish_summary(deps, observation, decision, specs)
    try:
        deps.state.save_memory(decision.memory, fence)
    except LeaseLost:
        metrics.add("LeaseLostAfterAct")
    except Exception:
        # Memory only delays scale-in; losing one write restarts the delay, which is the safe direction.
        metrics.add("Errors", 1, Operation="dynamodb.save_memory")
    record = decision_record(settings, observation, decision, applied, len(malformed))
    record["decision_id"] = fence  # the lease's fencing token: unique and ordered per region, also in the logs
    if endpoint is not None:
        record["endpoint"] = endpoint.summary()
        metrics.put("EndpointGpuWeight", endpoint.gpu_weight if endpoint.gpu_weight is not None else -1)
        metrics.add("EndpointWeightChanges", int(endpoint.changed))
    try:
        deps.state.record_decision(record, fence, settings.decision_ttl_seconds)
    except Exception:
        metrics.add("Errors", 1, Operation="dynamodb.record_decision")
    emit_metrics(metrics, observation, decision, applied)
    return {"status": "ok", "mode": settings.mode, "fence": fence, **record["summary"]}



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

