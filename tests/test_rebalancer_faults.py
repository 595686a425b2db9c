"""Fault injection on every call the rebalancer makes: no job lost, none on a forbidden pool, an error metric,
and the next cycle converges. Plus concurrency, the time budget and the API calls a cycle costs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from moto import mock_aws

from crossfleet_control.aws.controller_state import ControllerState, LeaseLost
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.core.policy_types import ControllerMemory
from crossfleet_control.orchestration.rebalance_cycle import run_cycle
from crossfleet_control.orchestration.record import api_call_bound
from tests.aws_region import Region, build_region
from tests.fakes import FakeSqs, FaultyClient, capture_metrics, count_calls, metric_total, throttled
from tests.jobfactory import job_message
from tests.test_exactly_once import CountingRunner
from tests.test_intake_and_worker import agent_for
from tests.test_rebalancer_handler import SMALL_GPU, load_saturated_gpu


@pytest.fixture
def region() -> Iterator[Region]:
    with mock_aws():
        yield build_region(raw_config=SMALL_GPU, cpu_desired=5, gpu_desired=1, gpu_max=1)


def all_ids(region: Region) -> dict[str, list[str]]:
    return {pool: region.job_ids(pool) for pool in ("cpu", "gpu")}


def assert_conserved(region: Region, ids: dict[str, set[str]]) -> None:
    where = all_ids(region)
    present = set(where["cpu"]) | set(where["gpu"])
    assert present == ids["either"] | ids["gpu_only"] | ids["cpu_only"], "no job lost, none invented"
    assert not ids["gpu_only"] & set(where["cpu"]), "gpu_only work never on CPU"
    assert not ids["cpu_only"] & set(where["gpu"]), "cpu_only work never on GPU"


FAULTS = [
    ("queues", "get_queue_attributes"), ("queues", "receive_message"), ("queues", "send_message_batch"),
    ("queues", "delete_message_batch"), ("queues", "change_message_visibility_batch"),
    ("fleets", "describe_auto_scaling_groups"), ("fleets", "describe_scaling_activities"),
    ("state", "query"), ("state", "put_item"), ("state", "update_item"),
]


@pytest.mark.parametrize(("adapter", "operation"), FAULTS, ids=[f[1] for f in FAULTS])
def test_throttled_call_loses_nothing_reports_and_next_cycle_converges(region: Region, adapter: str,
                                                                       operation: str):
    ids = load_saturated_gpu(region)
    deps = region.deps()
    target = getattr(deps, adapter)
    faulty = FaultyClient(target.client, {operation: throttled(operation)})
    target.client = faulty
    metrics = capture_metrics(deps)

    result = run_cycle(deps, {}, holder="faulty", remaining_ms=lambda: 50_000)

    assert faulty.failures[operation] > 0, "the fault was actually hit"
    assert metric_total(metrics, "Errors") >= 1 or result["status"] in ("error", "held")
    assert result["status"] in ("ok", "held", "error")
    assert_conserved(region, ids)

    region.reset_visibility()  # time passes: held messages come back
    healthy = region.deps()
    again = run_cycle(healthy, {}, holder="healthy", remaining_ms=lambda: 50_000)
    assert again["status"] == "ok" and again["held"] == []
    assert_conserved(region, ids)
    state = ControllerState(region.client("dynamodb"), region.settings.table_name, region.name)
    record = state.recent_decisions(1)[0]
    for pool in ("cpu", "gpu"):
        assert region.desired(pool) == record["pools"][pool]["desired"]


def test_failed_set_desired_capacity_is_reported_and_retried_next_cycle():
    with mock_aws():
        region = build_region(raw_config=SMALL_GPU, cpu_desired=1, gpu_desired=0, gpu_max=4)
        region.send("gpu", [job_message(placement="gpu_only", submitted_at=time.time()) for _ in range(100)])
        deps = region.deps()
        faulty = FaultyClient(deps.fleets.client, {"set_desired_capacity": throttled("SetDesiredCapacity")})
        deps.fleets.client = faulty
        metrics = capture_metrics(deps)
        run_cycle(deps, {}, holder="nosize", remaining_ms=lambda: 50_000)
        assert faulty.failures["set_desired_capacity"] == 1
        assert metric_total(metrics, "Errors") >= 1 and region.desired("gpu") == 0
        run_cycle(region.deps(), {}, holder="retry", remaining_ms=lambda: 50_000)
        assert region.desired("gpu") == 1


def test_failed_send_keeps_the_original_in_place(region: Region):
    ids = load_saturated_gpu(region)
    deps = region.deps()
    deps.queues.client = FaultyClient(deps.queues.client, {"send_message_batch": throttled("SendMessageBatch")})
    result = run_cycle(deps, {}, holder="nosend", remaining_ms=lambda: 50_000)
    assert result["moves_decided"] > 0 and result["moves_applied"] == 0
    region.reset_visibility()
    assert set(region.job_ids("gpu")) == ids["either"] | ids["gpu_only"], "nothing deleted without a copy"


def test_crash_between_send_and_delete_leaves_a_duplicate_not_a_loss(region: Region):
    """The rebalancer dies after sending moved copies and before deleting the originals: two copies of each
    moved job exist. Workers then drain both pools: every job runs exactly once (the duplicate is settled by the
    ledger, never run) and ends `succeeded`. An earlier version stopped at counting queue contents and never
    ran a worker, so a duplicate that ran twice could not fail it."""
    ids = load_saturated_gpu(region)
    deps = region.deps()
    deps.queues.client = FaultyClient(deps.queues.client,
                                      {"delete_message_batch": lambda: SystemError("process killed")})
    with pytest.raises(SystemError):
        run_cycle(deps, {}, holder="crash", remaining_ms=lambda: 50_000)
    region.reset_visibility()
    cpu, gpu = set(region.job_ids("cpu")), set(region.job_ids("gpu"))
    moved = cpu & ids["either"]
    assert moved and moved <= gpu, "sent copies exist and the originals were not deleted"
    assert_conserved(region, ids)
    # The lease was released on the way out, so the next tick runs at once.
    assert run_cycle(region.deps(), {}, holder="after-crash", remaining_ms=lambda: 50_000)["status"] == "ok"
    assert_conserved(region, ids)

    region.reset_visibility()
    runner = CountingRunner()
    agents = [agent_for(region, pool, runner, f"i-{pool}") for pool in ("cpu", "gpu")]
    while any(region.job_ids(pool) for pool in ("cpu", "gpu")):
        handled = sum(len([agent.execute(w) for w in agent.receive(10)]) for agent in agents)
        assert handled or any(region.job_ids(p) for p in ("cpu", "gpu")), "no progress"
        if not handled:
            region.reset_visibility()
    every = ids["either"] | ids["gpu_only"] | ids["cpu_only"]
    assert set(runner.runs) == every and set(runner.runs.values()) == {1}, "each job ran once, duplicates never"
    ledger = Ledger(region.client("dynamodb"), region.settings.table_name)
    assert {ledger.head(job_id)["status"] for job_id in every} == {"succeeded"}


def test_second_invocation_does_nothing_while_the_lease_is_held(region: Region):
    ids = load_saturated_gpu(region)
    state = ControllerState(region.client("dynamodb"), region.settings.table_name, region.name)
    state.acquire_lease("first", lease_seconds=55)
    before = {pool: region.desired(pool) for pool in ("cpu", "gpu")}
    result = run_cycle(region.deps(), {}, holder="second", remaining_ms=lambda: 50_000)
    assert result == {"status": "skipped", "reason": "lease held by another invocation"}
    assert {pool: region.desired(pool) for pool in ("cpu", "gpu")} == before
    assert set(region.job_ids("gpu")) == ids["either"] | ids["gpu_only"]


def test_fencing_token_stops_a_stale_holder_from_writing(region: Region):
    clock = [time.time()]
    state = ControllerState(region.client("dynamodb"), region.settings.table_name, region.name,
                            clock=lambda: clock[0])
    old = state.acquire_lease("slow", lease_seconds=55)
    clock[0] += 120  # the slow invocation overran its lease
    new = state.acquire_lease("fresh", lease_seconds=55)
    assert new > old
    state.save_memory(ControllerMemory(), new)
    assert not state.still_holds("slow", old)
    with pytest.raises(LeaseLost):
        state.save_memory(ControllerMemory(), old)


def test_near_the_deadline_the_cycle_sizes_but_starts_no_queue_work(region: Region):
    load_saturated_gpu(region)
    deps = region.deps()
    calls = count_calls(deps.queues.client)
    result = run_cycle(deps, {}, holder="late", remaining_ms=lambda: 4_000)
    assert result["status"] == "ok"
    assert calls["ReceiveMessage"] == 0 and calls["SendMessageBatch"] == 0


# What one busy cycle cost on this fixture (200-message move budget); the README quotes it.
MEASURED_CALLS_PER_CYCLE = 71


@pytest.mark.parametrize("queued", [1_000, 100_000])
def test_api_calls_per_cycle_are_bounded_and_do_not_grow_with_the_queue(queued: int):
    with mock_aws():
        region = build_region(raw_config=SMALL_GPU, cpu_desired=5, gpu_desired=1, gpu_max=1)
        deps = region.deps()
        urls = {pool: s.queue_url for pool, s in region.settings.pools.items()}
        dead_letters = {s.dead_letter_url: 0 for s in region.settings.pools.values()}  # empty: one read each
        submitted = time.time()
        fake = FakeSqs({urls["gpu"]: queued, urls["cpu"]: 0, **dead_letters}, submitted_at=submitted)
        deps.queues.client = fake
        # The policy's clock a fixed second after submission: how many jobs still meet their deadline on the
        # CPU (and so move) must not depend on how long this machine takes to build the fixture.
        deps.clock = lambda: submitted + 1.0
        aws_calls = count_calls(deps.fleets.client, deps.state.client, deps.queue_metrics.client)
        result = run_cycle(deps, {}, holder="count", remaining_ms=lambda: 50_000)
        total = sum(aws_calls.values()) + sum(fake.calls.values())
        assert result["moves_decided"] > 0
        assert fake.calls["ReceiveMessage"] == region.settings.policy.move_budget // 10 + len(dead_letters)
        assert total <= api_call_bound(region.settings)
        # Measured on this fixture (also in the README): the same count for 1,000 and 100,000 queued jobs.
        assert total == MEASURED_CALLS_PER_CYCLE, dict(aws_calls) | dict(fake.calls)
