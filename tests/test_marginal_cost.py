"""Placement by marginal cost (core/marginal_cost.py): properties over generated pools and jobs (hypothesis), and
the cases the router and the rebalancer rely on."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossfleet.config.errors import ConfigError
from crossfleet.sim.scenario import parse_scenario
from crossfleet_control.core import policy
from crossfleet_control.core.marginal_cost import (
    MIN_BILLED_SECONDS,
    PoolView,
    blended_price_per_hour,
    cheapest,
    job_seconds,
    marginal_cost,
    model_scale,
    pool_price_per_hour,
)
from crossfleet_control.core.placement import PoolHealth, choose_pool, place
from crossfleet_control.core.policy_types import Observation, PoolTelemetry, QueuedJob
from crossfleet_control.core.service_model import profile_for
from crossfleet_control.core.settings import pool_spec
from tests.jobfactory import make_job

NOW = 1_700_000_000.0
CPU = profile_for("m9g.16xlarge", vcpus=64, accelerators=0)
GPU = profile_for("g6e.xlarge", vcpus=4, accelerators=1)
PROFILES = {"cpu": CPU, "gpu": GPU}


def view(name: str, *, in_service: int = 1, pending: int = 0, in_flight: int = 0, visible: int = 0,
         price: float | None = None, growth: int = 10, fill_share: float = 1.0) -> PoolView:
    profile = PROFILES[name]
    return PoolView(name=name, profile=profile, in_service=in_service, pending=pending, in_flight=in_flight,
                    visible=visible, mean_job_seconds=profile.job_seconds(make_job()),
                    price_per_hour=profile.on_demand_per_hour if price is None else price,
                    growth_instances=growth, fill_share=fill_share)


@st.composite
def views_strategy(draw, name: str) -> PoolView:
    slots_per = PROFILES[name].streams
    in_service = draw(st.integers(0, 20))
    return view(name, in_service=in_service, pending=draw(st.integers(0, 3)),
                in_flight=draw(st.integers(0, in_service * slots_per)), visible=draw(st.integers(0, 500)),
                price=draw(st.floats(0.05, 50.0)), growth=draw(st.integers(0, 10)),
                fill_share=draw(st.sampled_from([1.0, 0.85])))


jobs_strategy = st.builds(
    lambda placement, preference, deadline, age, tokens, params: make_job(
        placement=placement, preference={"cpu_only": "cpu", "gpu_only": "gpu"}.get(placement, preference),
        deadline_seconds=deadline, submitted_at=NOW - age,
        size={"input_tokens": tokens[0], "output_tokens": tokens[1]},
        **({"model_params_billion": params} if params else {})),
    st.sampled_from(["cpu_only", "gpu_only", "either"]), st.sampled_from(["cpu", "gpu"]), st.floats(1, 3600),
    st.floats(0, 60), st.tuples(st.integers(1, 8000), st.integers(0, 500)),
    st.one_of(st.none(), st.sampled_from([1.0, 8.0, 70.0, 405.0])))


@settings(max_examples=300, deadline=None)
@given(job=jobs_strategy, cpu=views_strategy("cpu"), gpu=views_strategy("gpu"), sick=st.booleans())
def test_placement_never_violates_cpu_only_or_gpu_only(job, cpu, gpu, sick):
    health = {"gpu": PoolHealth(0.0, "short", True)} if sick else {}
    _region, pool, _ = place(job, health, ("us-west-2", "healthy") if sick else (None, ""), {"cpu": cpu, "gpu": gpu},
                            NOW)
    assert job.may_run_on(pool)
    for name, pool_view in (("cpu", cpu), ("gpu", gpu)):
        if not job.may_run_on(name):
            assert marginal_cost(job, pool_view, NOW).usd == math.inf


@settings(max_examples=200, deadline=None)
@given(job=jobs_strategy, candidates=st.lists(jobs_strategy, max_size=20), cpu_busy=st.integers(0, 400),
       gpu_busy=st.integers(0, 4000), gpu_in_service=st.integers(0, 8))
def test_moves_never_violate_placement(job, candidates, cpu_busy, gpu_busy, gpu_in_service):
    observation = Observation(NOW, {
        "cpu": PoolTelemetry(visible=cpu_busy, in_flight=min(cpu_busy, 40), oldest_age_seconds=0, desired=10,
                             in_service=10),
        "gpu": PoolTelemetry(visible=gpu_busy, in_flight=min(gpu_busy, gpu_in_service * 32), oldest_age_seconds=0,
                             desired=gpu_in_service, in_service=gpu_in_service)})
    specs = {"cpu": pool_spec("cpu", "m9g.16xlarge", vcpus=64, accelerators=0, min_size=1, max_size=20),
             "gpu": pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=8)}
    queued = [QueuedJob(pool="cpu" if j.preference == "cpu" else "gpu", job=j) for j in (job, *candidates)]
    by_id = {q.job.id: q.job for q in queued}
    for move in policy.choose_moves(observation, specs, policy.PolicySettings(), queued):
        assert by_id[move.job_id].may_run_on(move.destination)
        assert "marginal cost" in move.detail or move.reason == "failover"


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["cpu", "gpu"]), in_service=st.integers(1, 20), in_flight=st.integers(0, 300),
       price=st.floats(0.05, 50.0))
def test_an_idle_paid_slot_costs_nothing(name, in_service, in_flight, price):
    slots = in_service * PROFILES[name].streams
    pool_view = view(name, in_service=in_service, in_flight=min(in_flight, slots - 1), price=price)
    job = make_job(deadline_seconds=3600, submitted_at=NOW)
    cost = marginal_cost(job, pool_view, NOW)
    assert cost.usd == 0.0 and cost.basis == "idle paid slot"


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["cpu", "gpu"]), in_service=st.integers(1, 10), visible=st.integers(0, 2000),
       deadline=st.floats(5, 3600), price=st.floats(0.05, 50.0))
def test_a_pool_at_its_max_costs_its_queue(name, in_service, visible, deadline, price):
    slots = in_service * PROFILES[name].streams
    pool_view = view(name, in_service=in_service, in_flight=slots, visible=visible, price=price, growth=0)
    job = make_job(deadline_seconds=deadline, submitted_at=NOW)
    cost = marginal_cost(job, pool_view, NOW)
    seconds = job_seconds(PROFILES[name], job)
    finish = (visible + 1) * pool_view.mean_job_seconds / slots + seconds
    assert cost.finish_seconds == pytest.approx(finish)
    if finish > deadline:
        assert cost.usd == math.inf, "a job that would miss its deadline there costs infinity"
    else:
        assert cost.usd == pytest.approx(price / 3600 * seconds / PROFILES[name].streams)


@settings(max_examples=300, deadline=None)
@given(job=jobs_strategy, cpu=views_strategy("cpu"), gpu=views_strategy("gpu"), cut=st.floats(0.05, 1.0),
       incumbent=st.sampled_from(["cpu", "gpu"]))
def test_a_cheaper_price_never_shifts_placement_away_from_a_pool(job, cpu, gpu, cut, incumbent):
    views = {"cpu": cpu, "gpu": gpu}
    chosen, _ = cheapest(job, views, NOW, incumbent)
    for name in views:
        cheaper_views = {**views, name: replace(views[name], price_per_hour=views[name].price_per_hour * cut)}
        again, _ = cheapest(job, cheaper_views, NOW, incumbent)
        if chosen == name:
            assert again == name, f"{name} got cheaper and lost the job"


def test_a_cheaper_price_shifts_placement_toward_it():
    """GPUs at zero, Graviton running: the trickle goes to the GPU's new instance only while its price is low."""
    job = make_job(deadline_seconds=3600, submitted_at=NOW, size={"input_tokens": 1469, "output_tokens": 13})
    cpu = view("cpu", in_service=1, in_flight=4, visible=3)  # busy: the job waits for a running slot
    gpu = view("gpu", in_service=0, visible=31)  # a new instance would take this job and 31 others
    assert cheapest(job, {"cpu": cpu, "gpu": gpu}, NOW, "cpu")[0] == "gpu"
    spike = replace(gpu, price_per_hour=gpu.price_per_hour * 30)
    assert cheapest(job, {"cpu": cpu, "gpu": spike}, NOW, "cpu")[0] == "cpu"


