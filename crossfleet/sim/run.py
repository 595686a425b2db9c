"""Run policies over a scenario, compute the lower bounds, write result.json, bench.json and plots.

`bench` runs, on one workload: crossfleet; every baseline swept over its knob (its cost-versus-SLO frontier; the
point at the scenario's own setting is the baseline's row); crossfleet with each mechanism switched off
(ablations, through settings and deployment inputs, never by editing the policy); the fluid LP and the
clairvoyant MILP. Runs go to `workers` processes (the runs are independent and deterministic).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crossfleet.sim.bound import fluid_bound, integer_bound
from crossfleet.sim.controllers import POLICIES, make_controller
from crossfleet.sim.engine import Simulation
from crossfleet.sim.scenario import Scenario
from crossfleet.sim.serving_controllers import SERVING_POLICIES, make_serving_controller
from crossfleet.sim.stats import no_cyclic_gc, percentile
from crossfleet.sim.workload import Arrival, build_workload
from crossfleet_control.core.policy_types import PolicySettings

ENERGY_NOTE = ("estimate: instance-hours x per-instance power from data/instance_profiles.json (board powers "
               "cited where available, the rest labelled estimates); not a measurement")

# The knob each baseline's frontier sweeps: the acceptable latency of AWS's SQS backlog-per-instance formula
# (queue baselines), or the share of a target's request capacity (serving baselines).
WAIT_KNOBS = (5.0, 10.0, 20.0, 40.0, 80.0)
# Down to 5%: sized for TTFT on a bursty trace, GPU-only needs far more room than at 40% (on `realtime` its
# attainment is 0.26 at 40%, 0.60 at 10%, 0.71 at 5%): the frontier must reach crossfleet's attainment.
UTILIZATION_KNOBS = (0.05, 0.1, 0.2, 0.4, 0.55, 0.7, 0.85, 1.0)

# crossfleet with one mechanism off: (settings changes, controller switches). Settings are the deployment's own
# knobs; the switches are deployment inputs (a single-region config; breakers never told of failed launches).
ABLATIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "no-moves": ({"move_budget": 0}, {}),  # no moves between pools (nor failover of queued GPU work)
    "no-failover": ({}, {"failover": False}),  # each region alone: no cross-region placement or moves
    "no-moves-or-failover": ({"move_budget": 0}, {"failover": False}),  # every job stays where it was placed
    # No warm start: no forecast floor (nor the burst signal that feeds it).
    "no-warm-start": ({"forecast_share": 0.0, "forecast_burst_seconds": 0.0}, {}),
    # Fixed steps of max_scale_up_step instead of steps proportional to the gap.
    "fixed-steps": ({"scale_up_gain": 0.0}, {}),
    # The old sizing: slots for the running jobs at 85% utilization plus the queue's drain.
    "with-occupancy-sizing": ({"target_utilization": 0.85}, {}),
    # The router places every `either` job on its preferred pool (no placement by marginal cost at routing).
    "no-cost-placement": ({}, {"cost_placement": False}),
    # The Spot price is never read: the group stays on Spot however dear it gets (Spot shortages still count).
    "no-spot-price": ({}, {"spot_prices": False}),
    "no-capacity-health": ({}, {"capacity_health": False}),  # failed launches never open a breaker
    "no-gradual-scale-in": ({"scale_in_delay_seconds": 0.0, "max_scale_in_step": 10**6}, {}),
}


@dataclass(frozen=True)
class Variant:
    """One run of a bench: a policy, its knob, and crossfleet's ablation switches."""

    label: str
    policy: str
    knob: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    switches: dict[str, Any] = field(default_factory=dict)


def policy_kinds() -> str:
    """Every policy and the scenario kind it fits, on one line (for errors naming a wrong --policy)."""
    return (f"queue scenarios: {', '.join(POLICIES)}; real-time serving scenarios (with a `serving` section): "
            f"{', '.join(SERVING_POLICIES)}")


