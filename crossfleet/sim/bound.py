"""An offline lower bound on cost: a linear program with perfect knowledge of every arrival.

Per region, time is cut into control periods. The LP chooses how many instances (fractional, no boot time)
each pool has in each period, never fewer than its minimum nor more than its maximum or an active capacity
limit, and which period and pool serves each period's arrivals (by placement), any time from arrival to the end
of the run. A job needs its full-concurrency instance-seconds (job seconds / streams): the least any
schedule can spend on it under the service model. Deadlines are not constraints, so the bound holds for every
policy whatever its SLO attainment; `deadline_bound_cost` adds them, the cheaper target for a policy that keeps
its SLO. Moving work between regions is not allowed, as no policy here does it. With 60 s deadlines the first
bound provisions for the mean rate while any on-time policy must provision for the peaks: compare against both.
Solved with HiGHS through scipy.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from crossfleet.config.offerings import offerings
from crossfleet.sim.scenario import Scenario
from crossfleet.sim.workload import Arrival
from crossfleet_control.core.settings import pool_spec

POOLS = ("cpu", "gpu")


# Objective weight of serving one job after its deadline window in the deadline-aware bound: far above any
# instance cost, so the LP is late only where no schedule could be on time. Only instance cost is reported.
LATE_PENALTY_PER_JOB = 1000.0


def lower_bound_cost(scenario: Scenario, arrivals: list[Arrival]) -> float:
    """No policy can cost less (deadlines ignored, so it holds whatever a policy's SLO attainment)."""
    return sum(_region_bound(scenario, region, [a for a in arrivals if a.region == region], deadlines=False)
               for region in scenario.regions)


def deadline_bound_cost(scenario: Scenario, arrivals: list[Arrival]) -> float:
    """No policy that meets every deadline it could meet can cost less: each job is served within its arrival
    period plus ceil(deadline / period) periods, unless capacity makes that impossible for anyone."""
    return sum(_region_bound(scenario, region, [a for a in arrivals if a.region == region], deadlines=True)
               for region in scenario.regions)


def _region_bound(scenario: Scenario, region: str, arrivals: list[Arrival], *, deadlines: bool) -> float:
    period = scenario.control_period_seconds
    buckets = math.ceil(scenario.horizon_seconds / period)
    table = offerings()
    profiles, minimum, maximum, price = {}, {}, {}, {}
    for pool in POOLS:
        config = scenario.regions[region][pool]
        info = table[config.instance_type]
        spec = pool_spec(pool, config.instance_type, vcpus=info.vcpus, accelerators=info.accelerator_count,
                         min_size=config.min_size, max_size=config.max_size)
        profiles[pool] = spec.profile
        blended = (spec.profile.on_demand_per_hour * (1 - config.spot_fraction)
                   + spec.profile.spot_per_hour * config.spot_fraction)
        minimum[pool] = np.full(buckets, float(config.min_size))
        maximum[pool] = np.full(buckets, float(config.max_size))
        price[pool] = np.full(buckets, blended)
        for event in scenario.events:
            if event.region != region or event.pool != pool:
                continue
            first, last = int(event.start // period), min(buckets, math.ceil(event.end / period))
            if event.type == "capacity" and event.max_instances is not None:
                maximum[pool][first:last] = np.minimum(maximum[pool][first:last], event.max_instances)
            elif event.type == "price":
                price[pool][first:last] *= event.factor
        minimum[pool] = np.minimum(minimum[pool], maximum[pool])

    # Work of each (arrival period, placement, on-time window) group on each pool, in instance-seconds.
    groups: dict[tuple[int, str, int], dict[str, float]] = defaultdict(lambda: {"cpu": 0.0, "gpu": 0.0, "jobs": 0})
    for arrival in arrivals:
        job = arrival.job
        bucket = min(buckets - 1, int(arrival.at // period))
        window = math.ceil(job.deadline_seconds / period) if deadlines else buckets
        work = groups[(bucket, job.placement, window)]
        work["jobs"] += 1
        for pool in job.allowed_pools():
            work[pool] += profiles[pool].job_seconds(job) / profiles[pool].streams

    # Variables: n[pool, bucket] first, then y[group, pool, bucket >= arrival bucket].
    n_index = {(pool, b): i for i, (pool, b) in enumerate((p, b) for p in POOLS for b in range(buckets))}
    cost = [price[pool][b] * period / 3600 for pool, b in n_index]
    lower = [minimum[pool][b] for pool, b in n_index]
    upper = [maximum[pool][b] for pool, b in n_index]
    eq_rows, eq_cols, eq_vals, cap_rows, cap_cols, cap_vals = [], [], [], [], [], []
    variable = len(n_index)
    group_list = list(groups.items())
    for g, ((arrival_bucket, placement, window), work) in enumerate(group_list):
        pools = [p for p in POOLS if work[p] > 0 and (placement == "either" or p == placement[:3])]
        for pool in pools:
            for b in range(arrival_bucket, buckets):
                late = b > arrival_bucket + window
                eq_rows.append(g)
                eq_cols.append(variable)
                eq_vals.append(1.0)
                cap_rows.append(POOLS.index(pool) * buckets + b)
                cap_cols.append(variable)
                cap_vals.append(work[pool])
                cost.append(LATE_PENALTY_PER_JOB * work["jobs"] if late else 0.0)
                lower.append(0.0)
                upper.append(1.0)
                variable += 1
    for pool, b in n_index:  # capacity: work served in a bucket <= instances x period
        cap_rows.append(POOLS.index(pool) * buckets + b)
        cap_cols.append(n_index[(pool, b)])
        cap_vals.append(-period)
    if not group_list:
        return float(sum(c * lo for c, lo in zip(cost, lower, strict=True)))
    a_eq = coo_matrix((eq_vals, (eq_rows, eq_cols)), shape=(len(group_list), variable)).tocsr()
    a_ub = coo_matrix((cap_vals, (cap_rows, cap_cols)), shape=(len(POOLS) * buckets, variable)).tocsr()
    result = linprog(np.array(cost), A_ub=a_ub, b_ub=np.zeros(len(POOLS) * buckets), A_eq=a_eq,
                     b_eq=np.ones(len(group_list)), bounds=list(zip(lower, upper, strict=True)), method="highs")
    if result.status != 0:
        raise RuntimeError(f"lower-bound LP for {region} did not solve: {result.message}")
    # Report instance cost only (the late penalty is a device to prefer on-time service, not a cost).
    instances = result.x[: len(n_index)]
    return float(np.dot(np.array(cost[: len(n_index)]), instances))
