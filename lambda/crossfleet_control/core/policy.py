"""The rebalancer's pure policy: observation in, decision out, every choice with its reason.

No boto3 here: the Lambda handler, the simulator and the CLI's `plan` all call these functions.

One cycle, per region:
1. `plan_sampling` says which queues are worth sampling for move candidates (a pool under pressure, or a
   pool whose partner has idle slots), within the move budget.
2. `decide` picks moves for the sampled `either` jobs, then sizes both fleets from the backlog the moves
   leave behind.

Sizing: enough slots to drain the visible queue within the target wait (AWS's backlog-per-instance guidance),
never fewer instances than the running jobs occupy, raised to the warm-start floor (`forecast`: the pool's
decaying recent peak want, and a share of a short peer region's), clamped to [min, max]; up by the whole gap at
once (`scale_up_gain`), down only after the want has stayed lower for `scale_in_delay_seconds` (then at most
`max_scale_in_step` per cycle, never below the instances busy with in-flight jobs).
Unknown telemetry holds a pool: no scaling, no moves into or out of it.

Capacity health (see `capacity_health`): a short pool holds at what it has (no launches into a region that just
said no, no scale-in of its running instances), its `either` jobs move to the other pool when they still meet
their deadline there, and its GPU jobs that cannot are forwarded to the healthiest other configured region
(never a pinned job, never outside the configuration). A probing pool grows one instance per cycle; a recovering
one grows by its admit share of the usual step. A pool whose Spot is short runs On-Demand until Spot recovers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crossfleet_control.core import forecast
from crossfleet_control.core.capacity_health import PoolHealth, RegionSummary, failover_target
from crossfleet_control.core.jobs import Job
from crossfleet_control.core.marginal_cost import (
    MarginalCost,
    PoolView,
    cheaper,
    cheapest,
    describe_costs,
    job_seconds,
    pool_price_per_hour,
)
from crossfleet_control.core.policy_types import (
    ControllerMemory,
    Decision,
    MarketDecision,
    Move,
    Observation,
    PolicySettings,
    PoolDecision,
    PoolMemory,
    PoolSpec,
    PoolTelemetry,
    QueuedJob,
    SampleRequest,
)

PAIRS = (("gpu", "cpu"), ("cpu", "gpu"))
# Only GPU work fails over across regions: CPU capacity is plentiful, and every region has its own Graviton.
FAILOVER_POOLS = ("gpu",)


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


@dataclass
class _PoolLoad:
    """Mutable working view of one pool while moves are chosen within a cycle."""

    spec: PoolSpec
    telemetry: PoolTelemetry
    visible: int
    idle_slots: int
    health: PoolHealth
    # Work moved in this cycle beyond what `visible` counts at the pool's mean job length: a long inference job
    # moved onto Graviton occupies a slot for much longer than the pool's typical agent step.
    extra_seconds: float = 0.0
    price_per_hour: float = 0.0  # current effective $/hour per instance (marginal_cost.pool_price_per_hour)

    def view(self, step: int, fill_share: float = 1.0) -> PoolView:
        """This pool as placement by marginal cost sees it now (moves already chosen this cycle included)."""
        # Jobs moved in this cycle count in `visible` (and their extra length in `extra_seconds`).
        return PoolView(name=self.spec.name, profile=self.spec.profile, in_service=self.telemetry.in_service or 0,
                        pending=self.telemetry.pending or 0, in_flight=self.telemetry.in_flight or 0,
                        visible=self.visible,
                        mean_job_seconds=self.spec.mean_job_seconds, price_per_hour=self.price_per_hour,
                        growth_instances=(min(step, max(0, self.spec.max_size - (self.telemetry.desired or 0)))
                                          if self.can_add_capacity() else 0),
                        extra_seconds=self.extra_seconds, fill_share=fill_share)

    def slot_cost_per_job(self) -> float:
        """$ of one typical job's share of an instance here: what work on running capacity costs."""
        return self.price_per_hour / 3600.0 * self.spec.mean_job_seconds / self.spec.profile.streams

    @property
    def slots(self) -> int:
        return (self.telemetry.in_service or 0) * self.spec.profile.streams

    def can_add_capacity(self) -> bool:
        failing = (self.telemetry.failed_launches or 0) > 0
        return self.spec.max_size > 0 and not failing and not self.health.short

    def eta_seconds(self) -> float:
        """Seconds until a job enqueued now would start on this pool."""
        free = self.slots - (self.telemetry.in_flight or 0)
        if self.visible < free:
            return 0.0
        waiting_work = (self.visible - max(free, 0) + 1) * self.spec.mean_job_seconds + max(0.0, self.extra_seconds)
        if self.slots > 0:
            return waiting_work / self.slots
        if not self.can_add_capacity():
            return math.inf
        # No instance yet: a boot, then the first instance works through the queue.
        return self.spec.profile.boot_seconds + waiting_work / self.spec.profile.streams