def test_a_new_instance_costs_its_boot_and_minimum_billing():
    job = make_job(deadline_seconds=3600, submitted_at=NOW)
    cost = marginal_cost(job, view("gpu", in_service=0), NOW)
    billed = max(MIN_BILLED_SECONDS, GPU.boot_seconds + job_seconds(GPU, job))
    assert cost.usd == pytest.approx(GPU.on_demand_per_hour / 3600 * billed)
    assert cost.finish_seconds == pytest.approx(GPU.boot_seconds + job_seconds(GPU, job))
    assert "new instance" in cost.basis
    late = make_job(deadline_seconds=60, submitted_at=NOW)
    assert marginal_cost(late, view("gpu", in_service=0), NOW).usd == math.inf, "boot alone misses 60 s"


def test_a_70b_model_is_not_placed_on_graviton():
    """Scaled from the 8B reference: 13.4 s on a Graviton5 stream becomes ~117 s, past a 60 s deadline."""
    small = make_job(placement="either", preference="cpu", deadline_seconds=60, submitted_at=NOW)
    large = make_job(placement="either", preference="cpu", deadline_seconds=60, submitted_at=NOW,
                     model_params_billion=70)
    assert model_scale(large) == pytest.approx(70 / 8)
    idle_cpu, gpu = view("cpu", in_service=1), view("gpu", in_service=2)
    assert marginal_cost(small, idle_cpu, NOW).on_time
    assert not marginal_cost(large, idle_cpu, NOW).on_time
    assert marginal_cost(large, gpu, NOW).on_time
    pool, why = choose_pool(large, {}, {"cpu": idle_cpu, "gpu": gpu}, NOW)
    assert pool == "gpu" and "cpu inf" in why


