"""Controllers the simulator compares: crossfleet's own policy and the baselines platform teams run today."""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from collections.abc import Callable

from crossfleet.sim.autoscaling import TargetTracker
from crossfleet.sim.engine import JobRecord, Pool, Simulation
from crossfleet_control.core import policy
from crossfleet_control.core.capacity_health import (
    Breaker,
    Offering,
    RegionSummary,
    Signal,
    apply,
    failover_target,
    pool_health,
)
from crossfleet_control.core.capacity_health import PoolHealth as CapacityHealth
from crossfleet_control.core.marginal_cost import PoolView, job_seconds
from crossfleet_control.core.placement import PoolHealth, place
from crossfleet_control.core.policy_types import ControllerMemory, Observation, PolicySettings, QueuedJob

# What the Lambda's cycle costs in AWS calls, as measured in tests/test_rebalancer_faults.py: an idle cycle
# makes 15 in one region (one more per other configured region); each 10 sampled messages add a receive, and
# each 10 moved or released add a send+delete or a release.
IDLE_CYCLE_CALLS = 15


class CrossfleetPolicy:
    """The rebalancer: the very functions the Lambda calls (`crossfleet_control.core.policy`), on the same period.

    Capacity health works as deployed: each failed launch the engine reports is an insufficient-capacity signal
    and each launch a success, applied to the same breakers (`capacity_health`); each region publishes its GPU
    summary at its control step and the others read the last one published. New work is placed by the router's
    own rules (`crossfleet_control.core.placement`), including the failover of GPU-only work.
    """

    name = "crossfleet"

    def __init__(self, settings: PolicySettings, *, failover: bool = True, capacity_health: bool = True,
                 cost_placement: bool = True, spot_prices: bool = True) -> None:
        self.settings = settings
        # `spot_prices=False`: the Spot price is never read (a deployment without DescribeSpotPriceHistory):
        # the market choice reacts to Spot shortages only.
        self.spot_prices = spot_prices
        # `cost_placement=False`: the router places every `either` job on its preferred pool (the router before
        # placement by marginal cost); the rebalancer's moves are unchanged.
        self.cost_placement = cost_placement
        # Ablation switches, each a deployment-level input to the unchanged policy: `failover=False` is a
        # single-region deployment (no peers configured, nothing published); `capacity_health=False` never tells
        # the breakers about failed launches (every pool always looks healthy).
        self.failover = failover
        self.capacity_health = capacity_health
        self.memory: dict[str, ControllerMemory] = {}
        self.breakers: dict[tuple[str, str], dict[Offering, Breaker]] = {}
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}  # failed and successful launches already signalled
        self.health: dict[str, dict[str, CapacityHealth]] = {}
        self.summaries: dict[str, RegionSummary] = {}
        self.now = 0.0
        self._routing: dict[str, tuple[dict[str, PoolHealth], tuple[str | None, str]]] = {}
        # The router's view of each region's pools for placement by marginal cost: built from the pools at the
        # first arrival after a control step, then each placed job joins the queue it went to (as a router
        # counting its own sends would), so one step's arrivals do not all pile onto one pool's idle slots.
        self._views: dict[str, dict[str, PoolView]] = {}
        self._sim: Simulation | None = None

    def route(self, record: JobRecord) -> str | tuple[str, str]:
        view = self._routing.get(record.region)
        if view is None:
            view = self._routing[record.region] = self._routing_view(record.region)
        job = record.job
        views = None
        if job.placement == "either" and self._sim is not None and self.cost_placement:
            views = self._views.get(record.region)
            if views is None:
                views = self._views[record.region] = self._pool_views(record.region)
        target, pool, _ = place(job, *view, views, record.arrived)
        if views is not None and target is None and pool in views:
            placed = views[pool]
            views[pool] = dataclasses.replace(
                placed, visible=placed.visible + 1,
                extra_seconds=placed.extra_seconds + job_seconds(placed.profile, job) - placed.mean_job_seconds)
        return (target, pool) if target is not None else pool

    def attach(self, sim: Simulation) -> None:
        """The router reads the pools from the first arrival on (before the first control step too)."""
        self._sim = sim

    def _observation(self, now: float, region: str, pools: dict[str, Pool], sim: Simulation) -> Observation:
        """What the Lambda reads in one region: telemetry, capacity health, peers, and each pool's current price
        (deployed, the configured price; here, the scenario's prices over time, the same ones every policy pays)."""
        return Observation(now=now, pools={name: pool.telemetry(now) for name, pool in pools.items()},
                           health=self.health.get(region, {}), region=region,
                           configured_regions=tuple(sim.pools) if self.failover else (region,),
                           peers={r: s for r, s in self.summaries.items() if r != region},
                           prices={name: pool.price_per_hour for name, pool in pools.items()},
                           # The Spot price the Lambda reads from DescribeSpotPriceHistory, here the scenario's,
                           # and the On-Demand share the group runs with (what the market choice last set).
                           spot_prices={name: pool.profile.spot_per_hour * pool.spot_price_factor * pool.price_factor
                                        for name, pool in pools.items()
                                        if pool.config.spot_fraction > 0 and self.spot_prices},
                           on_demand_percentage={name: pool.market_on_demand if pool.market_on_demand is not None
                                                 else pool.spec.on_demand_percentage
                                                 for name, pool in pools.items()})

    def _pool_views(self, region: str) -> dict[str, PoolView]:
        assert self._sim is not None
        pools = self._sim.pools[region]
        observation = self._observation(self.now, region, pools, self._sim)
        return policy.pool_views(observation, {name: pool.spec for name, pool in pools.items()}, self.settings)

    def _routing_view(self, region: str) -> tuple[dict[str, PoolHealth], tuple[str | None, str]]:
        """The router's inputs for one region: its pools' health and the failover ranking of the others.

        Both change only at a control step (health, summaries and `now` are set there), so they are computed
        once per region per step, not for every arrival (at 40x that was 430k identical rankings)."""
        health = {pool: PoolHealth(h.admit, h.reason, h.short) for pool, h in self.health.get(region, {}).items()}
        others = tuple(r for r in self.summaries if r != region) if self.failover else ()
        return health, failover_target({r: self.summaries[r] for r in others}, others, self.now,
                                       self.settings.stale_peer_seconds)

    def _signal(self, now: float, region: str, pools: dict[str, Pool]) -> None:
        if not self.capacity_health:
            self.health.setdefault(region, {})
            return
        for name, pool in pools.items():
            key = (region, name)
            breakers = self.breakers.setdefault(key, {})
            offering = Offering(region, name, pool.config.instance_type, "on-demand")
            failed_seen, launched_seen = self.seen.get(key, (0, len(pool.launched)))
            for at in pool.failed_launches[failed_seen:]:
                breakers[offering] = apply(breakers.get(offering, Breaker(offering)),
                                           Signal(offering, "insufficient_capacity", at, "launch failed"))
            for at in pool.launched[launched_seen:]:
                breakers[offering] = apply(breakers.get(offering, Breaker(offering)),
                                           Signal(offering, "success", at, "launched"))
            self.seen[key] = (len(pool.failed_launches), len(pool.launched))
            self.health.setdefault(region, {})[name] = pool_health(breakers.values(), (pool.config.instance_type,),
                                                                   now)

    def control(self, now: float, region: str, pools: dict[str, Pool], sim: Simulation) -> None:
        self.now = now
        self._sim = sim
        self._routing.clear()  # health, summaries and `now` change below: every region's routing view is stale
        self._views.clear()
        self._signal(now, region, pools)
        specs = {name: pool.spec for name, pool in pools.items()}
        observation = self._observation(now, region, pools, sim)
        calls = IDLE_CYCLE_CALLS + len(sim.pools) - 1
        sampled: dict[str, list[JobRecord]] = {}
        for request in policy.plan_sampling(observation, specs, self.settings):
            sampled[request.pool] = list(itertools.islice(pools[request.pool].queue, request.count))
            calls += math.ceil(len(sampled[request.pool]) / 10)
        candidates = [QueuedJob(pool=name, job=r.job) for name, records in sampled.items() for r in records]
        decision = policy.decide(observation, specs, self.settings, self.memory.get(region, ControllerMemory()),
                                 candidates)
        self.memory[region] = decision.memory
        by_id = {r.job.id: r for records in sampled.values() for r in records}
        moved_by_route: dict[tuple[str, str, str], list[JobRecord]] = {}
        for move in decision.moves:
            route = (move.source, move.destination_region or region, move.destination)
            moved_by_route.setdefault(route, []).append(by_id[move.job_id])
        for (source, destination_region, destination), records in moved_by_route.items():
            sim.move_many(records, pools[source], sim.pools[destination_region][destination], now)
            calls += 2 * math.ceil(len(records) / 10)
        unmoved = len(candidates) - len(decision.moves)
        calls += math.ceil(unmoved / 10)
        for name, pool_decision in decision.pools.items():
            if pool_decision.desired is not None and pool_decision.desired != pools[name].desired:
                sim.set_desired(pools[name], pool_decision.desired, now)
                calls += 1
        for name, market in decision.markets.items():
            # As act.py does: the group's On-Demand share changes, and new launches follow it.
            if market.desired != observation.on_demand_percentage.get(name):
                pools[name].market_on_demand = market.desired
                sim.market_changes += 1
                calls += 1
        summary = policy.region_summary(observation, specs, self.settings, decision)
        if summary is not None and self.failover:
            self.summaries[region] = summary
        sim.api_calls += calls