def _known(telemetry: PoolTelemetry | None) -> bool:
    return telemetry is not None and not telemetry.missing()


def _movable(observation: Observation, source: str, destination: str) -> bool:
    """Moves need both sides' telemetry and neither side frozen by an operator."""
    pools = observation.pools
    return (_known(pools.get(source)) and _known(pools.get(destination))
            and not observation.override(source).frozen and not observation.override(destination).frozen)


def _loads(observation: Observation, specs: Mapping[str, PoolSpec]) -> dict[str, _PoolLoad]:
    loads = {}
    for name, spec in specs.items():
        telemetry = observation.pools.get(name)
        if not _known(telemetry):
            continue
        assert telemetry is not None and telemetry.visible is not None and telemetry.in_flight is not None
        slots = (telemetry.in_service or 0) * spec.profile.streams
        idle = max(0, slots - telemetry.in_flight - telemetry.visible)
        loads[name] = _PoolLoad(spec=spec, telemetry=telemetry, visible=telemetry.visible, idle_slots=idle,
                                health=observation.health_of(name),
                                price_per_hour=pool_price_per_hour(spec, observation))
    return loads


def pool_views(observation: Observation, specs: Mapping[str, PoolSpec],
               settings: PolicySettings) -> dict[str, PoolView]:
    """Each known pool as placement by marginal cost sees it (the router's input; moves build the same views)."""
    return {name: load.view(settings.max_scale_up_step, fill_share(settings))
            for name, load in _loads(observation, specs).items()}


def fill_share(settings: PolicySettings) -> float:
    """The share of a pool's slots placement may fill for free: all of them when sizing keeps no occupancy
    margin (`target_utilization` 0, the default: the forecast floor holds the room for arrivals), else the
    margin's share (filling past it only makes the sizer add instances)."""
    return settings.target_utilization if settings.target_utilization > 0 else 1.0


MAX_PUBLISHED_WAIT_SECONDS = 86_400.0  # "no capacity at all" published as a day, not as infinity


def queue_wait_seconds(observation: Observation, specs: Mapping[str, PoolSpec], pool: str) -> float | None:
    """How long a job queued on `pool` now would wait to start (None when the pool's telemetry is unknown)."""
    load = _loads(observation, specs).get(pool)
    if load is None:
        return None
    return min(load.eta_seconds(), MAX_PUBLISHED_WAIT_SECONDS)


def region_summary(observation: Observation, specs: Mapping[str, PoolSpec], settings: PolicySettings,
                   decision: Decision, pool: str = "gpu") -> RegionSummary | None:
    """This region's GPU pool as the other regions' failover reads it, after this cycle's decision (None while
    its telemetry is unknown: unknown is published as nothing, so the last summary ages out)."""
    telemetry, spec = observation.pools.get(pool), specs.get(pool)
    if telemetry is None or telemetry.missing() or spec is None:
        return None
    health = observation.health_of(pool)
    pool_decision = decision.pools.get(pool)
    desired = pool_decision.desired if pool_decision is not None else None
    return RegionSummary(
        region=observation.region, status=health.status, admit=health.admit, in_service=telemetry.in_service or 0,
        desired=desired if desired is not None else telemetry.desired or 0, max_size=spec.max_size,
        queued=telemetry.visible or 0, updated_at=observation.now,
        wait_seconds=queue_wait_seconds(observation, specs, pool) or 0.0,
        target_wait_seconds=settings.target_wait_seconds,
        peak_want=forecast.peak(decision.memory.of(pool).peaks, observation.now, settings.forecast_window_seconds))


