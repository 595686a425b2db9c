"""The rebalancer handler against moto: queues, groups and table built the way the stacks build them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import pytest
from moto import mock_aws

from crossfleet_control.aws.controller_state import ControllerState
from crossfleet_control.core import policy
from crossfleet_control.handlers.rebalancer import handler
from crossfleet_control.orchestration.rebalance_cycle import run_cycle
from tests.aws_region import LambdaContext, Region, build_region, rebalancer_environment
from tests.jobfactory import job_message

# A small GPU pool (g6e.xlarge, 32 streams) that is at its max, so GPU work cannot get more capacity.
SMALL_GPU = {"regions": ["us-east-1"],
             "accelerator_cluster": {"instance_types": ["g6e.xlarge"], "fallback_instance_types": []}}


@pytest.fixture
def region() -> Iterator[Region]:
    with mock_aws():
        yield build_region(raw_config=SMALL_GPU, cpu_desired=5, gpu_desired=1, gpu_max=1)


def load_saturated_gpu(region: Region) -> dict[str, set[str]]:
    """GPU queue: `either` jobs with a 60 s deadline and a sixth as many gpu_only; CPU queue: 10 cpu_only.

    Counts come from the service model, not fixed numbers: one g6e.xlarge (32 streams) needs about 90 s to get
    through them, past the 60 s deadline (180 jobs at the old 16 s per job; about 490 at today's cited rates).
    """
    now = time.time()
    spec = region.settings.specs()["gpu"]
    total = math.ceil(90 * spec.profile.streams / spec.mean_job_seconds)
    either = [job_message(placement="either", deadline_seconds=60, submitted_at=now) for _ in range(total - total // 6)]
    gpu_only = [job_message(placement="gpu_only", deadline_seconds=60, submitted_at=now) for _ in range(total // 6)]
    cpu_only = [job_message(placement="cpu_only", preference="cpu", deadline_seconds=600, submitted_at=now)
                for _ in range(10)]
    region.send("gpu", either + gpu_only)
    region.send("cpu", cpu_only)
    return {"either": {j["id"] for j in either}, "gpu_only": {j["id"] for j in gpu_only},
            "cpu_only": {j["id"] for j in cpu_only}}


def latest_decision(region: Region) -> dict:
    state = ControllerState(region.client("dynamodb"), region.settings.table_name, region.name)
    return state.recent_decisions(1)[0]


def test_enforce_cycle_applies_what_the_policy_decided(region: Region):
    ids = load_saturated_gpu(region)
    result = run_cycle(region.deps(), {}, holder="cycle-1", remaining_ms=lambda: 50_000)
    assert result["status"] == "ok"

    record = latest_decision(region)
    moved = {m["job_id"] for m in record["moves"]}
    assert moved, "saturated GPUs with idle-enough Graviton must move some either work"
    assert moved <= ids["either"], "only `either` jobs move"
    assert all(m["source"] == "gpu" and m["destination"] == "cpu" for m in record["moves"])
    reasons = {m["reason"] for m in record["moves"]}
    assert "deadline" in reasons and reasons <= {"deadline", "least_late"}
    assert set(record["applied"]["moved"]) == moved

    cpu_ids, gpu_ids = set(region.job_ids("cpu")), set(region.job_ids("gpu"))
    assert cpu_ids == ids["cpu_only"] | moved
    assert gpu_ids == (ids["either"] - moved) | ids["gpu_only"]
    for pool in ("cpu", "gpu"):
        assert region.desired(pool) == record["pools"][pool]["desired"]


def test_observe_mode_decides_and_records_but_changes_nothing(region: Region):
    ids = load_saturated_gpu(region)
    before = {pool: region.desired(pool) for pool in ("cpu", "gpu")}
    result = run_cycle(region.deps(mode="observe"), {}, holder="observer", remaining_ms=lambda: 50_000)
    assert result["mode"] == "observe"
    record = latest_decision(region)
    assert record["moves"], "the decision is still made and logged"
    assert record["applied"] == {}
    assert {pool: region.desired(pool) for pool in ("cpu", "gpu")} == before
    assert set(region.job_ids("gpu")) == ids["either"] | ids["gpu_only"]
    assert set(region.job_ids("cpu")) == ids["cpu_only"]
    # Sampled messages were released at once, not left invisible for the hold period.
    attributes = region.client("sqs").get_queue_attributes(
        QueueUrl=region.settings.pools["gpu"].queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_backlog_scales_the_gpu_pool_up_and_idle_scales_it_back_after_the_delay():
    with mock_aws():
        region = build_region(raw_config=SMALL_GPU, cpu_desired=1, gpu_desired=0, gpu_max=4)
        spec = region.settings.specs()["gpu"]
        per_instance = spec.profile.streams * region.settings.policy.target_wait_seconds / spec.mean_job_seconds
        # One and a half instances' worth of work from the service model (g6e: about 650 jobs per 120 s each).
        backlog = int(1.5 * per_instance)
        region.send("gpu", [job_message(placement="gpu_only", submitted_at=time.time()) for _ in range(backlog)])
        clock = [time.time()]
        deps = region.deps()
        deps.clock = deps.state.clock = lambda: clock[0]
        run_cycle(deps, {}, holder="t0", remaining_ms=lambda: 50_000)
        assert region.desired("gpu") == math.ceil(backlog / per_instance) == 2

        region.client("sqs").purge_queue(QueueUrl=region.settings.pools["gpu"].queue_url)
        window = region.settings.policy.forecast_window_seconds / 60
        sizes = []
        delay = region.settings.policy.scale_in_delay_seconds / 60
        for minute in range(1, int(window + delay) + 2):
            clock[0] += 60
            run_cycle(deps, {}, holder=f"t{minute}", remaining_ms=lambda: 50_000)
            sizes.append(region.desired("gpu"))
            if minute < 10:
                assert region.desired("gpu") == 2, f"minute {minute}: no scale-in before the 10-minute delay"
        # The forecast floor (kept in the state table between invocations) releases the burst's capacity as its
        # peak ages: one instance while the peak still weighs more than half, none once the window has passed.
        # The floor falls to 1 at minute 15 (2 x (1 - 15/30)) and the scale-in delay runs 10 minutes from there;
        # it falls to 0 at minute 30, and the delay runs again.
        assert sizes[:24] == [2] * 24 and sizes[24:39] == [1] * 15 and sizes[39] == 0, sizes
        assert region.desired("gpu") == 0, f"scaled to zero once the forecast window and the delay passed: {sizes}"


def test_operator_freeze_and_pin_are_honoured_and_reported(region: Region):
    load_saturated_gpu(region)
    state = ControllerState(region.client("dynamodb"), region.settings.table_name, region.name)
    state.set_override("cpu", frozen=True, note="maintenance window")
    state.set_override("gpu", pinned_desired=0, note="cost freeze")
    run_cycle(region.deps(), {}, holder="ops", remaining_ms=lambda: 50_000)
    record = latest_decision(region)
    assert record["pools"]["cpu"]["reason"] == "frozen by operator: maintenance window"
    assert record["moves"] == [], "no moves into or out of a frozen pool"
    assert region.desired("cpu") == 5
    assert region.desired("gpu") == 0 and "pinned at 0 by operator: cost freeze" in record["pools"]["gpu"]["reason"]


def test_malformed_messages_go_to_the_dead_letter_queue_with_a_reason(region: Region):
    # The poison first: the cycle samples a bounded number of messages and must meet all three.
    region.send("gpu", ["{not json", json.dumps({"schema_version": 9, "id": "future-job"}),
                        json.dumps({"schema_version": 1, "class": "inference"})])
    ids = load_saturated_gpu(region)
    deps = region.deps(move_budget=400)
    result = run_cycle(deps, {}, holder="poison", remaining_ms=lambda: 50_000)
    assert result["status"] == "ok" and result["quarantined"] == 3
    reasons = sorted(body["reason"] for body in region.dead_letter_bodies("gpu"))
    assert reasons[0].startswith("body is not JSON")
    assert reasons[1] == "missing required field 'id'"
    assert reasons[2] == "schema_version=9: this crossfleet reads schema_version 1"
    valid = sum(len(group) for group in ids.values())
    assert len(region.job_ids("gpu")) + len(region.job_ids("cpu")) == valid, "valid jobs untouched"


def test_lambda_entry_point_reads_settings_from_the_environment(region: Region, monkeypatch):
    from crossfleet_control.handlers import rebalancer

    monkeypatch.setenv("CROSSFLEET_SETTINGS", rebalancer_environment(region.settings))
    monkeypatch.setattr(rebalancer, "_DEPENDENCIES", None)
    result = handler({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, LambdaContext("request-1"))
    assert result["status"] == "ok"
    stale = handler({"time": "2020-01-01T00:00:00Z"}, LambdaContext("request-1"))
    assert stale["status"] == "skipped" and "old" in stale["reason"]


def test_desired_is_clamped_in_code_even_when_moto_would_accept_anything(monkeypatch):
    """moto accepts desired > max; the handler clamps whatever the policy returns (failure case 5)."""
    from dataclasses import replace

    from crossfleet_control.orchestration import rebalance_cycle as rebalancer

    real_decide = policy.decide

    def out_of_range(*args, **kwargs):
        decision = real_decide(*args, **kwargs)
        return replace(decision, pools={**decision.pools, "gpu": replace(decision.pools["gpu"], desired=99)})

    monkeypatch.setattr(rebalancer.policy, "decide", out_of_range)
    with mock_aws():
        region = build_region(raw_config=SMALL_GPU, cpu_desired=1, gpu_desired=0, gpu_max=4)
        run_cycle(region.deps(), {}, holder="clamp", remaining_ms=lambda: 50_000)
        assert region.desired("gpu") == 4