def test_an_eval_preferring_graviton_goes_to_running_gpus_with_room():
    eval_job = make_job(**{"class": "eval"}, placement="either", preference="cpu", deadline_seconds=900,
                        submitted_at=NOW, size={"input_tokens": 1200, "output_tokens": 200})
    cpu, gpu = view("cpu", in_service=4, in_flight=8), view("gpu", in_service=2, in_flight=10)
    pool, why = choose_pool(eval_job, {}, {"cpu": cpu, "gpu": gpu}, NOW)
    assert pool == "gpu" and "per job on running capacity" in why
    # No GPU running: booting one for an eval costs more than the Graviton slot already there.
    assert choose_pool(eval_job, {}, {"cpu": cpu, "gpu": view("gpu", in_service=0)}, NOW)[0] == "cpu"
    # Without views (a router with no rebalancer record yet): the preference, as before.
    assert choose_pool(eval_job, {})[0] == "cpu"


def test_an_off_peak_trickle_stays_on_running_graviton_while_the_gpus_are_at_zero():
    job = make_job(deadline_seconds=60, submitted_at=NOW)
    cpu, gpu_at_zero = view("cpu", in_service=1, in_flight=1), view("gpu", in_service=0, growth=10)
    pool, why = choose_pool(job, {}, {"cpu": cpu, "gpu": gpu_at_zero}, NOW)
    assert pool == "cpu" and "gpu inf" in why  # a 110 s boot misses a 60 s deadline
    # A GPU at zero that cannot launch is short: failover and the rebalancer decide, not this comparison.
    assert choose_pool(job, {}, {"cpu": cpu, "gpu": replace(gpu_at_zero, growth_instances=0)}, NOW)[0] == "gpu"
    # GPUs running: burst work is not sent to Graviton from the router's possibly stale view.
    busy_gpu = view("gpu", in_service=2, in_flight=64, visible=600)
    assert choose_pool(job, {}, {"cpu": cpu, "gpu": busy_gpu}, NOW)[0] == "gpu"


def test_move_detail_names_both_marginal_costs():
    observation = Observation(NOW, {
        "gpu": PoolTelemetry(visible=400, in_flight=256, oldest_age_seconds=90, desired=8, in_service=8),
        "cpu": PoolTelemetry(visible=0, in_flight=0, oldest_age_seconds=0, desired=10, in_service=10)})
    specs = {"cpu": pool_spec("cpu", "m9g.16xlarge", vcpus=64, accelerators=0, min_size=1, max_size=20),
             "gpu": pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=8)}
    job = make_job(deadline_seconds=60, submitted_at=NOW)
    (move,) = policy.choose_moves(observation, specs, policy.PolicySettings(), [QueuedJob("gpu", job)])
    assert move.destination == "cpu" and move.reason in ("deadline", "idle_capacity")
    assert move.detail.startswith("marginal cost: gpu ") and "; cpu $" in move.detail