def _failover_region(observation: Observation, settings: PolicySettings) -> tuple[str | None, str]:
    others = tuple(r for r in observation.configured_regions if r != observation.region)
    return failover_target(observation.peers, others, observation.now, settings.stale_peer_seconds)


def plan_sampling(observation: Observation, specs: Mapping[str, PoolSpec],
                  settings: PolicySettings) -> tuple[SampleRequest, ...]:
    """Which queues to sample for move candidates, and how many messages, within the move budget."""
    loads = _loads(observation, specs)
    requests = []
    budget = settings.move_budget
    for source, destination in PAIRS:
        if budget <= 0 or not _movable(observation, source, destination):
            continue
        if source not in loads or destination not in loads or loads[source].visible == 0:
            continue
        src, dst = loads[source], loads[destination]
        # Deadlines are only known per job, so sample once a typical job would use half the target wait:
        # jobs with tighter deadlines than the target may already be missing theirs.
        typical_finish = src.eta_seconds() + src.spec.mean_job_seconds
        if dst.idle_slots > 0:
            reason = f"{destination} has {dst.idle_slots} idle slots"
        elif typical_finish > settings.target_wait_seconds / 2:
            reason = f"{source} typical finish {typical_finish:.0f}s is over half the target wait"
        elif ((dst.telemetry.in_service or 0) > 0 and dst.eta_seconds() < settings.target_wait_seconds
              and src.slot_cost_per_job() > 0
              and cheaper_per_job(dst.slot_cost_per_job(), src.slot_cost_per_job())):
            # Running capacity there serves a typical job for clearly less: `either` work queued here may move.
            reason = (f"{destination} running capacity ${dst.slot_cost_per_job():.5f}/job against "
                      f"{source} ${src.slot_cost_per_job():.5f}/job")
        else:
            continue
        count = min(budget, src.visible)
        requests.append(SampleRequest(pool=source, count=count, reason=reason))
        budget -= count
    for pool in FAILOVER_POOLS:
        load = loads.get(pool)
        if (budget <= 0 or load is None or load.visible == 0 or not load.health.short
                or observation.override(pool).frozen or any(r.pool == pool for r in requests)):
            continue
        target, why = _failover_region(observation, settings)
        if target is not None:
            count = min(budget, load.visible)
            requests.append(SampleRequest(pool=pool, count=count, reason=f"{pool} short; {why}"))
            budget -= count
    return tuple(requests)


def cheaper_per_job(challenger: float, incumbent: float) -> bool:
    return cheaper(_priced(challenger), _priced(incumbent))


def _priced(usd: float) -> MarginalCost:
    return MarginalCost("", usd, 0.0, "")


def choose_moves(observation: Observation, specs: Mapping[str, PoolSpec], settings: PolicySettings,
                 candidates: Sequence[QueuedJob]) -> tuple[Move, ...]:
    """Move `either` jobs to the pool where serving them on time costs least (`core/marginal_cost.py`).

    A job moves when the other pool serves it before its deadline for clearly less than where it is: it would
    miss here and meets its deadline there (infinite cost here), or there are idle slots there (already paid for:
    nothing more) while it waits here, or running capacity there is cheaper per job (an `eval` job queued on
    Graviton while the GPUs have room). Prices are the pools' current effective prices; the job's model size
    scales its times. A job that misses everywhere stays where it is. Placement is never violated, and a job
    moved `max_moves_per_job` times stays put. Each move's detail names both pools' marginal costs.
    """
    loads = _loads(observation, specs)
    moves: list[Move] = []
    ordered = sorted(candidates, key=lambda c: (-c.job.priority, c.job.deadline_at()))
    failover: tuple[str | None, str] | None = None
    for candidate in ordered[: settings.move_budget]:
        job, source = candidate.job, candidate.pool
        destination = "cpu" if source == "gpu" else "gpu"
        if job.moves >= settings.max_moves_per_job:
            continue
        moved = None
        if (job.placement == "either" and job.may_run_on(destination) and job.may_run_on(source)
                and _movable(observation, source, destination) and source in loads and destination in loads):
            moved = _within_region(job, source, destination, loads, observation.now, settings)
        if moved is None:
            target_pool = _failover_pool(job, source, loads, observation.now)
            if target_pool is not None:
                if failover is None:  # one ranking per cycle: every forwarded job goes to the same region
                    failover = _failover_region(observation, settings)
                moved = _across_regions(job, source, target_pool, loads[target_pool], failover, observation)
        if moved is not None:
            moves.append(moved)
            loads[source].visible -= 1
            if moved.destination_region is None:
                loads[destination].visible += 1
                loads[destination].extra_seconds += (job_seconds(loads[destination].spec.profile, job)
                                                     - loads[destination].spec.mean_job_seconds)
                loads[destination].idle_slots = max(0, loads[destination].idle_slots - 1)
    return tuple(moves)


