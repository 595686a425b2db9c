"""Run policies over a scenario, compute the lower bound, write result.json, bench.json and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossfleet.sim.bound import deadline_bound_cost, lower_bound_cost
from crossfleet.sim.controllers import POLICIES, make_controller
from crossfleet.sim.engine import Simulation
from crossfleet.sim.scenario import Scenario
from crossfleet.sim.serving_controllers import SERVING_POLICIES, make_serving_controller
from crossfleet.sim.stats import percentile
from crossfleet.sim.workload import Arrival, build_workload
from crossfleet_control.core.policy_types import PolicySettings

ENERGY_NOTE = ("estimate: instance-hours x per-instance power from data/instance_profiles.json (board powers "
               "cited where available, the rest labelled estimates); not a measurement")


def simulate(scenario: Scenario, policy_name: str, *, arrivals: list[Arrival] | None = None,
             progress: bool = False) -> tuple[dict[str, Any], Simulation]:
    arrivals = build_workload(scenario) if arrivals is None else arrivals
    settings = PolicySettings(**scenario.rebalancer.policy_fields())
    if scenario.serving is not None and policy_name in SERVING_POLICIES:
        controller = make_serving_controller(policy_name, settings, scenario.serving,
                                             scenario.control_period_seconds)
    else:
        controller = make_controller(policy_name, settings)
    sim = Simulation(scenario, arrivals, controller, progress=progress).run()
    return summarize(scenario, policy_name, sim), sim


def summarize(scenario: Scenario, policy_name: str, sim: Simulation) -> dict[str, Any]:
    horizon = scenario.horizon_seconds
    completed = [r for r in sim.records if r.finish is not None and r.finish <= horizon]
    running = sum(1 for r in sim.records if r.finish is not None and r.finish > horizon)
    queued = sum(len(p.queue) for pools in sim.pools.values() for p in pools.values())
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
    return {
        "policy": policy_name,
        "scenario": scenario.name,
        "seed": scenario.seed,
        "cost_usd": round(sim.cost_usd, 4),
        "slo_attainment": round(on_time / len(sim.records), 5) if sim.records else 1.0,
        "slo_attainment_by_placement": {k: round(v[0] / v[1], 5) for k, v in sorted(by_placement.items())},
        # Jobs submitted in one region that ran in another (capacity-shortage failover).
        "finished_in_another_region": dict(sorted(elsewhere.items())),
        "latency_p50_s": _round(percentile(latencies, 0.50)),
        "latency_p99_s": _round(percentile(latencies, 0.99)),
        "jobs_submitted": len(sim.records),
        "jobs_completed": len(completed),
        "jobs_unfinished": queued + running,
        "jobs_lost": len(sim.records) - len(completed) - queued - running,
        "instance_hours": {p.key: round(p.instance_seconds / 3600, 3) for p in pools},
        "cost_usd_by_pool": {p.key: round(p.cost_usd, 4) for p in pools},
        "energy_kwh": round(sim.energy_kwh, 3),
        "energy_note": ENERGY_NOTE,
        "api_calls_per_cycle": round(sim.api_calls / max(1, sim.cycles), 2),
        "moves": sim.moves,
        "requeued_by_interruption": sim.requeued,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def write_result(result: dict[str, Any], sim: Simulation, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_plots(sim, out_dir, title=f"{result['scenario']} / {result['policy']}")


def write_plots(sim: Simulation, out_dir: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.at / 60 for s in sim.samples]
    keys = list(sim.samples[0].desired) if sim.samples else []
    panels = [
        ("fleet_sizes.png", "instances in service", lambda s, k: s.in_service[k]),
        ("queue_depth.png", "queued jobs", lambda s, k: s.queued[k]),
    ]
    for file_name, label, value in panels:
        figure, axis = plt.subplots(figsize=(8, 3.5))
        for key in keys:
            axis.plot(minutes, [value(s, key) for s in sim.samples], label=key)
        axis.set(xlabel="minutes", ylabel=label, title=title)
        axis.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out_dir / file_name, dpi=90)
        plt.close(figure)
    for file_name, label, series in (
            ("cost.png", "cumulative cost (USD)", [s.cost_usd for s in sim.samples]),
            ("slo_attainment.png", "on-time share of completed jobs",
             [s.on_time / s.completed if s.completed else 1.0 for s in sim.samples])):
        figure, axis = plt.subplots(figsize=(8, 3.5))
        axis.plot(minutes, series)
        axis.set(xlabel="minutes", ylabel=label, title=title)
        figure.tight_layout()
        figure.savefig(out_dir / file_name, dpi=90)
        plt.close(figure)


def bench(scenario: Scenario, out_dir: Path | None = None, *, progress: bool = False,
          policies: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every policy on one workload: the queue policies, or for a serving scenario the endpoint policies."""
    if policies is None:
        policies = SERVING_POLICIES if scenario.serving is not None else POLICIES
    arrivals = build_workload(scenario)
    results = {}
    for name in policies:
        result, sim = simulate(scenario, name, arrivals=arrivals, progress=progress)
        results[name] = result
        if out_dir is not None:
            write_result(result, sim, out_dir / name)
    bound = lower_bound_cost(scenario, arrivals)
    report = {"scenario": scenario.name, "seed": scenario.seed, "jobs": len(arrivals),
              "lower_bound_cost_usd": round(bound, 4),
              "deadline_lower_bound_cost_usd": round(deadline_bound_cost(scenario, arrivals), 4),
              "policies": results}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def bench_table(report: dict[str, Any]) -> str:
    policies = report["policies"]
    bound = report["lower_bound_cost_usd"]

    def ratio(cost: float, other: str) -> str:
        base = policies.get(other, {}).get("cost_usd")
        return f"{cost / base:.2f}" if base else "-"

    slo_bound = report["deadline_lower_bound_cost_usd"]
    # A serving scenario's baselines carry the `serving-` prefix; the columns compare with the same two.
    prefix = "serving-" if any(name.startswith("serving-") for name in policies) else ""
    width = max(16, *(len(name) + 1 for name in policies))
    lines = [f"scenario {report['scenario']}: {report['jobs']} jobs, lower bound ${bound:.2f} "
             f"(deadline-aware bound ${slo_bound:.2f})",
             f"{'policy':<{width}}{'cost $':>9}{'/gpu-only':>10}{'/target-tr':>11}{'/bound':>8}{'/dl-bnd':>8}{'SLO':>8}"
             f"{'p50 s':>8}{'p99 s':>8}{'lost':>6}{'moves':>7}"]
    for name, result in policies.items():
        cost = result["cost_usd"]
        lines.append(
            f"{name:<{width}}{cost:>9.2f}{ratio(cost, prefix + 'gpu-only'):>10}"
            f"{ratio(cost, prefix + 'target-tracking'):>11}"
            f"{(cost / bound if bound else float('nan')):>8.2f}"
            f"{(cost / slo_bound if slo_bound else float('nan')):>8.2f}{result['slo_attainment']:>8.3f}"
            f"{(result['latency_p50_s'] or 0):>8.1f}{(result['latency_p99_s'] or 0):>8.1f}{result['jobs_lost']:>6}"
            f"{result['moves']:>7}")
    return "\n".join(lines)
