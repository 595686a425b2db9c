"""Offline lower bounds on cost, with perfect knowledge of every arrival: a fluid LP and a clairvoyant MILP.

Both cut time into slots (30 s: half a control period, so every policy's launches fall on slot boundaries) and
pool work across regions (crossfleet forwards GPU work to another region; letting every job run anywhere only
loosens the bound). A job needs at least its prompt at the instance's prefill rate plus its output at the
instance's full-batch decode rate, in instance-seconds (explicit-seconds jobs: their seconds over the streams):
under continuous batching no schedule can serve it with less (tests/test_bench_fairness.py checks the engine).

- `fluid_bound`: fractional instances, no boot time, no minimum billing, deadlines ignored (each job served any
  time after its arrival slot until the end). Fast and loose; no policy that finishes its jobs can cost less.
- `integer_bound`: integer instances per slot per region and pool; an instance launched in a slot serves only
  after its boot time (floor(boot / slot) slots) and is billed from launch; EC2's 60 s minimum billing (Linux
  per-second billing) keeps a launched instance alive into the next slot; an instance may stop part-way through
  a slot (a drain ending) and then bills and serves only that fraction; min/max sizes and capacity events hold.
  Each job is served within its exact deadline window (from its arrival slot to the slot holding its deadline)
  unless it is one of at most `miss_budget` late jobs, which must still be served by the end. Solved by HiGHS
  (scipy.optimize.milp) under a time limit; the reported figure is HiGHS's proven dual bound, never the
  incumbent, with the remaining gap.

What "proven" covers: a policy's run maps onto a feasible point of the MILP when its launches happen on slot
boundaries (every controller acts on 60 s periods), its instances cancelled while booting are left out (they
cost money and serve nothing, so leaving them out only lowers the cost), it finishes every job by the end, and
it is late on at most `miss_budget` jobs. Slot-level service within a job's window is a relaxation (work may be
served in the arrival slot before the job arrives), as is pooling regions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix

from crossfleet.config.offerings import offerings
from crossfleet.sim.scenario import Scenario
from crossfleet.sim.workload import Arrival
from crossfleet_control.core.service_model import InstanceProfile
from crossfleet_control.core.settings import pool_spec

POOLS = ("cpu", "gpu")
SLOT_SECONDS = 30.0
MIN_BILLED_SECONDS = 60.0  # EC2 Linux per-second billing, 60 s minimum [A: Amazon EC2 pricing, "Per Second Billing"]


@dataclass(frozen=True)
class IntegerBound:
    dual_usd: float | None  # proven: no schedule in the model costs less
    incumbent_usd: float | None  # the best schedule found (not a bound; reported for the gap only)
    gap: float | None  # (incumbent - dual) / incumbent
    status: str


def _work(profile: InstanceProfile, arrival: Arrival) -> float:
    job = arrival.job
    explicit = job.gpu_seconds if profile.is_accelerated else job.cpu_seconds
    if explicit is not None:
        return explicit / profile.streams
    return job.input_tokens / profile.prefill_tokens_per_second + job.output_tokens / profile.decode_tokens_per_second


class _Model:
    """Variables and sparse rows, added by name."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[list[int], list[float], float, float]] = []

    def var(self, cost: float, low: float, high: float, integer: bool = False) -> int:
        self.cost.append(cost)
        self.lower.append(low)
        self.upper.append(high)
        self.integer.append(int(integer))
        return len(self.cost) - 1

    def row(self, cols: list[int], vals: list[float], low: float, high: float) -> None:
        self.rows.append((cols, vals, low, high))

    def matrix(self) -> tuple[object, np.ndarray, np.ndarray]:
        r, c, v = [], [], []
        for i, (cols, vals, _, _) in enumerate(self.rows):
            r += [i] * len(cols)
            c += cols
            v += vals
        a = coo_matrix((v, (r, c)), shape=(len(self.rows), len(self.cost))).tocsr()
        return a, np.array([row[2] for row in self.rows]), np.array([row[3] for row in self.rows])


