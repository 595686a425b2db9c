"""The simulator: determinism, conservation, a hand-worked case, the lower bound, and the shared policy."""

from __future__ import annotations

import json
import random
from itertools import pairwise
from pathlib import Path

import pytest

import crossfleet_control.core.policy as lambda_policy
import crossfleet_control.orchestration.rebalance_cycle as lambda_handler
from crossfleet.cli import main as cli_main
from crossfleet.sim import controllers
from crossfleet.sim.bound import fluid_bound, integer_bound, lower_bound_cost
from crossfleet.sim.controllers import POLICIES
from crossfleet.sim.run import bench, simulate
from crossfleet.sim.scenario import parse_scenario
from crossfleet.sim.workload import build_workload, read_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_inference_2023_code.csv"
needs_trace = pytest.mark.skipif(not TRACE.exists(), reason="the shared Azure trace is not beside the repo")


def small_scenario(seed: int = 3, **overrides) -> dict:
    scenario = {
        "name": "small", "duration_seconds": 900, "drain_seconds": 600, "control_period_seconds": 60, "seed": seed,
        "rebalancer": {"target_wait_seconds": 20},
        "regions": {"us-east-1": {
            "cpu": {"instance_type": "m9g.16xlarge", "min_size": 1, "max_size": 6, "start": 1},
            "gpu": {"instance_type": "g6e.xlarge", "min_size": 0, "max_size": 4, "start": 1}}},
        "workload": {"synthetic": [
            {"class": "inference", "placement": "either", "rate_per_second": 1.5, "input_tokens": [200, 3000],
             "output_tokens": [5, 200], "deadline_seconds": 60},
            {"class": "agent", "placement": "cpu_only", "rate_per_second": 0.5, "cpu_seconds": [1, 8],
             "deadline_seconds": 60},
            {"class": "finetune", "placement": "gpu_only", "rate_per_second": 0.01, "gpu_seconds": [60, 300],
             "deadline_seconds": 1200}]},
    }
    scenario.update(overrides)
    return scenario


def test_simulator_runs_the_lambdas_policy_module_not_a_copy():
    assert controllers.policy is lambda_policy
    assert lambda_handler.policy is lambda_policy
    assert controllers.CrossfleetPolicy.control.__globals__["policy"].decide is lambda_policy.decide


def test_same_seed_same_result_different_seed_different_workload():
    scenario = parse_scenario(small_scenario())
    first, _ = simulate(scenario, "crossfleet")
    second, _ = simulate(scenario, "crossfleet")
    assert first == second
    other = parse_scenario(small_scenario(seed=4))
    assert [a.at for a in build_workload(other)] != [a.at for a in build_workload(scenario)]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_job_is_accounted_for(policy):
    scenario = parse_scenario(small_scenario(events=[
        {"type": "spot_interruption", "region": "us-east-1", "pool": "cpu", "start": 300, "fraction": 1.0},
        {"type": "capacity", "region": "us-east-1", "pool": "gpu", "start": 200, "end": 500, "max_instances": 0}]))
    result, sim = simulate(scenario, policy)
    assert result["jobs_lost"] == 0
    assert result["jobs_completed"] + result["jobs_unfinished"] == result["jobs_submitted"] == len(sim.records)
    for record in sim.records:
        assert set(record.pools_run) <= set(record.job.allowed_pools()), "placement kept, even after moves"