def _failover_pool(job: Job, source: str, loads: dict[str, _PoolLoad], now: float) -> str | None:
    """Which pool of another region this job should go to, if any: the GPU pool, when it is short here and the
    job either waits in its queue or sits on the CPU queue without a chance of meeting its deadline there."""
    for pool in FAILOVER_POOLS:
        load = loads.get(pool)
        if load is None or not load.health.short or not job.may_run_on(pool):
            continue
        if source == pool:
            return pool
        here = loads.get(source)
        if here is not None and here.eta_seconds() + here.spec.profile.job_seconds(job) > job.deadline_at() - now:
            return pool
    return None


def _across_regions(job: Job, source: str, destination: str, load: _PoolLoad, failover: tuple[str | None, str],
                    observation: Observation) -> Move | None:
    """A job goes to `destination` in the healthiest other configured region, unless pinned or frozen."""
    target, why = failover
    if (target is None or job.region is not None or observation.override(source).frozen
            or observation.override(destination).frozen):
        return None
    return Move(job_id=job.id, source=source, destination=destination, reason="failover", destination_region=target,
                detail=f"{observation.region} {destination} short ({load.health.reason}); {why}")


def _within_region(job: Job, source: str, destination: str, loads: dict[str, _PoolLoad], now: float,
                   settings: PolicySettings) -> Move | None:
    """Within the region: the other pool when serving the job on time costs clearly less there."""
    step, fill = settings.max_scale_up_step, fill_share(settings)
    views = {source: loads[source].view(step, fill), destination: loads[destination].view(step, fill)}
    best, costs = cheapest(job, views, now, incumbent=source)
    if best != destination:
        return None
    here, there = costs[source], costs[destination]
    if not here.on_time:
        code = "deadline"
    elif there.usd == 0.0:
        code = "idle_capacity"
    else:
        code = "cheaper"
    return Move(job_id=job.id, source=source, destination=destination, reason=code,
                detail=f"{describe_costs(costs)}; deadline in {job.deadline_at() - now:.0f}s")


