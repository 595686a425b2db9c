"""What serving one more job on a pool costs, given what is already running there: placement by marginal cost.

Pure (stdlib only). The router (first placement of an `either` job) and the rebalancer (moving one) both ask
`marginal_cost` for each pool the job may run on and send it where serving it on time costs least:

- a free slot on an instance already in service costs nothing more: the instance is billed whether or not it works;
- a slot on running (or already booting) capacity that reaches the job before its deadline costs the job's share
  of the instance's time (its seconds / the instance's streams, at the pool's current price);
- a pool with nothing running that may grow: a new instance, its boot plus the job, at least EC2's 60 s minimum
  billing [A: Amazon EC2 On-Demand pricing, per-second billing with a one-minute minimum], at the pool's price,
  shared by the queued jobs it would take (a new instance launched for a burst serves the burst, not one job);
- a pool already running costs its queue on its running capacity, whether or not it may grow: a job that would
  miss its deadline there costs infinity. (Counting the instances a busy pool might add let the router promise
  burst work to Graviton instances the sizer then had to launch: on `steady` that cost 56% more for a lower SLO.)

A job that would miss its deadline anywhere costs infinity everywhere; callers then leave it where it is.

Prices: a pool's current effective $/hour is its On-Demand share x the On-Demand price + its Spot share x the
Spot price, from the deployment's config (defaults: the pinned price table in data/instance_profiles.json), or
the current price the caller observed (the simulator's prices over time).

Model size: service rates in the profiles are for the reference model (`REFERENCE_MODEL_PARAMS_BILLION`). A job
naming a bigger or smaller model scales its token-driven seconds linearly with the parameter count [E: decode is
memory-bandwidth bound (every output token reads all weights once) and prefill is compute bound (about 2 FLOPs
per parameter per prompt token), so both scale roughly linearly with parameters at a fixed precision; this
ignores that a model may not fit one device at all and that a larger model changes the batch size; replace with
measured per-model profiles]. Explicit cpu_seconds / gpu_seconds are the producer's own figure and are not
scaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from crossfleet_control.core.jobs import Job
from crossfleet_control.core.policy_types import Observation, PoolSpec
from crossfleet_control.core.service_model import InstanceProfile

# The profiles' reference workload: Llama-3.1-8B-class (data/instance_profiles.json, "about").
REFERENCE_MODEL_PARAMS_BILLION = 8.0
# EC2 bills Linux instances per second with a 60 s minimum [A: Amazon EC2 On-Demand pricing].
MIN_BILLED_SECONDS = 60.0
# A move or a non-preferred placement must save at least this share of the cost where the job is: stops jobs
# bouncing between pools whose costs are within the estimates' noise.
SWITCH_MARGIN = 0.2


def model_scale(job: Job) -> float:
    """How much longer (or shorter) than the reference model this job's model takes per token (an estimate)."""
    if job.model_params_billion is None:
        return 1.0
    return job.model_params_billion / REFERENCE_MODEL_PARAMS_BILLION


def job_seconds(profile: InstanceProfile, job: Job) -> float:
    """The job's seconds on one stream of this profile at full concurrency, scaled by its model's size."""
    explicit = job.gpu_seconds if profile.is_accelerated else job.cpu_seconds
    if explicit is not None:
        return explicit
    return profile.job_seconds(job) * model_scale(job)


def blended_price_per_hour(on_demand: float, spot: float, on_demand_percentage: float) -> float:
    """$/hour of one instance of a pool running `on_demand_percentage` % On-Demand and the rest Spot."""
    share = min(100.0, max(0.0, on_demand_percentage)) / 100.0
    return on_demand * share + spot * (1.0 - share)


@dataclass(frozen=True)
class PoolView:
    """What placement needs to know about one pool now."""

    name: str
    profile: InstanceProfile
    in_service: int  # instances serving
    pending: int  # instances booting (already billed: they will serve)
    in_flight: int  # jobs running
    visible: int  # jobs queued ahead of this one
    mean_job_seconds: float  # the pool's typical job, for the queue ahead
    price_per_hour: float  # current effective $/hour of one instance
    # Instances the pool may still add now: below its max, at most a scale-up step, none while launches fail or
    # capacity is short. Work placed here beyond running capacity shares these.
    growth_instances: int
    extra_seconds: float = 0.0  # queued work beyond `visible` x mean (jobs moved in this cycle)
    # Share of the slots the sizer means to fill (its target utilization): the rest is headroom it keeps for
    # arrivals, paid for by keeping it empty. Filling it only makes the sizer add instances, so only slots
    # below this share count as free.
    fill_share: float = 1.0

    @property
    def slots(self) -> int:
        return self.in_service * self.profile.streams

    @property
    def free_slots(self) -> int:
        return max(0, math.floor(self.slots * min(1.0, self.fill_share) + 1e-9) - self.in_flight - self.visible)


@dataclass(frozen=True)
class MarginalCost:
    pool: str
    usd: float  # math.inf: cannot serve this job on time here
    finish_seconds: float  # from now until the job would finish here (estimate)
    basis: str  # which case priced it, for the decision log

    @property
    def on_time(self) -> bool:
        return math.isfinite(self.usd)

    def describe(self) -> str:
        cost = f"${self.usd:.5f}" if self.on_time else "inf"
        finish = f"{self.finish_seconds:.0f}s" if math.isfinite(self.finish_seconds) else "never"
        return f"{self.pool} {cost} ({self.basis}, finish {finish})"


