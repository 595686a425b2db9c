"""The benchmark tells the truth: baselines scale as AWS documents, instances never serve above capacity,
and every shipped scenario exercises something a policy reacts to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossfleet.sim.run import simulate
from crossfleet.sim.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_inference_2023_code.csv"
needs_trace = pytest.mark.skipif(not TRACE.exists(), reason="the shared Azure trace is not beside the repo")


def idle_scenario(**overrides) -> dict:
    """Eight warm GPUs and nothing to do: how long does each policy keep them?"""
    raw = {
        "name": "idle", "duration_seconds": 1800, "drain_seconds": 0, "control_period_seconds": 60, "seed": 1,
        "regions": {"us-east-1": {
            "cpu": {"instance_type": "m9g.16xlarge", "min_size": 1, "max_size": 6, "start": 1},
            "gpu": {"instance_type": "g6e.xlarge", "min_size": 0, "max_size": 48, "start": 8}}},
        "workload": {"synthetic": []},
    }
    raw.update(overrides)
    return raw


def gpu_desired(sim) -> list[tuple[float, int]]:
    return [(s.at, s.desired["us-east-1/gpu"]) for s in sim.samples]


@pytest.mark.parametrize("policy", ["target-tracking", "gpu-only"])
def test_target_tracking_removes_nothing_before_its_low_alarm_has_15_datapoints(policy):
    """AWS target tracking scales in only after its low alarm (15 one-minute datapoints below 90% of the target)
    fires; an idle group keeps its capacity for those 15 minutes."""
    _, sim = simulate(parse_scenario(idle_scenario()), policy)
    history = gpu_desired(sim)
    assert all(desired == 8 for at, desired in history if at < 15 * 60), history[:16]
    assert any(desired < 8 for at, desired in history if at >= 15 * 60), history


def instance_violations(sim) -> list[tuple[str, float, float, float]]:
    """Intervals [a, b] in which one instance finished more work than it could serve in b - a seconds.

    A job's least work is its prompt at the whole instance's prefill rate plus its output at the whole
    instance's full-batch decode rate (explicit-seconds jobs: their seconds over the streams). The jobs that
    started at or after `a` and finished by `b` on one instance can need no more than b - a instance-seconds,
    whatever the batching. Checked for every `a` a job's start and every `b` a job's finish.
    """
    out = []
    for pools in sim.pools.values():
        for pool in pools.values():
            profile = pool.profile
            hosts: dict[int, list] = {}
            for r in sim.records:
                if r.finish is not None and getattr(r, "host", None) is not None and r.host[0] == pool.key:
                    hosts.setdefault(r.host[1], []).append(r)

            def work(record, profile=profile):
                explicit = record.job.gpu_seconds if profile.is_accelerated else record.job.cpu_seconds
                if explicit is not None:
                    return explicit / profile.streams
                return (record.job.input_tokens / profile.prefill_tokens_per_second
                        + record.job.output_tokens / profile.decode_tokens_per_second)

            for jobs in hosts.values():
                jobs.sort(key=lambda r: r.start)
                for i, first in enumerate(jobs):
                    a = first.start
                    later = sorted(jobs[i:], key=lambda r: r.finish)
                    served = 0.0
                    for r in later:
                        served += work(r)
                        if served > (r.finish - a) * (1 + 1e-6) + 1e-6:
                            out.append((pool.key, a, r.finish, served / max(r.finish - a, 1e-9)))
                            break
    return out


def loaded_scenario() -> dict:
    raw = idle_scenario(duration_seconds=600, drain_seconds=600, seed=4)
    raw["regions"]["us-east-1"]["gpu"].update(start=2, max_size=3)
    raw["workload"] = {"synthetic": [
        {"class": "inference", "placement": "gpu_only", "rate_per_second": 6.0, "input_tokens": [200, 3000],
         "output_tokens": [5, 200], "deadline_seconds": 60},
        {"class": "inference", "placement": "cpu_only", "rate_per_second": 0.3, "input_tokens": [100, 1500],
         "output_tokens": [5, 100], "deadline_seconds": 60}]}
    return raw


def test_no_instance_serves_above_its_capacity():
    _, sim = simulate(parse_scenario(loaded_scenario()), "crossfleet")
    finished = [r for r in sim.records if r.finish is not None]
    assert len(finished) > 1000 and all(getattr(r, "host", None) for r in finished), "every job names its host"
    violations = instance_violations(sim)
    assert not violations, f"{len(violations)} intervals above capacity, worst {max(v[3] for v in violations):.2f}x"


@needs_trace
@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_scenarios_events_change_what_crossfleet_does(path: Path):
    """A scenario whose events change nothing crossfleet decides tests nothing (the old `price-change`). At full
    load: at a tenth of it, crossfleet's warm-start floor has room enough that a Spot wave changes nothing, and
    a 50% interruption of a one-instance pool reclaims none."""
    raw = json.loads(path.read_text())
    if "inference_trace" in raw["workload"]:
        raw["workload"]["inference_trace"]["path"] = str(TRACE)
    if not raw.get("events") or raw.get("serving"):
        pytest.skip("no events, or a serving scenario (its own tests)")
    with_events, _ = simulate(parse_scenario(raw), "crossfleet")
    without, _ = simulate(parse_scenario({**raw, "events": []}), "crossfleet")
    decided = ("instance_hours", "moves", "slo_attainment", "market_changes")
    assert any(with_events[k] != without[k] for k in decided), {k: with_events[k] for k in decided}


# -- the target tracking rules every baseline scales by (crossfleet/sim/autoscaling.py) -------------------------
def run_tracker(points: list[tuple[float, int, int]], desired: int, target: float = 10.0) -> list[int]:
    """Feed (load, in_service, warming) datapoints; return the desired capacity after each."""
    from crossfleet.sim.autoscaling import TargetTracker

    tracker = TargetTracker(target)
    out = []
    for load, in_service, warming in points:
        desired = tracker.step(load=load, in_service=in_service, warming=warming, desired=desired, min_size=0,
                               max_size=100)
        out.append(desired)
    return out


def test_tracker_scale_in_needs_15_datapoints_below_90_percent_of_target():
    # 8 instances, load 40 = 5 per instance (50% of the target): 14 datapoints remove nothing, the 15th does.
    assert run_tracker([(40, 8, 0)] * 14, 8) == [8] * 14
    assert run_tracker([(40, 8, 0)] * 15, 8)[-1] == 4, "proportional: ceil(40 / 10)"
    # One datapoint at 95% of the target resets the window: below the target is not enough, 10% below is.
    points = [(40, 8, 0)] * 10 + [(76, 8, 0)] + [(40, 8, 0)] * 14
    assert run_tracker(points, 8)[-1] == 8
    assert run_tracker([(79, 8, 0)] * 30, 8) == [8] * 30, "9.9 per instance: never 10% below target"


def test_tracker_does_not_scale_in_while_an_instance_warms_up():
    assert run_tracker([(0, 8, 1)] * 20, 9) == [9] * 20
    assert run_tracker([(0, 8, 1)] * 14 + [(0, 8, 0)], 9)[-1] == 0


def test_tracker_scale_out_needs_3_datapoints_and_is_proportional():
    assert run_tracker([(200, 4, 0)] * 2, 4) == [4, 4]
    assert run_tracker([(200, 4, 0)] * 3, 4)[-1] == 20, "ceil(4 x 50 / 10)"
    # Warming instances count as capacity: the same breach again adds nothing more.
    assert run_tracker([(200, 4, 0)] * 3 + [(200, 4, 16)] * 3, 4)[3:] == [20, 20, 20]
    # No instance in service yet: the metric divides by one (favours the baseline; AWS would see no data).
    assert run_tracker([(25, 0, 0)] * 3, 0)[-1] == 3