def test_a_tiny_scenario_worked_by_hand():
    """One m9g.16xlarge (4 streams, $3.13088/h) fixed at 1, no GPU, two 10-second CPU jobs at t=0.5 s.

    Both start at 0.5 s on free slots and finish at 10.5 s: latency 10 s each, both inside a 20 s deadline.
    Cost: one instance for the whole 600 + 300 s horizon = 900 / 3600 * 3.13088 = $0.78272.
    """
    raw = small_scenario(duration_seconds=600, drain_seconds=300)
    raw["regions"]["us-east-1"] = {
        "cpu": {"instance_type": "m9g.16xlarge", "min_size": 1, "max_size": 1, "start": 1},
        "gpu": {"instance_type": "g6e.xlarge", "min_size": 0, "max_size": 0, "start": 0}}
    raw["workload"] = {"synthetic": []}
    scenario = parse_scenario(raw)
    from crossfleet.sim.workload import Arrival
    from tests.jobfactory import make_job

    arrivals = [Arrival(0.5, "us-east-1", make_job(id=f"hand-{i}", placement="cpu_only", preference="cpu",
                                                    size={"cpu_seconds": 10}, deadline_seconds=20, submitted_at=0.5))
                for i in range(2)]
    for policy in ("crossfleet", "target-tracking"):
        result, _ = simulate(scenario, policy, arrivals=arrivals)
        assert result["cost_usd"] == pytest.approx(0.78272, abs=1e-4)
        assert result["latency_p50_s"] == pytest.approx(10.0) and result["latency_p99_s"] == pytest.approx(10.0)
        assert result["slo_attainment"] == 1.0 and result["jobs_completed"] == 2
        assert result["instance_hours"] == {"us-east-1/cpu": 0.25, "us-east-1/gpu": 0.0}
    assert lower_bound_cost(scenario, arrivals) == pytest.approx(0.78272, abs=1e-4), "min size is all it pays"


def test_fluid_below_integer_bound_below_every_policy_on_random_small_scenarios():
    """fluid LP <= proven MILP dual bound (late on at most the most any policy was) <= every policy's cost."""
    rng = random.Random(11)
    for trial in range(3):
        raw = small_scenario(seed=rng.randint(1, 10_000), duration_seconds=600, drain_seconds=900)
        raw["workload"]["synthetic"][0]["rate_per_second"] = rng.uniform(0.2, 3.0)
        raw["workload"]["synthetic"][1]["rate_per_second"] = rng.uniform(0.0, 1.0)
        raw["regions"]["us-east-1"]["gpu"]["max_size"] = rng.randint(1, 6)
        scenario = parse_scenario(raw)
        arrivals = build_workload(scenario)
        results = {policy: simulate(scenario, policy, arrivals=arrivals)[0] for policy in POLICIES}
        assert all(r["jobs_unfinished"] == 0 for r in results.values())
        late = max(r["jobs_submitted"] - round(r["slo_attainment"] * r["jobs_submitted"]) for r in results.values())
        fluid = fluid_bound(scenario, arrivals)
        integer = integer_bound(scenario, arrivals, miss_budget=late, time_limit_seconds=10)
        assert integer.dual_usd is not None, integer.status
        assert fluid <= integer.dual_usd + 1e-6, (trial, fluid, integer)
        for policy, result in results.items():
            assert integer.dual_usd <= result["cost_usd"] + 1e-6, (trial, policy, integer, result["cost_usd"])


@needs_trace
def test_azure_trace_is_read_with_its_real_size():
    rows = read_trace(str(TRACE))
    assert len(rows) == 8819, "numbers.md: 8,819 requests"
    assert rows[0][0] == 0.0 and 3300 < rows[-1][0] < 3500, "about 57 minutes"


