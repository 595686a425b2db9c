"""Record: the decision log entry with every reason, the cycle's metrics, and the bound on one cycle's AWS calls.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from crossfleet_control.aws.dead_letters import DEAD_LETTERS_PER_CYCLE
from crossfleet_control.aws.health_store import WRITE_ATTEMPTS, summary_to_dict
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core.capacity_health import (
    STATUS_RANK,
)
from crossfleet_control.core.placement import views_to_record
from crossfleet_control.core.policy import pool_views
from crossfleet_control.core.policy_types import (
    Decision,
    Observation,
)
from crossfleet_control.core.settings import Settings


def decision_record(settings: Settings, observation: Observation, decision: Decision, applied: dict[str, Any],
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
        "peers": {region: summary_to_dict(p) for region, p in observation.peers.items()},
        "markets": {pool: asdict(m) for pool, m in decision.markets.items()},
        # What the router places `either` jobs by (placement by marginal cost) until the next cycle.
        "placement_views": views_to_record(pool_views(observation, settings.specs(), settings.policy)),
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


def emit_metrics(metrics: MetricsRecorder, observation: Observation, decision: Decision,
                 applied: dict[str, Any]) -> None:
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
        # Published every cycle (0 or 1) so its alarm sees data, not silence, while the guard is off.
        metrics.put("RunawayGuardHolds", 1 if pool_decision.runaway else 0, Pool=pool)
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
    # Dead-letter reconciliation per pool: one receive per 10 DLQ messages read, and per message at most a
    # ledger update, its history write (or a head read), an envelope send and a delete (or a release).
    reconcile = len(settings.pools) * (math.ceil(DEAD_LETTERS_PER_CYCLE / 10) + 4 * DEAD_LETTERS_PER_CYCLE)
    return fixed + 4 * batches + ledger_writes + 2 * settings.policy.move_budget + reconcile