def test_pool_price_is_observed_else_configured_else_the_price_table():
    spec = pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=8, on_demand_percentage=20)
    table = blended_price_per_hour(GPU.on_demand_per_hour, GPU.spot_per_hour, 20)
    assert pool_price_per_hour(spec, Observation(NOW, {})) == pytest.approx(table)
    configured = replace(spec, spot_price_per_hour=3.0, on_demand_price_per_hour=2.0)
    assert pool_price_per_hour(configured, Observation(NOW, {})) == pytest.approx(0.2 * 2.0 + 0.8 * 3.0)
    # The group fell back to On-Demand (Spot short): its current share is what it pays.
    fallen = Observation(NOW, {}, on_demand_percentage={"gpu": 100})
    assert pool_price_per_hour(configured, fallen) == pytest.approx(2.0)
    assert pool_price_per_hour(configured, Observation(NOW, {}, prices={"gpu": 9.5})) == 9.5


def _scenario(events: list[dict]) -> dict:
    pool = {"cpu": {"instance_type": "m9g.16xlarge"}, "gpu": {"instance_type": "g6e.xlarge", "spot_fraction": 0.5}}
    return {"regions": {"us-east-1": pool}, "workload": {"synthetic": []}, "events": events}


def test_a_spot_price_event_multiplies_only_the_spot_share():
    from crossfleet.sim.controllers import make_controller
    from crossfleet.sim.engine import Simulation
    from crossfleet.sim.workload import build_workload

    scenario = parse_scenario(_scenario([{"type": "price", "region": "us-east-1", "pool": "gpu", "market": "spot",
                                          "start": 0, "end": 600, "factor": 3.0}]))
    sim = Simulation(scenario, build_workload(scenario), make_controller("gpu-only", policy.PolicySettings()))
    gpu = sim.pools["us-east-1"]["gpu"]
    before = gpu.price_per_hour
    sim._events(60.0)
    assert before == pytest.approx(0.5 * GPU.on_demand_per_hour + 0.5 * GPU.spot_per_hour)
    assert gpu.price_per_hour == pytest.approx(0.5 * GPU.on_demand_per_hour + 0.5 * 3 * GPU.spot_per_hour)


def test_a_price_event_names_a_known_market():
    with pytest.raises(ConfigError) as caught:
        parse_scenario(_scenario([{"type": "price", "market": "reserved", "factor": 2.0}]))
    assert "events[0].market" in str(caught.value) and "spot" in str(caught.value)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("accelerator_cluster", "spot_price_per_hour", 0),
    ("accelerator_cluster", "on_demand_price_per_hour", "1.86"),
    ("graviton_fleet", "on_demand_price_per_hour", 3130.88),
    ("graviton_fleet", "spot_price_per_hour", True),
])
def test_a_bad_price_override_is_one_line_naming_key_value_and_range(section, key, value):
    from crossfleet.config import parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config({section: {key: value}, "regions": ["us-east-1"]})
    message = str(caught.value)
    assert "\n" not in message and f"{section}.{key} = {value!r}" in message
    assert "above 0 and at most 1000, or null (the pinned price table)" in message


def test_price_overrides_reach_the_policy_spec():
    from crossfleet.config import parse_config
    from crossfleet_control.core.settings import PoolSettings

    config = parse_config({"accelerator_cluster": {"spot": True, "spot_price_per_hour": 40.0,
                                                   "on_demand_price_per_hour": 50.0}, "regions": ["us-east-1"]})
    gpu = config.regions[0].accelerator_cluster
    assert (gpu.on_demand_price_per_hour, gpu.spot_price_per_hour) == (50.0, 40.0)
    assert parse_config({"regions": ["us-east-1"]}).regions[0].accelerator_cluster.spot_price_per_hour is None
    settings = PoolSettings(group_name="g", queue_url="q", dead_letter_url="d", instance_type="p5.48xlarge",
                            vcpus=192, accelerators=8, min_size=0, max_size=4, on_demand_percentage=0,
                            on_demand_price_per_hour=50.0, spot_price_per_hour=40.0)
    assert pool_price_per_hour(settings.spec("gpu"), Observation(NOW, {})) == 40.0


