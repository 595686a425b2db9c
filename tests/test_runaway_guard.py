"""Failure case 18: instances that launch but never become usable. The pure policy caps the group's launches
(desired capacity drops to what is usable, then holds), publishes a metric the RunawayLaunches alarm watches,
and never holds a pool whose launches do become usable."""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import replace

from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from crossfleet_control.aws.controller_state import ControllerState
from crossfleet_control.aws.fleets import AutoScalingFleets
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core import policy
from crossfleet_control.core.policy_types import (
    ControllerMemory,
    Decision,
    Observation,
    Override,
    PoolMemory,
    PoolTelemetry,
)
from crossfleet_control.orchestration.record import emit_metrics
from tests.aws_region import build_region
from tests.test_policy_properties import NOW, SETTINGS, SPECS, telemetry_strategy

CPU = SPECS["cpu"]  # min 1, max 20


def broken_launches(minutes: int, guard: bool) -> tuple[int, list[policy.PoolDecision]]:
    """A plant whose instances all fail their health checks within a minute: each minute the group launches what
    desired capacity asks for beyond what is usable, and they vanish. The queue keeps aging. Returns the
    launches over `minutes` and every decision."""
    config = SETTINGS if guard else replace(SETTINGS, max_launches_per_window=10**9)
    desired, memory, history, total, decisions = 1, PoolMemory(), [], 0, []
    for minute in range(minutes):
        recent = sum(history[-15:])  # the adapter counts the last 15 minutes of launch activities
        telemetry = PoolTelemetry(visible=500, in_flight=0, oldest_age_seconds=900.0, desired=desired,
                                  in_service=0, pending=0, launches=recent)
        decision, memory = policy.size_pool(CPU, telemetry, Observation(NOW + 60 * minute, {"cpu": telemetry}),
                                            memory, config)
        decisions.append(decision)
        desired = decision.desired
        history.append(desired)  # the group launches every missing instance; none becomes usable
        total += desired
    return total, decisions


def test_launches_that_never_become_usable_are_capped_and_held():
    unguarded, _ = broken_launches(60, guard=False)
    guarded, decisions = broken_launches(60, guard=True)
    assert unguarded >= 1000, "without the guard the group relaunches a whole fleet every minute"
    # Once the guard trips, desired capacity is what is usable (the pool's minimum here): at most min_size a
    # minute while it holds, and one more trip's worth when the 30-minute hold ends.
    assert guarded <= 2 * (10 + SETTINGS.max_scale_up_step) + 60 * CPU.min_size, guarded
    tripped = [d for d in decisions if d.runaway]
    assert tripped and all(d.held for d in tripped)
    assert "runaway guard" in tripped[0].reason and "not becoming usable" in tripped[0].reason
    assert tripped[0].desired == CPU.min_size


def test_the_hold_lasts_its_time_then_scaling_resumes():
    telemetry = PoolTelemetry(visible=500, in_flight=0, oldest_age_seconds=0.0, desired=12, in_service=2,
                              pending=0, launches=10)
    decision, memory = policy.size_pool(CPU, telemetry, Observation(NOW, {"cpu": telemetry}), PoolMemory(), SETTINGS)
    assert decision.runaway and decision.desired == 2 and memory.runaway_until == NOW + 1800
    quiet = replace(telemetry, desired=2, launches=0)
    held, memory = policy.size_pool(CPU, quiet, Observation(NOW + 1799, {"cpu": quiet}), memory, SETTINGS)
    assert held.runaway and held.desired == 2, "held although the launches left the window"
    resumed, _ = policy.size_pool(CPU, quiet, Observation(NOW + 1800, {"cpu": quiet}), memory, SETTINGS)
    assert not resumed.runaway and resumed.desired > 2


def test_an_operators_pin_is_not_held_by_the_guard():
    telemetry = PoolTelemetry(visible=500, in_flight=0, oldest_age_seconds=0.0, desired=12, in_service=2,
                              pending=0, launches=20)
    observation = Observation(NOW, {"cpu": telemetry}, overrides={"cpu": Override(pinned_desired=15)})
    decision, _ = policy.size_pool(CPU, telemetry, observation, PoolMemory(), SETTINGS)
    assert not decision.runaway and decision.desired == 15


@settings(max_examples=300, deadline=None)
@given(telemetry_strategy, st.integers(0, 20))
def test_launches_that_become_usable_never_trip_the_guard(telemetry, launches):
    """However many launches: while what was asked for is in service or pending, the guard stays out."""
    telemetry = replace(telemetry, launches=launches)
    if telemetry.desired is not None:
        pending = max(0, telemetry.desired - (telemetry.in_service or 0))
        telemetry = replace(telemetry, in_service=telemetry.in_service or 0, pending=pending)
    decision, _ = policy.size_pool(CPU, telemetry, Observation(NOW, {"cpu": telemetry}), PoolMemory(), SETTINGS)
    assert not decision.runaway


def test_the_adapter_counts_recent_successful_and_failed_launches():
    with mock_aws():
        region = build_region()
        fleets = AutoScalingFleets(region.client("autoscaling"), {"cpu": "group"}, lambda *_: None)
    now = 1_800_000_000.0

    def activity(status: str, minutes_ago: float, description: str = "Launching a new EC2 instance: i-1") -> dict:
        return {"ActivityId": "a", "AutoScalingGroupName": "group", "Cause": "c", "Description": description,
                "StatusCode": status, "Progress": 100,
                "StartTime": datetime.datetime.fromtimestamp(now - 60 * minutes_ago, tz=datetime.UTC)}

    stubber = Stubber(fleets.client)
    stubber.add_response("describe_scaling_activities", {"Activities": [
        activity("Successful", 1), activity("Successful", 14), activity("Successful", 16),
        activity("Failed", 2), activity("Successful", 3, "Terminating EC2 instance: i-2")]},
        {"AutoScalingGroupName": "group", "MaxRecords": 20})
    with stubber:
        assert fleets.launch_activity("cpu", now) == (1, 2)


def test_the_hold_survives_a_new_invocation_and_is_published():
    with mock_aws():
        region = build_region()
        state = ControllerState(region.client("dynamodb"), region.settings.table_name, region.name)
        fence = state.acquire_lease("cycle", lease_seconds=55)
        state.save_memory(ControllerMemory(pools={"cpu": PoolMemory(runaway_until=NOW + 1800)}), fence)
        memory, _ = state.load_controls()
        assert memory.of("cpu").runaway_until == NOW + 1800

    telemetry = PoolTelemetry(visible=5, in_flight=0, oldest_age_seconds=0.0, desired=3, in_service=3)
    held = policy.PoolDecision("cpu", 3, 3, None, "runaway guard: holding", held=True, runaway=True)
    steady = policy.PoolDecision("gpu", 0, 0, 0, "steady")
    stream = io.StringIO()
    recorder = MetricsRecorder("d", "us-east-1", stream=stream)
    emit_metrics(recorder, Observation(NOW, {"cpu": telemetry, "gpu": replace(telemetry, desired=0, in_service=0)}),
                 Decision(pools={"cpu": held, "gpu": steady}, moves=(), memory=ControllerMemory()), {})
    recorder.flush()
    published = {}
    for line in stream.getvalue().splitlines():
        document = json.loads(line)
        if "RunawayGuardHolds" in document:
            published[document["Pool"]] = document["RunawayGuardHolds"]
    assert published == {"cpu": 1, "gpu": 0}