def simulate(scenario: Scenario, policy_name: str, *, arrivals: list[Arrival] | None = None,
             progress: bool = False, variant: Variant | None = None) -> tuple[dict[str, Any], Simulation]:
    arrivals = build_workload(scenario) if arrivals is None else arrivals
    variant = variant or Variant(policy_name, policy_name)
    settings = replace(PolicySettings(**scenario.rebalancer.policy_fields()), **variant.settings)
    serving = scenario.serving
    if policy_name not in POLICIES + SERVING_POLICIES:
        raise ValueError(f"unknown policy {policy_name!r}; {policy_kinds()}")
    if serving is not None and policy_name not in SERVING_POLICIES:
        raise ValueError(f"scenario {scenario.name!r} is a real-time serving scenario, {policy_name!r} a queue "
                         f"policy; {policy_kinds()}")
    if serving is None and policy_name in SERVING_POLICIES:
        raise ValueError(f"scenario {scenario.name!r} is a queue scenario, {policy_name!r} needs a `serving` "
                         f"section; {policy_kinds()}")
    controller: Any
    if serving is not None:
        controller = make_serving_controller(policy_name, settings, serving, scenario.control_period_seconds,
                                             target_utilization=variant.knob)
    else:
        controller = make_controller(policy_name, settings, target_wait_seconds=variant.knob, **variant.switches)
    controller.name = variant.label
    with no_cyclic_gc():  # the run and its summary: millions of acyclic objects (see stats.no_cyclic_gc)
        sim = Simulation(scenario, arrivals, controller, progress=progress,
                         request_timeout_seconds=serving.request_timeout_seconds if serving else None)
        if hasattr(controller, "bind"):  # a controller that reads the pools before the first request
            controller.bind(sim)
        sim.run()
        return summarize(scenario, variant.label, sim), sim


def _serving_metrics(scenario: Scenario, sim: Simulation) -> dict[str, Any]:
    """Per request: TTFT (queueing + prompt under batching) and TPOT (each later token at the batch's pace)."""
    assert scenario.serving is not None
    horizon = scenario.horizon_seconds
    ttft, tpot, met = [], [], 0
    for r in sim.records:
        if r.failed or r.finish is None or r.first_token is None or r.finish > horizon:
            continue
        first = r.first_token - r.arrived
        per_token = (r.finish - r.first_token) / (r.job.output_tokens - 1) if r.job.output_tokens > 1 else 0.0
        ttft.append(first)
        tpot.append(per_token)
        met += first <= scenario.serving.ttft_slo_seconds and per_token <= scenario.serving.tpot_slo_seconds
    total = len(sim.records)
    return {"slo_attainment": round(met / total, 5) if total else 1.0,
            "slo_definition": f"TTFT <= {scenario.serving.ttft_slo_seconds} s and TPOT <= "
                              f"{scenario.serving.tpot_slo_seconds} s; not started within "
                              f"{scenario.serving.request_timeout_seconds} s = failed",
            "requests_failed": sum(1 for r in sim.records if r.failed),
            "ttft_p50_seconds": _round(percentile(ttft, 0.5)), "ttft_p99_seconds": _round(percentile(ttft, 0.99)),
            "tpot_p50_seconds": _round(percentile(tpot, 0.5), 4),
            "tpot_p99_seconds": _round(percentile(tpot, 0.99), 4)}