def size_pool(spec: PoolSpec, telemetry: PoolTelemetry | None, observation: Observation, memory: PoolMemory,
              settings: PolicySettings, backlog_delta: int = 0) -> tuple[PoolDecision, PoolMemory]:
    """Desired capacity for one pool, with the reason."""
    name = spec.name
    if telemetry is None or telemetry.missing():
        missing = ", ".join(telemetry.missing()) if telemetry else "everything"
        current = telemetry.desired if telemetry else None
        return (PoolDecision(name, current, current, None, f"hold: telemetry unknown ({missing})", held=True),
                memory)
    assert telemetry.desired is not None and telemetry.visible is not None and telemetry.in_flight is not None
    current = telemetry.desired
    low, high = spec.min_size, spec.max_size
    base = clamp(current, low, high)
    override = observation.override(name)
    if override.frozen:
        note = f": {override.note}" if override.note else ""
        return (PoolDecision(name, current, base, None, f"frozen by operator{note}", held=True),
                PoolMemory(peaks=memory.peaks))

    health = observation.health_of(name)
    if health.short and override.pinned_desired is None:
        # Launching into a pool that just said no only burns API calls and delays the failover; scaling in its
        # running instances during the failover would make the shortage worse (failure case 21).
        have = (telemetry.in_service or 0) + (telemetry.pending or 0)
        hold = clamp(min(base, have), low, high)
        return (PoolDecision(name, current, hold, None,
                             f"capacity short: hold at {hold} ({have} in service or pending): {health.reason}"),
                memory)

    if override.pinned_desired is None:  # a pin is the operator's instruction: the guard leaves it alone
        guarded = runaway_guard(spec, telemetry, observation.now, base, memory, settings)
        if guarded is not None:
            return guarded

    streams = spec.profile.streams
    in_flight = telemetry.in_flight  # known here (asserted above); a local keeps that known inside the closure

    def instances_for(visible: int) -> int:
        # Slots to drain the visible queue within the target wait, never fewer instances than the running jobs
        # occupy. Room for arrivals comes from the forecast floor below, not from an occupancy margin: measured on
        # every shipped scenario, an occupancy margin (`target_utilization` > 0) cost 20-26% more for no SLO
        # once the floor holds capacity for the next burst (docs/simulator.md).
        occupancy = in_flight / settings.target_utilization if settings.target_utilization > 0 else 0.0
        drain = visible * spec.mean_job_seconds / settings.target_wait_seconds
        return max(math.ceil((occupancy + drain) / streams - 1e-9), math.ceil(in_flight / streams))

    # Jobs moved in this cycle were chosen because this pool's current slots meet their deadlines: they may
    # hold off a scale-in but do not call for a scale-up. Jobs moved out no longer need this pool at all.
    visible_after = max(0, telemetry.visible + backlog_delta)
    visible_for_growth = min(visible_after, telemetry.visible)
    # The real-time endpoint's share of requests needs its own instances beside the queued work's.
    serving = observation.serving_instances.get(name, 0)
    needed = instances_for(visible_for_growth) + serving
    needed_to_keep = instances_for(visible_after) + serving
    why = (f"{telemetry.in_flight} running + {visible_after} queued need {needed_to_keep - serving} instance(s) "
           f"({streams} streams, {spec.mean_job_seconds:.1f}s/job, drain within {settings.target_wait_seconds:.0f}s)")
    if serving:
        why += f" + {serving} for the real-time endpoint"
    # Warm start: the pool keeps what its recent peak needed, ahead of the next burst (see `forecast`). The
    # envelope records the want before the floor, so the floor never feeds itself.
    # The envelope holds the queued work's want only: the endpoint's share already comes from the serving split's
    # own recent-peak envelope of request rates (core/serving.py), and recording it here as well would hold the
    # same burst twice.
    burst = burst_want(spec, telemetry, settings) if name in FAILOVER_POOLS else 0
    peaks = forecast.record(memory.peaks, observation.now, max(needed, needed_to_keep, burst + serving) - serving,
                            settings.forecast_window_seconds)
    forecast_settings = forecast.ForecastSettings(settings.forecast_window_seconds, settings.forecast_share)
    warm = forecast.floor(peaks, observation.now, forecast_settings, high)
    for_peers, peer_notes = (forecast.failover_floor(observation.peers, observation.region,
                                                     observation.configured_regions, observation.now,
                                                     settings.stale_peer_seconds, settings.forecast_share)
                             if name in FAILOVER_POOLS else (0, ""))
    if max(warm, for_peers) > 0 and warm + for_peers + serving > max(needed, needed_to_keep):
        warm = min(high, warm + for_peers + serving)
        recent = forecast.peak(peaks, observation.now, settings.forecast_window_seconds)
        why += (f"; forecast: recent peak want {recent} (decaying over "
                f"{settings.forecast_window_seconds / 60:.0f} min)" + (f" + {peer_notes}" if peer_notes else "")
                + (f" + {serving} for the endpoint" if serving else "") + f", floor {warm}")
        needed = needed_to_keep = warm
    age = telemetry.oldest_age_seconds
    if (age is not None and age > settings.target_wait_seconds and telemetry.visible > 0
            and (telemetry.pending or 0) == 0 and needed <= base):
        needed = base + 1
        why = f"oldest job waited {age:.0f}s > target {settings.target_wait_seconds:.0f}s with nothing pending"

    if override.pinned_desired is not None:
        wanted = keep = clamp(override.pinned_desired, low, high)
        why = f"pinned at {override.pinned_desired} by operator" + (f": {override.note}" if override.note else "")
    else:
        wanted = clamp(needed, low, high)
        keep = clamp(max(needed, needed_to_keep), low, high)

    if wanted > base:
        # Capacity that is coming back is probed one instance at a time, then regained by its admit share.
        # Steps proportional to the gap: a burst that needs 30 more instances gets them in one cycle, not in three
        # fixed steps of 10 while its jobs' deadlines pass (the runaway guard bounds launches that never serve).
        gap = wanted - base
        step = max(min(gap, settings.max_scale_up_step), math.ceil(settings.scale_up_gain * gap - 1e-9))
        limit = 1 if health.probing else max(1, math.floor(step * health.admit))
        desired = min(wanted, base + limit)
        note = " (step-limited)" if desired < wanted else ""
        if health.probing or health.admit < 1.0:
            note += f" ({health.reason})"
        return (PoolDecision(name, current, desired, wanted, f"scale up to {desired}{note}: {why}"),
                PoolMemory(peaks=peaks))
    wanted = keep
    if wanted < base:
        # The pin is an instruction, not a measurement: it does not wait out the scale-in delay.
        low_since = memory.low_since if memory.low_since is not None else observation.now
        waited = observation.now - low_since
        if override.pinned_desired is not None or waited >= settings.scale_in_delay_seconds:
            desired = max(wanted, base - settings.max_scale_in_step)
            return (PoolDecision(name, current, desired, wanted,
                                 f"scale in to {desired} after {waited:.0f}s below: {why}"),
                    PoolMemory(low_since=low_since, peaks=peaks))
        return (PoolDecision(name, current, base, wanted,
                             f"hold at {base}: scale-in waits {settings.scale_in_delay_seconds - waited:.0f}s more; "
                             f"{why}"),
                PoolMemory(low_since=low_since, peaks=peaks))
    reason = f"steady at {base}: {why}" if base == current else f"clamped {current} to [{low}, {high}]"
    return PoolDecision(name, current, base, wanted, reason), PoolMemory(peaks=peaks)


