"""The simulator's speed-ups change nothing: the cached routing view, the tabled batching rates and the paused
collector give the same runs as the plain computations they replace; steady-40x is steady scaled, not tuned."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from crossfleet.sim.controllers import CrossfleetPolicy
from crossfleet.sim.engine import Rates
from crossfleet.sim.run import simulate
from crossfleet.sim.scenario import parse_scenario
from crossfleet.sim.stats import no_cyclic_gc
from crossfleet_control.core.service_model import profile_for

ROOT = Path(__file__).resolve().parents[1]


def _two_regions_with_a_gpu_outage() -> dict:
    pools = {"cpu": {"instance_type": "m9g.16xlarge", "min_size": 1, "max_size": 6, "start": 1},
             "gpu": {"instance_type": "g6e.xlarge", "min_size": 0, "max_size": 6, "start": 2}}
    return {
        "name": "outage", "duration_seconds": 1200, "drain_seconds": 600, "control_period_seconds": 60, "seed": 5,
        "rebalancer": {"target_wait_seconds": 20},
        "regions": {"us-east-1": pools, "us-west-2": pools},
        "workload": {"synthetic": [
            {"class": "inference", "placement": "either", "rate_per_second": 4, "input_tokens": [500, 6000],
             "output_tokens": [5, 200], "deadline_seconds": 60},
            {"class": "inference", "placement": "gpu_only", "rate_per_second": 1, "input_tokens": [500, 6000],
             "output_tokens": [5, 200], "deadline_seconds": 60},
            {"class": "agent", "placement": "cpu_only", "rate_per_second": 0.5, "cpu_seconds": [1, 8],
             "deadline_seconds": 60}]},
        "events": [{"type": "capacity", "region": "us-east-1", "pool": "gpu", "start": 300, "end": 900,
                    "max_instances": 0, "reclaim": True}],
    }


def _trace(sim) -> list[tuple]:
    return [(r.job.id, r.start, r.first_token, r.finish, tuple(r.regions_run), tuple(r.pools_run))
            for r in sim.records]


def test_the_routing_view_cached_per_step_routes_exactly_as_one_recomputed_per_arrival(
        monkeypatch: pytest.MonkeyPatch):
    scenario = parse_scenario(_two_regions_with_a_gpu_outage())
    cached, cached_sim = simulate(scenario, "crossfleet")
    assert any(len(set(r.regions_run)) > 1 or (r.regions_run and r.regions_run[-1] != r.region)
               for r in cached_sim.records), "the outage makes work fail over: the ranking is exercised"
    original = CrossfleetPolicy.route

    def uncached(self: CrossfleetPolicy, record):
        self._routing.clear()  # the old behaviour: health and failover ranking recomputed for every arrival
        return original(self, record)

    monkeypatch.setattr(CrossfleetPolicy, "route", uncached)
    plain, plain_sim = simulate(scenario, "crossfleet")
    assert cached == plain
    assert _trace(cached_sim) == _trace(plain_sim)


@pytest.mark.parametrize(("instance_type", "vcpus", "accelerators"),
                         [("g6e.xlarge", 4, 1), ("g6e.12xlarge", 48, 4), ("m9g.16xlarge", 64, 0)])
def test_tabled_rates_are_the_power_law_itself(instance_type: str, vcpus: int, accelerators: int):
    rates = Rates(profile_for(instance_type, vcpus=vcpus, accelerators=accelerators))
    for k in range(rates.streams + 1):
        batch = max(1.0, k / rates.replicas)
        assert rates.speeds(k) == (rates.prefill / batch, rates.batch1 * batch ** -rates.beta)


def test_the_collector_pause_restores_the_collector_even_on_error():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), no_cyclic_gc():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with no_cyclic_gc():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()


def test_steady_40x_is_steady_at_four_times_the_load_and_fleet_bounds_nothing_else():
    steady = json.loads((ROOT / "scenarios/steady.json").read_text())
    scaled = json.loads((ROOT / "scenarios/steady-40x.json").read_text())
    assert scaled["workload"]["inference_trace"]["rate_scale"] == 4 * steady["workload"]["inference_trace"][
        "rate_scale"] == 40
    for stream in steady["workload"]["synthetic"]:
        stream["rate_per_second"] *= 4
    for region in steady["regions"].values():
        for pool in region.values():
            pool["start"] *= 4
            pool["max_size"] *= 4
    steady["workload"]["inference_trace"]["rate_scale"] = 40
    for key in ("name", "description"):
        steady.pop(key), scaled.pop(key)
    assert scaled == steady