def summarize(scenario: Scenario, policy_name: str, sim: Simulation) -> dict[str, Any]:
    horizon = scenario.horizon_seconds
    completed = [r for r in sim.records if r.finish is not None and r.finish <= horizon]
    queued = sum(len(p.queue) for pools in sim.pools.values() for p in pools.values())
    running = sum(p.in_flight(horizon) for pools in sim.pools.values() for p in pools.values())
    failed = sum(1 for r in sim.records if r.failed)
    latencies = [r.finish - r.arrived for r in completed]
    by_placement: dict[str, list[int]] = {}
    elsewhere: dict[str, int] = {}
    for record in sim.records:
        if record.finish is not None and record.regions_run and record.regions_run[-1] != record.region:
            elsewhere[record.job.placement] = elsewhere.get(record.job.placement, 0) + 1
        met = record.finish is not None and record.finish <= horizon and \
            record.finish - record.arrived <= record.job.deadline_seconds
        counts = by_placement.setdefault(record.job.placement, [0, 0])
        counts[0] += met
        counts[1] += 1
    on_time = sum(v[0] for v in by_placement.values())
    pools = [p for region in sim.pools.values() for p in region.values()]
    result = {
        "policy": policy_name,
        "scenario": scenario.name,
        "seed": scenario.seed,
        "cost_usd": round(sim.cost_usd, 4),
        "slo_attainment": round(on_time / len(sim.records), 5) if sim.records else 1.0,
        "slo_definition": "finished within its deadline",
        "jobs_late": len(sim.records) - on_time,
        "slo_attainment_by_placement": {k: round(v[0] / v[1], 5) for k, v in sorted(by_placement.items())},
        # Jobs submitted in one region that ran in another (capacity-shortage failover).
        "finished_in_another_region": dict(sorted(elsewhere.items())),
        "p50_seconds": _round(percentile(latencies, 0.50)),
        "p99_seconds": _round(percentile(latencies, 0.99)),
        "jobs_submitted": len(sim.records),
        "jobs_completed": len(completed),
        "jobs_unfinished": queued + running,
        # Jobs neither finished, failed (a real-time request's timeout), queued nor running: must be 0.
        "jobs_lost": len(sim.records) - len(completed) - queued - running - failed,
        "instance_hours": {p.key: round(p.instance_seconds / 3600, 3) for p in pools},
        "cost_usd_by_pool": {p.key: round(p.cost_usd, 4) for p in pools},
        "energy_kwh": round(sim.energy_kwh, 3),
        "energy_note": ENERGY_NOTE,
        "api_calls_per_cycle": round(sim.api_calls / max(1, sim.cycles), 2),
        "moves": sim.moves,
        "market_changes": sim.market_changes,
        "requeued_by_interruption": sim.requeued,
    }
    result["latency_p50_s"], result["latency_p99_s"] = result["p50_seconds"], result["p99_seconds"]
    if scenario.serving is not None:
        result.update(_serving_metrics(scenario, sim))
    return result


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def write_result(result: dict[str, Any], sim: Simulation, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_plots(sim, out_dir, title=f"{result['scenario']} / {result['policy']}")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(sim: Simulation, out_dir: Path, *, title: str) -> None:
    plt = _pyplot()
    minutes = [s.at / 60 for s in sim.samples]
    keys = list(sim.samples[0].desired) if sim.samples else []
    regions = sorted({k.split("/")[0] for k in keys})
    # One colour per pool, one line style per region: two regions' GPU lines stay apart when they overlap.
    styles = {r: ("-", "--", ":", "-.")[i % 4] for i, r in enumerate(regions)}
    colours = {"cpu": "tab:blue", "gpu": "tab:orange"}
    panels = [
        ("fleet_sizes.png", "instances in service", lambda s, k: s.in_service[k]),
        ("queue_depth.png", "queued jobs", lambda s, k: s.queued[k]),
    ]
    for file_name, label, value in panels:
        figure, axis = plt.subplots(figsize=(8, 3.5))
        for key in keys:
            region, pool = key.split("/")
            axis.plot(minutes, [value(s, key) for s in sim.samples], label=key, linestyle=styles[region],
                      color=colours.get(pool), linewidth=1.4)
        axis.set(xlabel="minutes", ylabel=label, title=title)
        axis.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out_dir / file_name, dpi=90)
        plt.close(figure)
    figure, axis = plt.subplots(figsize=(8, 3.5))
    axis.plot(minutes, [s.on_time / s.completed if s.completed else 1.0 for s in sim.samples])
    axis.set(xlabel="minutes", ylabel="on-time share of jobs completed so far", title=f"{title} (cumulative)")
    figure.tight_layout()
    figure.savefig(out_dir / "slo_attainment.png", dpi=90)
    plt.close(figure)


# -- bench --------------------------------------------------------------------------------------------------
_SHARED: dict[str, Any] = {}  # the scenario and workload, inherited by forked workers instead of pickled


def _run(variant: Variant) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    result, sim = simulate(_SHARED["scenario"], variant.policy, arrivals=_SHARED["arrivals"], variant=variant)
    out_dir = _SHARED.get("out_dir")
    if out_dir is not None and variant.label == variant.policy:
        write_result(result, sim, out_dir / variant.label)
    return result, [(s.at, s.cost_usd) for s in sim.samples]


def variants(scenario: Scenario, policies: tuple[str, ...] | None = None, *,
             sweeps: bool = True, ablations: bool = True) -> list[Variant]:
    serving = scenario.serving is not None
    names = policies or (SERVING_POLICIES if serving else POLICIES)
    ours = "serving-crossfleet" if serving else "crossfleet"
    default = 0.7 if serving else scenario.rebalancer.policy_fields().get("target_wait_seconds", 120.0)
    knobs = UTILIZATION_KNOBS if serving else WAIT_KNOBS
    out = []
    for name in names:
        if name == ours:
            out.append(Variant(name, name))
            continue
        out.append(Variant(name, name, knob=float(default)))
        if sweeps:
            out += [Variant(f"{name}@{knob:g}", name, knob=knob) for knob in knobs if knob != default]
    if ablations and not serving and ours in names:
        out += [Variant(label, ours, settings=settings, switches=switches)
                for label, (settings, switches) in ABLATIONS.items()]
    return out


