"""Where a new job goes: the router's pure placement rules (a job and the pools' health in, a pool and why out)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from crossfleet_control.core.capacity_health import SHORT, admits
from crossfleet_control.core.jobs import Job
from crossfleet_control.core.marginal_cost import (
    SWITCH_MARGIN,
    PoolView,
    cheapest,
    describe_costs,
    job_seconds,
    marginal_cost,
    share_usd,
)
from crossfleet_control.core.service_model import InstanceProfile


@dataclass(frozen=True)
class PoolHealth:
    """The router's view of a pool: the share of new `either` work it admits, and whether it is short."""

    admit: float = 1.0
    reason: str = ""
    short: bool = False

    @property
    def accepting(self) -> bool:
        return self.admit > 0


def choose_pool(job: Job, health: Mapping[str, PoolHealth], views: Mapping[str, PoolView] | None = None,
                now: float = 0.0) -> tuple[str, str]:
    """Pure placement rule: (pool, why). `*_only` jobs always go to their one pool, whatever its health.

    An `either` job goes to its preferred pool unless that pool admits less than all new work (short, probing or
    ramping back after a shortage) and this job falls outside the admitted share (decided by its id, so a
    redelivery lands in the same place), and the other pool is accepting. Given the pools' current views, an
    `either` job the preferred pool admits goes where serving it on time costs clearly least
    (`core/marginal_cost.py`: an idle paid slot, running capacity, or a new instance at its boot and minimum
    billing), provided that pool is accepting, in the two cases the router can judge alone (`_router_may_compare`);
    without views, to its preferred pool."""
    if job.placement != "either":
        pool = job.allowed_pools()[0]
        return pool, f"placement {job.placement}"
    preferred = job.preference
    other = "cpu" if preferred == "gpu" else "gpu"
    mine = health.get(preferred, PoolHealth())
    if not admits(job.id, mine.admit) and health.get(other, PoolHealth()).accepting:
        return other, f"preferred {preferred} admitting {mine.admit:.0%} ({mine.reason})"
    if views is not None and preferred in views and other in views:
        pair = {preferred: views[preferred], other: views[other]}
        if _router_may_compare(job, views[preferred], now):
            best, costs = cheapest(job, pair, now, incumbent=preferred)
            if best != preferred and health.get(best, PoolHealth()).accepting:
                return best, describe_costs(costs)
        elif (views[other].in_service > 0 and health.get(other, PoolHealth()).accepting
              and share_usd(job, views[other]) < share_usd(job, views[preferred]) * (1 - SWITCH_MARGIN)):
            # Running capacity there serves this job for clearly less per job (an eval preferring Graviton while
            # the GPUs run): the direction that cannot flood a slow pool from a stale view.
            there = marginal_cost(job, views[other], now)
            if there.on_time:
                return other, (f"{describe_costs({p: marginal_cost(job, v, now) for p, v in pair.items()})}; "
                               f"per job on running capacity {other} ${share_usd(job, views[other]):.5f} < "
                               f"{preferred} ${share_usd(job, views[preferred]):.5f}")
    return preferred, f"preference {preferred}"


def _router_may_compare(job: Job, preferred: PoolView, now: float) -> bool:
    """The router compares pools only where its view cannot be stale in a way that matters: the job cannot finish
    on its preferred pool in time even on a free slot (a 70B model on Graviton), or the preferred pool has
    nothing running or booting and may launch (a trickle while the GPUs are at zero: a new instance's boot and
    minimum billing against a slot already running elsewhere). Load-driven diversions are the rebalancer's: it
    reads fresh telemetry every cycle and moves within a budget. Routing every arrival on a view up to a cycle old sent
    bursts to Graviton on `steady` (27% more cost, SLO 0.954 against 0.975)."""
    too_long = job_seconds(preferred.profile, job) > job.deadline_at() - now
    # An empty pool that cannot grow is short or failing: failover and the rebalancer handle that (another
    # region's GPU is cheaper than this region's Graviton); on `gpu-shortage` comparing there cost 13% more.
    idle_at_zero = preferred.in_service + preferred.pending == 0 and preferred.growth_instances > 0
    return too_long or idle_at_zero


def place(job: Job, health: Mapping[str, PoolHealth], failover: tuple[str | None, str],
          views: Mapping[str, PoolView] | None = None, now: float = 0.0) -> tuple[str | None, str, str]:
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
    pool, why = choose_pool(job, health, views, now)
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



def views_to_record(views: Mapping[str, PoolView]) -> dict[str, Any]:
    """The rebalancer's pool views as its decision record carries them to the router."""
    return {pool: asdict(view) for pool, view in views.items()}


def _typed(cls: Any, raw: Mapping[str, Any]) -> dict[str, Any]:
    # DynamoDB returns every number as a Decimal: each field back to its declared type.
    casts = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: casts[str(f.type)](raw[f.name]) for f in fields(cls) if f.name in raw and str(f.type) in casts}


def views_from_record(record: Mapping[str, Any] | None) -> dict[str, PoolView] | None:
    """The pool views the rebalancer last recorded (None when it recorded none: placement by preference)."""
    raw = (record or {}).get("placement_views")
    if not raw:
        return None
    try:
        return {pool: PoolView(**{**_typed(PoolView, view), "profile": InstanceProfile(
            **_typed(InstanceProfile, view["profile"]))}) for pool, view in raw.items()}
    except (KeyError, TypeError, ValueError):
        return None  # a record from another version: route by preference until the next cycle writes one