def _pool_data(scenario: Scenario, slots: int, slot: float) -> dict[tuple[str, str], dict]:
    table = offerings()
    data = {}
    for region, pools in scenario.regions.items():
        for pool in POOLS:
            config = pools[pool]
            info = table[config.instance_type]
            profile = pool_spec(pool, config.instance_type, vcpus=info.vcpus, accelerators=info.accelerator_count,
                                min_size=config.min_size, max_size=config.max_size).profile
            blended = profile.on_demand_per_hour * (1 - config.spot_fraction) + profile.spot_per_hour * \
                config.spot_fraction
            price = np.full(slots, blended * slot / 3600)
            maximum = np.full(slots, float(config.max_size))
            launch_cap = np.full(slots, np.inf)
            for event in scenario.events:
                if event.region != region or event.pool != pool:
                    continue
                first, last = int(event.start // slot), min(slots, math.ceil(event.end / slot))
                if event.type == "capacity" and event.max_instances is not None:
                    if event.reclaim:
                        maximum[first:last] = np.minimum(maximum[first:last], event.max_instances)
                    else:  # running instances stay; no launch above the limit
                        launch_cap[first:last] = np.minimum(launch_cap[first:last], event.max_instances)
                elif event.type == "price":
                    price[first:last] *= event.factor
            data[(region, pool)] = {"profile": profile, "price": price, "max": maximum, "launch_cap": launch_cap,
                                    "min": float(config.min_size), "start": float(config.start)}
    return data


def _groups(scenario: Scenario, arrivals: list[Arrival], data: dict, slots: int, slot: float,
            deadlines: bool) -> dict[tuple[int, int, str], dict[str, float]]:
    """Jobs grouped by (arrival slot, last on-time slot, placement): count and least work per pool."""
    least = {pool: [d["profile"] for (r, p), d in data.items() if p == pool] for pool in POOLS}
    groups: dict[tuple[int, int, str], dict[str, float]] = defaultdict(lambda: {"cpu": 0.0, "gpu": 0.0, "jobs": 0})
    for arrival in arrivals:
        job = arrival.job
        first = min(slots - 1, int(arrival.at // slot))
        last = min(slots - 1, math.ceil((arrival.at + job.deadline_seconds) / slot) - 1) if deadlines \
            else slots - 1
        group = groups[(first, max(first, last), job.placement)]
        group["jobs"] += 1
        for pool in job.allowed_pools():
            group[pool] += min(_work(profile, arrival) for profile in least[pool])
    return groups


def fluid_bound(scenario: Scenario, arrivals: list[Arrival], slot: float = SLOT_SECONDS) -> float:
    """No policy that finishes its jobs can cost less (fractional instances, no boot, deadlines ignored)."""
    slots = math.ceil(scenario.horizon_seconds / slot)
    data = _pool_data(scenario, slots, slot)
    model = _Model()
    alive = {(r, p, s): model.var(d["price"][s], min(d["min"], d["max"][s]), d["max"][s])
             for (r, p), d in data.items() for s in range(slots)}
    capacity: dict[tuple[str, int], tuple[list[int], list[float]]] = {
        (p, s): ([alive[(r, p, s)] for r in scenario.regions], [-slot] * len(scenario.regions))
        for p in POOLS for s in range(slots)}
    for (first, _, placement), group in _groups(scenario, arrivals, data, slots, slot, deadlines=False).items():
        cols = []
        for pool in POOLS:
            if group[pool] <= 0 or not (placement == "either" or placement.startswith(pool)):
                continue
            for s in range(first, slots):
                v = model.var(0.0, 0.0, 1.0)
                cols.append(v)
                capacity[(pool, s)][0].append(v)
                capacity[(pool, s)][1].append(group[pool])
        model.row(cols, [1.0] * len(cols), 1.0, 1.0)
    for cols, vals in capacity.values():
        model.row(cols, vals, -np.inf, 0.0)
    a, low, high = model.matrix()
    eq = low == high
    result = linprog(np.array(model.cost), A_ub=a[~eq], b_ub=high[~eq], A_eq=a[eq], b_eq=high[eq],
                     bounds=list(zip(model.lower, model.upper, strict=True)), method="highs")
    if result.status != 0:
        raise RuntimeError(f"fluid lower-bound LP did not solve: {result.message}")
    return float(result.fun)


def integer_bound(scenario: Scenario, arrivals: list[Arrival], *, miss_budget: int = 0,
                  time_limit_seconds: float = 20.0, slot: float = SLOT_SECONDS) -> IntegerBound:
    """The least cost of any schedule (in the model above) late on at most `miss_budget` jobs."""
    slots = math.ceil(scenario.horizon_seconds / slot)
    data = _pool_data(scenario, slots, slot)
    model = _Model()
    min_billed = math.ceil(MIN_BILLED_SECONDS / slot)
    serving: dict[tuple[str, int], tuple[list[int], list[float]]] = {(p, s): ([], []) for p in POOLS
                                                                   for s in range(slots)}
    for (_region, pool), d in data.items():
        boot = int(d["profile"].boot_seconds // slot)
        alive = [model.var(d["price"][s], min(d["min"], d["max"][s]), d["max"][s], integer=True)
                 for s in range(slots)]
        launch = [model.var(0.0, 0.0, min(d["max"][s], d["launch_cap"][s]), integer=True) for s in range(slots)]
        # Fraction of an instance-slot not used by instances stopping part-way through slot s (a drain ending).
        stop = [model.var(-d["price"][s], 0.0, d["max"][s]) for s in range(slots)]
        for s in range(slots):
            # Launches cover every increase (the first slot starts from the warm instances).
            if s == 0:
                model.row([alive[0], launch[0]], [1.0, -1.0], -np.inf, d["start"])
            else:
                model.row([alive[s], alive[s - 1], launch[s]], [1.0, -1.0, -1.0], -np.inf, 0.0)
            # Minimum billing: an instance launched in the last `min_billed` slots is still alive.
            recent = launch[max(0, s - min_billed + 1): s + 1]
            model.row([alive[s], *recent], [1.0] + [-1.0] * len(recent), 0.0, np.inf)
            # Stopping part-way: only instances that are gone at the next slot (or serving ones) may.
            if s + 1 < slots:
                model.row([stop[s], alive[s], alive[s + 1], launch[s + 1]], [1.0, -1.0, 1.0, -1.0], -np.inf, 0.0)
            # Serving instances: alive, minus those launched within the boot time, minus the stopped fraction.
            booting = launch[max(0, s - boot + 1): s + 1] if boot > 0 else []
            cols, vals = serving[(pool, s)]
            cols += [alive[s], stop[s], *booting]
            vals += [-slot, slot] + [slot] * len(booting)
            model.row([stop[s], alive[s], *booting], [1.0, -1.0] + [1.0] * len(booting), -np.inf, 0.0)
            model.row([alive[s], stop[s]], [1.0, -1.0], min(d["min"], d["max"][s]), np.inf)  # min size holds
    groups = _groups(scenario, arrivals, data, slots, slot, deadlines=True)
    late_work: dict[tuple[int, str], list[int]] = {}
    budget_cols, budget_vals = [], []
    late_rows: dict[tuple[int, str], tuple[list[int], list[float]]] = {}
    for (first, last, placement), group in groups.items():
        cols = []
        for pool in POOLS:
            if group[pool] <= 0 or not (placement == "either" or placement.startswith(pool)):
                continue
            for s in range(first, last + 1):
                v = model.var(0.0, 0.0, 1.0)
                cols.append(v)
                serving[(pool, s)][0].append(v)
                serving[(pool, s)][1].append(group[pool])
            if miss_budget > 0:
                late = model.var(0.0, 0.0, 1.0)  # share of the group served late, on this pool
                cols.append(late)
                budget_cols.append(late)
                budget_vals.append(group["jobs"])
                key = (first, pool)
                if key not in late_work:
                    late_work[key] = [model.var(0.0, 0.0, np.inf) for _ in range(first, slots)]
                    for s, w in zip(range(first, slots), late_work[key], strict=True):
                        serving[(pool, s)][0].append(w)
                        serving[(pool, s)][1].append(1.0)
                    late_rows[key] = ([*late_work[key]], [-1.0] * len(late_work[key]))
                late_rows[key][0].append(late)
                late_rows[key][1].append(group[pool])
        model.row(cols, [1.0] * len(cols), 1.0, 1.0)
    for cols, vals in late_rows.values():
        model.row(cols, vals, 0.0, 0.0)
    if budget_cols:
        model.row(budget_cols, budget_vals, -np.inf, float(miss_budget))
    for cols, vals in serving.values():
        if cols:
            model.row(cols, vals, -np.inf, 0.0)
    a, low, high = model.matrix()
    result = milp(np.array(model.cost), constraints=[LinearConstraint(a, low, high)],
                  integrality=np.array(model.integer), bounds=Bounds(np.array(model.lower), np.array(model.upper)),
                  options={"time_limit": time_limit_seconds, "mip_rel_gap": 1e-3, "disp": False})
    dual = getattr(result, "mip_dual_bound", None)
    incumbent = float(result.fun) if result.x is not None else None
    if dual is None or not np.isfinite(dual):
        dual = incumbent if result.status == 0 else None
    gap = (incumbent - dual) / incumbent if incumbent and dual is not None else None
    return IntegerBound(dual_usd=None if dual is None else float(dual), incumbent_usd=incumbent, gap=gap,
                        status=str(result.message))


# The names the rest of the simulator used before the integer bound existed.
def lower_bound_cost(scenario: Scenario, arrivals: list[Arrival]) -> float:
    return fluid_bound(scenario, arrivals)