class TargetTracking:
    """Each fleet scales by AWS target tracking on backlog per instance (`autoscaling.TargetTracker`), no moving;
    routing is fixed by a rule (the producer's preference, GPU first, CPU first, or a static split).

    The knob is the acceptable latency of AWS's SQS guidance: target backlog per instance = latency / time per
    message = latency x streams / mean job seconds. It defaults to the rebalancer's `target_wait_seconds`, the
    same number crossfleet is given.
    """

    def __init__(self, name: str, router: Callable[[JobRecord], str], target_wait_seconds: float = 120.0) -> None:
        self.name = name
        self.router = router
        self.target_wait_seconds = target_wait_seconds
        self.trackers: dict[str, TargetTracker] = {}

    def route(self, record: JobRecord) -> str:
        return self.router(record)

    def target_backlog(self, pool: Pool) -> float:
        return pool.profile.streams * self.target_wait_seconds / pool.spec.mean_job_seconds

    def control(self, now: float, region: str, pools: dict[str, Pool], sim: Simulation) -> None:
        for pool in pools.values():
            telemetry = pool.telemetry(now)
            tracker = self.trackers.setdefault(pool.key, TargetTracker(self.target_backlog(pool)))
            backlog = (telemetry.visible or 0) + (telemetry.in_flight or 0)
            apply_tracker(sim, pool, tracker, backlog, now)
            sim.api_calls += 1  # the custom backlog-per-instance metric, published once per pool per period