def share_usd(job: Job, view: PoolView) -> float:
    """The job's share of a running instance here: its seconds on one of the instance's streams, at the price."""
    return view.price_per_hour / 3600.0 * job_seconds(view.profile, job) / view.profile.streams


def _work_ahead(view: PoolView, slots: int) -> float:
    """Slot-seconds of queued work ahead of a job queued now (this job's own slot included, as a typical job)."""
    free = slots - view.in_flight
    if view.visible < free:
        return 0.0
    return (view.visible - max(free, 0) + 1) * view.mean_job_seconds + max(0.0, view.extra_seconds)


def _queue_wait(view: PoolView, slots: int) -> float:
    """Seconds until a job queued now starts on `slots` streams, behind the running and queued work."""
    ahead = _work_ahead(view, slots)
    if ahead == 0.0:
        return 0.0
    return ahead / slots if slots > 0 else math.inf


def marginal_cost(job: Job, view: PoolView, now: float) -> MarginalCost:
    """What serving `job` on this pool adds to the bill, given what runs there now; infinity if it would miss."""
    if not job.may_run_on(view.name):
        return MarginalCost(view.name, math.inf, math.inf, f"placement {job.placement}")
    seconds = job_seconds(view.profile, job)
    remaining = job.deadline_at() - now
    per_second = view.price_per_hour / 3600.0
    share = share_usd(job, view)
    candidates: list[MarginalCost] = []
    if view.in_service > 0 and view.free_slots > 0:
        candidates.append(MarginalCost(view.name, 0.0, seconds, "idle paid slot"))
    elif view.in_service + view.pending > 0:
        # Running capacity first; booting instances join after their boot (they are billed already).
        wait = _queue_wait(view, view.slots)
        if view.pending:
            booting = view.profile.boot_seconds + _queue_wait(view, (view.in_service + view.pending)
                                                              * view.profile.streams)
            wait = min(wait, booting)
        candidates.append(MarginalCost(view.name, share, wait + seconds, "queue on running capacity"))
    if view.growth_instances > 0 and view.in_service + view.pending == 0:
        # A pool with nothing running: this job pays for a new instance. (A pool already running is grown by the
        # sizer from its queue; work placed there waits in that queue, priced above.)
        boot = view.profile.boot_seconds
        billed = max(MIN_BILLED_SECONDS, boot + seconds)
        # The jobs queued beyond the running slots would share the new instance, up to its streams.
        waiting = max(0, view.visible - max(0, view.slots - view.in_flight))
        sharers = max(1, min(view.profile.streams, waiting + 1))
        # While the new instances boot, running slots work through the queue; what is left then is shared by
        # running and new slots: work placed beyond what the pool can add in time makes this late too.
        running = (view.in_service + view.pending) * view.profile.streams
        grown = running + view.growth_instances * view.profile.streams
        ahead = max(0.0, _work_ahead(view, running) - view.mean_job_seconds)  # without this job's own
        left = max(0.0, ahead - running * boot)
        finish = boot + left / grown + seconds
        candidates.append(MarginalCost(view.name, per_second * billed / sharers, finish,
                                       f"new instance (boot {boot:.0f}s, {billed:.0f}s billed / {sharers} jobs)"))
    on_time = [c for c in candidates if c.finish_seconds <= remaining]
    if on_time:
        return min(on_time, key=lambda c: (c.usd, c.finish_seconds))
    soonest = min((c.finish_seconds for c in candidates), default=math.inf)
    basis = "would miss its deadline" if candidates else "no capacity and cannot grow"
    return MarginalCost(view.name, math.inf, soonest, f"{basis} ({remaining:.0f}s left)")


def cheaper(challenger: MarginalCost, incumbent: MarginalCost) -> bool:
    """The challenger is worth switching to: on time where the incumbent is not, or clearly cheaper."""
    if not challenger.on_time:
        return False
    if not incumbent.on_time:
        return True
    return challenger.usd < incumbent.usd * (1.0 - SWITCH_MARGIN)


def cheapest(job: Job, views: dict[str, PoolView], now: float, incumbent: str) -> tuple[str, dict[str, MarginalCost]]:
    """The pool to serve `job` (the incumbent unless another is clearly cheaper on time) and every pool's cost."""
    costs = {name: marginal_cost(job, view, now) for name, view in views.items()}
    others = [cost for name, cost in costs.items() if name != incumbent]
    if incumbent not in costs or not others:
        return incumbent, costs
    best = min(others, key=lambda c: (c.usd, c.finish_seconds))
    return (best.pool if cheaper(best, costs[incumbent]) else incumbent), costs


def describe_costs(costs: dict[str, MarginalCost]) -> str:
    return "marginal cost: " + "; ".join(c.describe() for c in costs.values())


def pool_price_per_hour(spec: PoolSpec, observation: Observation) -> float:
    """A pool's current effective $/hour per instance: observed (the simulator's prices over time), else the
    configured (or price-table) On-Demand and Spot prices at the On-Demand share the group runs with now."""
    observed = observation.prices.get(spec.name)
    if observed is not None:
        return observed
    on_demand = (spec.on_demand_price_per_hour if spec.on_demand_price_per_hour is not None
                 else spec.profile.on_demand_per_hour)
    spot = observation.spot_prices.get(spec.name)
    if spot is None:
        spot = spec.spot_price_per_hour if spec.spot_price_per_hour is not None else spec.profile.spot_per_hour
    running = observation.on_demand_percentage.get(spec.name)
    return blended_price_per_hour(on_demand, spot, running if running is not None else spec.on_demand_percentage)