def test_the_router_reads_the_views_the_rebalancer_recorded_through_dynamodb_numbers():
    """The decision record carries the pool views to the Lambda router; DynamoDB hands numbers back as Decimal."""
    from decimal import Decimal

    from crossfleet_control.core.placement import views_from_record, views_to_record

    views = {"cpu": view("cpu", in_service=1, in_flight=1), "gpu": view("gpu", in_service=0, growth=4)}

    def as_dynamodb(value):
        if isinstance(value, dict):
            return {k: as_dynamodb(v) for k, v in value.items()}
        if isinstance(value, float | int) and not isinstance(value, bool):
            return Decimal(str(value))
        return value

    read = views_from_record({"placement_views": as_dynamodb(views_to_record(views))})
    assert read == views
    job = make_job(deadline_seconds=60, submitted_at=NOW)
    assert choose_pool(job, {}, read, NOW)[0] == "cpu"
    assert views_from_record({}) is None and views_from_record({"placement_views": {"cpu": {"x": 1}}}) is None


def test_the_synthesized_rebalancer_carries_the_configured_prices():
    """The config's price overrides reach the Lambda's settings (and so its PoolSpec); unset, none is written."""
    from tests.cdk_helpers import resources_of_type, synthesize

    app = synthesize({"regions": ["us-east-1"], "accelerator_cluster": {"spot_price_per_hour": 21.5}}, nag=False)
    template = app.template_json("us-east-1")
    (function,) = [f for f in resources_of_type(template, "AWS::Lambda::Function").values()
                   if f["Properties"].get("Handler") == "crossfleet_control.handlers.rebalancer.handler"]
    settings = json.dumps(function["Properties"]["Environment"]["Variables"]["CROSSFLEET_SETTINGS"])
    assert 'spot_price_per_hour\\":21.5' in settings
    assert "on_demand_price_per_hour" not in settings


def test_moves_happen_and_only_for_jobs_that_may_run_on_both_pools():
    """The property above holds vacuously if nothing ever moves: here moves must happen (idle paid GPUs, a busy
    Graviton queue), and every one of them is an `either` job."""
    observation = Observation(NOW, {
        "cpu": PoolTelemetry(visible=300, in_flight=40, oldest_age_seconds=200, desired=10, in_service=10),
        "gpu": PoolTelemetry(visible=0, in_flight=0, oldest_age_seconds=0, desired=4, in_service=4)})
    specs = {"cpu": pool_spec("cpu", "m9g.16xlarge", vcpus=64, accelerators=0, min_size=1, max_size=20),
             "gpu": pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=8)}
    queued = ([QueuedJob("cpu", make_job(id=f"only-{i}", placement="cpu_only", preference="cpu",
                                         deadline_seconds=3600, submitted_at=NOW)) for i in range(5)]
              + [QueuedJob("cpu", make_job(id=f"either-{i}", placement="either", preference="cpu",
                                           deadline_seconds=3600, submitted_at=NOW)) for i in range(5)])
    moves = policy.choose_moves(observation, specs, policy.PolicySettings(), queued)
    assert {m.job_id for m in moves} == {f"either-{i}" for i in range(5)}
    assert all(m.destination == "gpu" for m in moves)


def test_the_router_ignores_placement_views_older_than_the_staleness_limit():
    """A stalled rebalancer's last record must not keep steering jobs by capacity that is long gone."""
    from crossfleet_control.core.placement import views_to_record
    from crossfleet_control.orchestration.intake_routing import routing_view

    views = {"cpu": view("cpu", in_service=1, in_flight=1), "gpu": view("gpu", in_service=0, growth=4)}

    class State:
        def __init__(self, at: float) -> None:
            self.record = {"at": at, "placement_views": views_to_record(views), "peers": {}}

        def recent_decisions(self, limit: int) -> list[dict]:
            return [self.record]

    class Store:
        def breakers(self) -> list:
            return []

    types = {"cpu": ["m9g.16xlarge"], "gpu": ["g6e.xlarge"]}
    fresh = routing_view(State(NOW - 60), Store(), types, ("us-east-1",), NOW, 300)
    stale = routing_view(State(NOW - 3600), Store(), types, ("us-east-1",), NOW, 300)
    assert fresh.views == views and stale.views is None