def burst_want(spec: PoolSpec, telemetry: PoolTelemetry, settings: PolicySettings) -> int:
    """Instances that work through the busiest recent minute's jobs within `forecast_burst_seconds`, as if they had
    arrived at once (in the trace they arrive within seconds). Fed to the forecast, not to this cycle's want: the
    burst it measures has already been served or queued; the next one is what the floor is for.

    GPU pools only: a GPU boots in about two minutes, longer than the deadline of the jobs in a burst, so only
    instances already running can serve it; Graviton boots in about half a minute and its queue mixes agent steps
    of seconds with inference of tens of seconds, which a count of messages cannot tell apart."""
    sent = telemetry.sent_recently
    if not sent or settings.forecast_burst_seconds <= 0:
        return 0
    return math.ceil(sent * spec.mean_job_seconds / settings.forecast_burst_seconds / spec.profile.streams - 1e-9)


def runaway_guard(spec: PoolSpec, telemetry: PoolTelemetry, now: float, base: int, memory: PoolMemory,
                  settings: PolicySettings) -> tuple[PoolDecision, PoolMemory] | None:
    """Failure case 18: instances launch but never become usable (a bad AMI, a driver that does not load, user
    data that fails). The group replaces each one as it fails its health check, for as long as desired capacity
    asks for it. The guard trips when the group launched `max_launches_per_window` instances recently while fewer
    than asked for are in service or pending: desired capacity drops to what is usable (nothing left to launch,
    nothing running is removed), and the pool holds there for `runaway_hold_seconds`. Launches that become
    usable never trip it, however many: a legitimate burst is in service or pending."""
    usable = (telemetry.in_service or 0) + (telemetry.pending or 0)
    launched = telemetry.launches or 0
    name, current = spec.name, telemetry.desired
    asked = current if current is not None else base  # what the group was asked for (before any clamp)
    if launched >= settings.max_launches_per_window and usable < asked:
        hold = clamp(usable, spec.min_size, spec.max_size)
        return (PoolDecision(name, current, hold, None,
                             f"runaway guard: {launched} launches recently and only {usable} of {asked} in service "
                             f"or pending: instances are not becoming usable; holding at {hold} for "
                             f"{settings.runaway_hold_seconds:.0f}s", held=True, runaway=True),
                PoolMemory(low_since=memory.low_since, runaway_until=now + settings.runaway_hold_seconds,
                           peaks=memory.peaks))
    if memory.runaway_until is not None and now < memory.runaway_until:
        return (PoolDecision(name, current, base, None,
                             f"runaway guard: holding at {base} for {memory.runaway_until - now:.0f}s more",
                             held=True, runaway=True), memory)
    return None