@needs_trace
def test_bench_cli_writes_bench_json_and_plots(tmp_path: Path):
    scenario = small_scenario(duration_seconds=300, drain_seconds=300)
    scenario["workload"]["inference_trace"] = {"path": str(TRACE), "rate_scale": 0.5, "deadline_seconds": 60}
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    assert cli_main(["bench", "--scenario", str(path), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert set(report["policies"]) == set(POLICIES)
    assert report["bounds"]["fluid_usd"] <= min(r["cost_usd"] for r in report["policies"].values())
    assert report["lower_bound_cost_usd"] <= report["policies"]["crossfleet"]["cost_usd"]
    fields = {"policy", "cost_usd", "slo_attainment", "p50_seconds", "p99_seconds", "jobs_submitted",
              "jobs_completed", "jobs_lost", "instance_hours", "energy_kwh", "api_calls_per_cycle"}
    assert fields <= set(report["policies"]["crossfleet"])
    for name in ("fleet_sizes.png", "queue_depth.png", "slo_attainment.png"):
        assert (tmp_path / "out" / "crossfleet" / name).stat().st_size > 1000
    for name in ("cost_vs_slo.png", "cost.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_bad_scenario_is_one_clear_error(tmp_path: Path, capsys):
    path = tmp_path / "bad.json"
    raw = small_scenario()
    raw["regions"]["us-east-1"]["cpu"]["instance_type"] = "p5.48xlarge"
    path.write_text(json.dumps(raw))
    assert cli_main(["simulate", "--scenario", str(path)]) == 2
    assert capsys.readouterr().err.strip() == ("crossfleet config: regions.us-east-1.cpu.instance_type = "
                                               "'p5.48xlarge' is not allowed: a CPU-only type offered in us-east-1")


def test_bench_json_has_the_documented_stable_schema():
    report = bench(parse_scenario(small_scenario(duration_seconds=300)), policies=("crossfleet", "gpu-only"),
                   workers=1, integer_time_limit_seconds=10)
    assert {"scenario", "jobs", "lower_bound_cost_usd", "bounds", "policies", "frontiers", "cost_vs_frontier",
            "ablations"} <= set(report)
    bounds = report["bounds"]
    assert {"fluid_usd", "integer_usd", "integer_gap"} <= set(bounds)
    assert report["lower_bound_cost_usd"] == max(b for b in (bounds["fluid_usd"], bounds["integer_usd"]) if b)
    assert bounds["fluid_usd"] <= bounds["integer_usd"] <= report["policies"]["crossfleet"]["cost_usd"] + 1e-6
    for result in report["policies"].values():
        assert {"cost_usd", "slo_attainment", "jobs_lost", "p50_seconds", "p99_seconds"} <= set(result)
    knobs = [p["knob"] for p in report["frontiers"]["gpu-only"]]
    assert knobs == sorted(knobs) and len(knobs) >= 4
    assert all({"knob", "cost_usd", "slo_attainment"} == set(p) for p in report["frontiers"]["gpu-only"])
    assert set(report["cost_vs_frontier"]) == {"gpu-only"}
    assert set(report["ablations"]) == {"no-moves", "no-failover", "no-moves-or-failover", "no-capacity-health",
                                        "no-gradual-scale-in", "no-warm-start", "no-cost-placement", "no-spot-price",
                                        "fixed-steps", "with-occupancy-sizing"}


def test_frontier_cost_is_interpolated_between_pareto_points_and_null_when_never_reached():
    from crossfleet.sim.run import frontier_cost_at

    points = [{"knob": 5, "cost_usd": 100.0, "slo_attainment": 0.95}, {"knob": 10, "cost_usd": 80.0,
              "slo_attainment": 0.90}, {"knob": 20, "cost_usd": 90.0, "slo_attainment": 0.85},  # dominated
              {"knob": 40, "cost_usd": 60.0, "slo_attainment": 0.70}]
    assert frontier_cost_at(points, 0.925) == pytest.approx(90.0)
    assert frontier_cost_at(points, 0.80) == pytest.approx(60.0 + 20.0 * (0.10 / 0.20))
    assert frontier_cost_at(points, 0.5) == 60.0
    assert frontier_cost_at(points, 0.96) is None


def two_region_scenario(events: list[dict]) -> dict:
    """Two regions with the same pools and the same work; us-east-1 may lose its GPUs."""
    raw = small_scenario(seed=5, duration_seconds=1800, drain_seconds=900, events=events)
    pools = raw["regions"]["us-east-1"]
    pools["gpu"]["max_size"] = 6
    raw["regions"]["us-west-2"] = json.loads(json.dumps(pools))
    finetune = raw["workload"]["synthetic"][2]
    finetune["rate_per_second"] = 0.05
    finetune["gpu_seconds"] = [30, 120]
    return raw


SHORTAGE = {"type": "capacity", "region": "us-east-1", "pool": "gpu", "start": 300, "end": 1200,
            "max_instances": 0, "reclaim": True}


def test_shortage_keeps_either_and_cpu_only_on_time_and_finishes_gpu_only_work_in_the_other_region():
    calm, _ = simulate(parse_scenario(two_region_scenario([])), "crossfleet")
    short, sim = simulate(parse_scenario(two_region_scenario([SHORTAGE])), "crossfleet")
    baseline, _ = simulate(parse_scenario(two_region_scenario([SHORTAGE])), "target-tracking")
    assert short["jobs_lost"] == 0 and short["jobs_unfinished"] == 0

    # us-east-1's GPU-only work submitted while its GPUs were gone ran in us-west-2, and none ran in us-east-1.
    during = [r for r in sim.records if r.region == "us-east-1" and r.job.placement == "gpu_only"
              and SHORTAGE["start"] + 60 <= r.arrived < SHORTAGE["end"]]
    assert during and all(r.regions_run == ["us-west-2"] for r in during), [r.regions_run for r in during]
    assert short["finished_in_another_region"].get("gpu_only", 0) >= len(during)
    assert short["finished_in_another_region"].get("cpu_only", 0) == 0, "CPU-only work has CPUs at home"
    assert all(region in sim.pools for r in sim.records for region in r.regions_run), "only configured regions"

    # `either` and `cpu_only` work kept its SLO through the shortage; the reactive baseline did not.
    for placement in ("either", "cpu_only"):
        kept = short["slo_attainment_by_placement"][placement]
        assert kept >= calm["slo_attainment_by_placement"][placement] - 0.05, (placement, kept, calm)
    assert short["slo_attainment_by_placement"]["either"] > baseline["slo_attainment_by_placement"]["either"]


def serving_scenario(events: list[dict]) -> dict:
    raw = small_scenario(seed=9, duration_seconds=3600, drain_seconds=600, events=events)
    raw["serving"] = {"latency_slo_p99_seconds": 60, "initial_gpu_weight": 50, "max_weight_step": 20}
    raw["regions"]["us-east-1"]["gpu"].update(max_size=6, start=2)
    raw["regions"]["us-east-1"]["cpu"].update(max_size=30)  # enough Graviton to carry every request alone
    raw["workload"]["synthetic"] = [raw["workload"]["synthetic"][0]]  # real-time requests only
    raw["workload"]["synthetic"][0]["rate_per_second"] = 3.0
    return raw


def test_serving_mode_runs_the_lambdas_serving_module_and_loses_no_request():
    import crossfleet.sim.serving_controllers as serving_sim
    import crossfleet_control.core.serving as lambda_serving

    assert serving_sim.serving is lambda_serving
    report = bench(parse_scenario(serving_scenario([])))
    assert set(report["policies"]) == {"serving-crossfleet", "serving-gpu-only", "serving-target-tracking"}
    for result in report["policies"].values():
        assert result["jobs_lost"] == 0
        assert (result["jobs_completed"] + result["jobs_unfinished"] + result["requests_failed"]
                == result["jobs_submitted"])
    assert report["policies"]["serving-crossfleet"]["jobs_unfinished"] == 0


def test_serving_shifts_traffic_to_graviton_while_gpus_cannot_launch_and_back_after():
    shortage = {"type": "capacity", "region": "us-east-1", "pool": "gpu", "start": 600, "end": 1200,
                "max_instances": 0, "reclaim": True}
    _, sim = simulate(parse_scenario(serving_scenario([shortage])), "serving-crossfleet")
    weights = {at: weight for at, _, weight in sim.controller.weight_history}
    before = [w for at, w in weights.items() if at < 600]
    during = [w for at, w in weights.items() if 600 <= at < 1200]
    after = [w for at, w in weights.items() if at >= 1200]
    assert before and max(before) > 50, f"GPUs are cheaper per request: traffic moves to them ({weights})"
    assert during and during[-1] == 0, f"no GPU traffic while the GPUs are gone ({weights})"
    assert after and after[-1] > 50, f"traffic returns to the GPUs after recovery ({weights})"
    assert all(b >= a for a, b in pairwise(after)), f"back without flapping: {after}"
    gpu_requests = [r for r in sim.records if r.regions_run and r.pools_run == ["gpu"]
                    and r.start is not None and 600 + 120 <= r.start < 1200]
    assert not gpu_requests, "nothing ran on GPUs that were not there"


def test_readme_tables_are_generated_from_bench_json(tmp_path: Path):
    from crossfleet.sim.report import BEGIN, END, main

    report = bench(parse_scenario(small_scenario(duration_seconds=300)), tmp_path / "small",
                   policies=("crossfleet", "gpu-only"), workers=1, integer_time_limit_seconds=5)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nstale\n{END}\noutro\n")
    assert main([str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\noutro\n") and "stale" not in text
    assert f"| crossfleet | ${report['policies']['crossfleet']['cost_usd']:,.2f} |" in text
    assert "no-moves" in text and "knob 20" in text
    mine = report["policies"]["crossfleet"]
    row = next(line for line in text.splitlines()
               if line.startswith(f"| {report['scenario']} | {mine['slo_attainment']:.3f} |"))
    ratio = mine["cost_usd"] / report["lower_bound_cost_usd"]
    assert f"{ratio:.2f}x" in row, "the targets row is computed from bench.json"
    real = (ROOT / "README.md").read_text()
    assert BEGIN in real and END in real, "the README's benchmark tables sit between the generator's markers"


def test_ttft_and_tpot_worked_by_hand():
    """One g6e.xlarge (one L40S: prefill 8,532 tok/s, decode 44 tok/s for a lone stream and 1,124 tok/s across its
    32 streams, from instance_profiles.json), requests of 1,000 prompt and 11 output tokens.

    Alone: TTFT = 1000 / 8532 = 0.1172 s; the 11 tokens decode in 11 / 44 = 0.25 s, so TPOT = 0.25 / 10 = 0.025 s.
    Two at once: they share prefill (TTFT = 2000 / 8532 = 0.2344 s) and decode at the per-stream rate for a batch
    of two, 44 x 2^-e with e = ln(44 / (1124 / 32)) / ln 32 (the power law from one stream to 32): TPOT =
    (11 / that rate) / 10.
    """
    import math

    from crossfleet.sim.workload import Arrival
    from tests.jobfactory import make_job

    raw = small_scenario(seed=9, duration_seconds=600, drain_seconds=300)
    raw["serving"] = {"latency_slo_p99_seconds": 60, "initial_gpu_weight": 100, "max_weight_step": 20}
    raw["regions"]["us-east-1"] = {
        "cpu": {"instance_type": "m9g.16xlarge", "min_size": 1, "max_size": 1, "start": 1},
        "gpu": {"instance_type": "g6e.xlarge", "min_size": 1, "max_size": 1, "start": 1}}
    raw["workload"] = {"synthetic": []}
    scenario = parse_scenario(raw)

    def request(name: str) -> Arrival:
        return Arrival(1.0, "us-east-1", make_job(id=name, placement="either", preference="gpu", deadline_seconds=60,
                                                  size={"input_tokens": 1000, "output_tokens": 11}, submitted_at=1.0))

    alone, _ = simulate(scenario, "serving-gpu-only", arrivals=[request("alone")])
    assert alone["ttft_p50_seconds"] == pytest.approx(1000 / 8532, abs=1e-3)
    assert alone["tpot_p50_seconds"] == pytest.approx(11 / 44 / 10, abs=1e-4)
    assert alone["slo_attainment"] == 1.0, "inside MLPerf's server limits (2 s, 100 ms)"

    pair, _ = simulate(scenario, "serving-gpu-only", arrivals=[request("a"), request("b")])
    exponent = math.log(44 / (1124 / 32)) / math.log(32)
    assert pair["ttft_p99_seconds"] == pytest.approx(2000 / 8532, abs=1e-3)
    assert pair["tpot_p99_seconds"] == pytest.approx(11 / (44 * 2 ** -exponent) / 10, abs=1e-4)