def frontier_cost_at(points: list[dict[str, Any]], slo: float) -> float | None:
    """The least cost at which the frontier reaches `slo`: linear between its Pareto points; None if never."""
    pareto = []
    for point in sorted(points, key=lambda p: (-p["slo_attainment"], p["cost_usd"])):
        if not pareto or point["cost_usd"] < pareto[-1]["cost_usd"]:
            pareto.append(point)
    pareto.reverse()  # rising SLO, rising cost
    if not pareto or slo > pareto[-1]["slo_attainment"] + 1e-12:
        return None
    if slo <= pareto[0]["slo_attainment"]:
        return float(pareto[0]["cost_usd"])
    for low, high in itertools.pairwise(pareto):
        if low["slo_attainment"] <= slo <= high["slo_attainment"]:
            span = high["slo_attainment"] - low["slo_attainment"]
            share = (slo - low["slo_attainment"]) / span if span else 1.0
            return float(low["cost_usd"] + share * (high["cost_usd"] - low["cost_usd"]))
    return float(pareto[-1]["cost_usd"])


def bench(scenario: Scenario, out_dir: Path | None = None, *, progress: bool = False,
          policies: tuple[str, ...] | None = None, sweeps: bool = True, ablations: bool = True,
          integer: bool = True, workers: int = 2, integer_time_limit_seconds: float = 30.0) -> dict[str, Any]:
    """Every policy (and its frontier, and crossfleet's ablations) on one workload, and both bounds."""
    started = time.monotonic()
    arrivals = build_workload(scenario)
    runs = variants(scenario, policies, sweeps=sweeps, ablations=ablations)
    _SHARED.update(scenario=scenario, arrivals=arrivals, out_dir=out_dir)
    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    if workers > 1 and len(runs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for variant, (result, curve) in zip(runs, pool.map(_run, runs), strict=True):
                results[variant.label], curves[variant.label] = result, curve
                log(f"  {variant.label:<28} ${result['cost_usd']:>9.2f}  SLO {result['slo_attainment']:.3f}")
    else:
        for variant in runs:
            results[variant.label], curves[variant.label] = _run(variant)
            log(f"  {variant.label:<28} ${results[variant.label]['cost_usd']:>9.2f}  "
                f"SLO {results[variant.label]['slo_attainment']:.3f}")
    _SHARED.clear()
    ours = "serving-crossfleet" if scenario.serving is not None else "crossfleet"
    log("  bounds: fluid LP ...")
    fluid = fluid_bound(scenario, arrivals)
    bound_note = "queue model: each request's deadline, not TTFT/TPOT" if scenario.serving else None
    integer_result = None
    if integer and ours in results:
        log(f"  bounds: integer MILP (HiGHS, {integer_time_limit_seconds:.0f} s limit) ...")
        integer_result = integer_bound(scenario, arrivals, miss_budget=results[ours]["jobs_late"],
                                       time_limit_seconds=integer_time_limit_seconds)
    proven = [b for b in (fluid, integer_result.dual_usd if integer_result else None) if b is not None]
    report: dict[str, Any] = {
        "scenario": scenario.name, "seed": scenario.seed, "jobs": len(arrivals),
        "lower_bound_cost_usd": round(max(proven), 4),
        "bounds": {"fluid_usd": round(fluid, 4),
                   "integer_usd": None if integer_result is None or integer_result.dual_usd is None
                   else round(integer_result.dual_usd, 4),
                   "integer_gap": None if integer_result is None or integer_result.gap is None
                   else round(integer_result.gap, 4),
                   "integer_incumbent_usd": None if integer_result is None or integer_result.incumbent_usd is None
                   else round(integer_result.incumbent_usd, 4),
                   "integer_miss_budget": results[ours]["jobs_late"] if integer_result else None,
                   "integer_status": integer_result.status if integer_result else None,
                   "note": bound_note},
        "policies": {}, "frontiers": {}, "cost_vs_frontier": {}, "ablations": {},
    }
    for variant in runs:
        result = results[variant.label]
        if variant.label == variant.policy:
            report["policies"][variant.label] = result
        if variant.policy != ours:
            report["frontiers"].setdefault(variant.policy, []).append(
                {"knob": variant.knob, "cost_usd": result["cost_usd"], "slo_attainment": result["slo_attainment"]})
        elif variant.label != ours:
            report["ablations"][variant.label] = {"cost_usd": result["cost_usd"],
                                                  "slo_attainment": result["slo_attainment"]}
    for points in report["frontiers"].values():
        points.sort(key=lambda p: p["knob"])
    if ours in results:
        mine = results[ours]
        for baseline, points in report["frontiers"].items():
            cost = frontier_cost_at(points, mine["slo_attainment"])
            report["cost_vs_frontier"][baseline] = None if cost is None else round(mine["cost_usd"] / cost, 4)
    # Wall time of this bench on this machine (every run, both bounds), for the README's generated tables.
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        write_bench_plots(report, curves, out_dir)
    return report


def write_bench_plots(report: dict[str, Any], curves: dict[str, list[tuple[float, float]]], out_dir: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for baseline, points in report["frontiers"].items():
        axis.plot([p["slo_attainment"] for p in points], [p["cost_usd"] for p in points], marker="o",
                  label=f"{baseline} (knob swept)")
    for name, result in report["policies"].items():
        if name not in report["frontiers"]:
            axis.plot([result["slo_attainment"]], [result["cost_usd"]], marker="*", markersize=14, linestyle="",
                      color="black", label=name)
    for name, ablation in report["ablations"].items():
        axis.plot([ablation["slo_attainment"]], [ablation["cost_usd"]], marker="x", linestyle="", label=name)
    axis.axhline(report["lower_bound_cost_usd"], color="grey", linestyle=":", label="proven lower bound")
    axis.set(xlabel="SLO attainment", ylabel="cost (USD)", title=f"{report['scenario']}: cost vs SLO")
    axis.legend(fontsize="x-small")
    figure.tight_layout()
    figure.savefig(out_dir / "cost_vs_slo.png", dpi=90)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for name in report["policies"]:
        curve = curves.get(name, [])
        axis.plot([t / 60 for t, _ in curve], [c for _, c in curve], label=name)
    axis.set(xlabel="minutes", ylabel="cumulative cost (USD)", title=f"{report['scenario']}: cost over time")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out_dir / "cost.png", dpi=90)
    plt.close(figure)


def bench_table(report: dict[str, Any]) -> str:
    policies = report["policies"]
    bound = report["lower_bound_cost_usd"]
    bounds = report["bounds"]
    integer = "n/a"
    if bounds["integer_usd"] is not None:
        integer = f"${bounds['integer_usd']:.2f} (gap {bounds['integer_gap'] or 0:.1%})"
    width = max(20, *(len(name) + 2 for name in policies), *(len(name) + 13 for name in report["ablations"]))
    serving = any("ttft_p99_seconds" in r for r in policies.values())
    lines = [f"scenario {report['scenario']}: {report['jobs']} jobs; proven lower bound ${bound:.2f} "
             f"(fluid LP ${bounds['fluid_usd']:.2f}, integer MILP {integer})",
             f"{'policy':<{width}}{'cost $':>9}{'x bound':>8}{'SLO':>7}{'vs frontier':>12}"
             + (f"{'TTFT p99':>9}{'TPOT p99':>9}{'failed':>7}" if serving else f"{'p50 s':>7}{'p99 s':>7}")
             + f"{'lost':>5}{'moves':>6}"]
    for name, result in policies.items():
        ratio = report["cost_vs_frontier"].get(name, "")
        versus = "" if name in report["cost_vs_frontier"] else "-"
        if ratio is None:
            versus = "never"
        elif ratio != "":
            versus = f"{ratio:.2f}"
        tail = (f"{(result.get('ttft_p99_seconds') or 0):>9.2f}{(result.get('tpot_p99_seconds') or 0):>9.3f}"
                f"{result.get('requests_failed', 0):>7}" if serving else
                f"{(result['p50_seconds'] or 0):>7.1f}{(result['p99_seconds'] or 0):>7.1f}")
        lines.append(f"{name:<{width}}{result['cost_usd']:>9.2f}{result['cost_usd'] / bound if bound else 0:>8.2f}"
                     f"{result['slo_attainment']:>7.3f}{versus:>12}{tail}{result['jobs_lost']:>5}{result['moves']:>6}")
    if report["cost_vs_frontier"]:
        lines.append("vs frontier: crossfleet's cost / the baseline's least cost at crossfleet's SLO (its knob swept;"
                     " 'never': the baseline never reaches it)")
    for name, ablation in report["ablations"].items():
        lines.append(f"{'  ablation ' + name:<{width}}{ablation['cost_usd']:>9.2f}"
                     f"{ablation['cost_usd'] / bound if bound else 0:>8.2f}{ablation['slo_attainment']:>7.3f}")
    return "\n".join(lines)