def decide(observation: Observation, specs: Mapping[str, PoolSpec], settings: PolicySettings,
           memory: ControllerMemory, candidates: Sequence[QueuedJob] = ()) -> Decision:
    moves = choose_moves(observation, specs, settings, candidates)
    delta = {name: 0 for name in specs}
    for move in moves:
        delta[move.source] -= 1
        delta[move.destination] += 1
    pools = {}
    new_memory = {}
    for name, spec in specs.items():
        pools[name], new_memory[name] = size_pool(spec, observation.pools.get(name), observation,
                                                  memory.of(name), settings, delta[name])
    notes = tuple(f"{name}: {d.reason}" for name, d in pools.items() if d.held)
    return Decision(pools=pools, moves=moves, memory=ControllerMemory(pools=new_memory), notes=notes,
                    markets=choose_markets(observation, specs))


# Spot back from On-Demand only once it costs at most this share of On-Demand again: a price that hovers at
# On-Demand's must not flip the group's market every cycle.
SPOT_RETURN_SHARE = 0.9


def choose_markets(observation: Observation, specs: Mapping[str, PoolSpec]) -> dict[str, MarketDecision]:
    """Spot -> On-Demand while a pool's Spot breaker is not closed, or while Spot costs as much as On-Demand (it
    saves nothing and can still be interrupted); back to the configured share once both are over (by price, only
    once Spot is below `SPOT_RETURN_SHARE` of On-Demand)."""
    markets = {}
    for name, spec in specs.items():
        if spec.on_demand_percentage >= 100:
            continue  # no Spot configured: nothing to fall back from
        current = observation.on_demand_percentage.get(name)
        health = observation.health_of(name)
        spot = observation.spot_prices.get(name)
        on_demand = (spec.on_demand_price_per_hour if spec.on_demand_price_per_hour is not None
                     else spec.profile.on_demand_per_hour)
        on_price = current == 100  # running On-Demand now, whatever made it
        dear = spot is not None and on_demand > 0 and (
            spot >= on_demand or (on_price and spot > SPOT_RETURN_SHARE * on_demand))
        if observation.override(name).frozen:
            markets[name] = MarketDecision(name, current, current if current is not None else
                                           spec.on_demand_percentage, "frozen by operator")
        elif health.spot_short:
            markets[name] = MarketDecision(name, current, 100, f"Spot short, On-Demand until it recovers: "
                                                                f"{health.reason}")
        elif dear:
            assert spot is not None
            markets[name] = MarketDecision(name, current, 100, f"Spot ${spot:.3f}/h against On-Demand "
                                                                f"${on_demand:.3f}/h: On-Demand until Spot is below "
                                                                f"{SPOT_RETURN_SHARE:.0%} of it")
        else:
            price = f" (Spot ${spot:.3f}/h, On-Demand ${on_demand:.3f}/h)" if spot is not None else ""
            markets[name] = MarketDecision(name, current, spec.on_demand_percentage,
                                           f"Spot healthy: configured {spec.on_demand_percentage}% On-Demand{price}")
    return markets