def apply_tracker(sim: Simulation, pool: Pool, tracker: TargetTracker, load: float, now: float) -> None:
    telemetry = pool.telemetry(now)
    desired = tracker.step(load=load, in_service=telemetry.in_service or 0, warming=telemetry.pending or 0,
                           desired=pool.desired, min_size=pool.spec.min_size, max_size=pool.spec.max_size)
    if desired != pool.desired:
        sim.set_desired(pool, desired, now)


def _preferred(record: JobRecord) -> str:
    return record.job.preference


def _gpu_first(record: JobRecord) -> str:
    return "cpu" if record.job.placement == "cpu_only" else "gpu"


def _cpu_first(record: JobRecord) -> str:
    return "gpu" if record.job.placement == "gpu_only" else "cpu"


def _split(record: JobRecord) -> str:
    if record.job.placement != "either":
        return _preferred(record)
    return "cpu" if zlib.crc32(record.job.id.encode()) % 2 else "gpu"


POLICIES = ("crossfleet", "gpu-only", "cpu-only", "static-split", "target-tracking")


def make_controller(name: str, settings: PolicySettings, *, target_wait_seconds: float | None = None,
                    failover: bool = True, capacity_health: bool = True,
                    cost_placement: bool = True, spot_prices: bool = True) -> CrossfleetPolicy | TargetTracking:
    if name == "crossfleet":
        return CrossfleetPolicy(settings, failover=failover, capacity_health=capacity_health,
                                cost_placement=cost_placement, spot_prices=spot_prices)
    routers = {"gpu-only": _gpu_first, "cpu-only": _cpu_first, "static-split": _split,
               "target-tracking": _preferred}
    if name not in routers:
        raise ValueError(f"unknown policy {name!r}; queue policies: {', '.join(POLICIES)}")
    wait = settings.target_wait_seconds if target_wait_seconds is None else target_wait_seconds
    return TargetTracking(name, routers[name], target_wait_seconds=wait)
