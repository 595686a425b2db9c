"""Scale-in never kills a job that could have finished: the worker protects its instance while it holds jobs
(failure case 6) and keeps its termination hook open while it drains (case 17). moto implements neither
RecordLifecycleActionHeartbeat nor the calls' exact sequence, so botocore's Stubber answers them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.stub import Stubber
from moto import mock_aws

from crossfleet_control.core.jobs import Job
from crossfleet_worker.agent import Agent
from tests.aws_region import Region, build_region
from tests.jobfactory import job_message
from tests.test_intake_and_worker import RecordingRunner, agent_for

OWNER = "i-0123456789abcdef0"


@pytest.fixture
def region() -> Iterator[Region]:
    with mock_aws():
        yield build_region()


def protection(agent: Agent, protected: bool) -> dict[str, object]:
    return {"InstanceIds": [OWNER], "AutoScalingGroupName": agent.settings.group_name,
            "ProtectedFromScaleIn": protected}


def heartbeat(agent: Agent) -> dict[str, object]:
    return {"LifecycleHookName": agent.settings.lifecycle_hook, "AutoScalingGroupName": agent.settings.group_name,
            "InstanceId": OWNER}


class ProtectionSeenRunner(RecordingRunner):
    """Records whether the instance was protected when each run started."""

    def __init__(self, agent_ref: list[Agent]) -> None:
        super().__init__()
        self.agent_ref = agent_ref
        self.protected_at_start: list[bool | None] = []

    def run(self, job: Job, payload: bytes) -> bytes:
        self.protected_at_start.append(self.agent_ref[0].protected)
        return super().run(job, payload)


def test_an_instance_is_protected_from_scale_in_while_it_runs_jobs_and_released_when_idle(region: Region):
    region.send("cpu", [job_message(id=f"p{i}", placement="cpu_only", preference="cpu") for i in range(2)])
    agent_ref: list[Agent] = []
    runner = ProtectionSeenRunner(agent_ref)
    agent = agent_for(region, "cpu", runner, OWNER)
    agent_ref.append(agent)
    lines: list[str] = []
    agent.log = lines.append
    stubber = Stubber(agent.autoscaling)
    # Once on for both jobs (not per job: the call is rate-limited), once off on the first empty poll.
    stubber.add_response("set_instance_protection", {}, protection(agent, True))
    stubber.add_response("set_instance_protection", {}, protection(agent, False))
    with stubber:
        assert agent.poll_once() == ["succeeded"]
        assert agent.poll_once() == ["succeeded"]
        assert agent.poll_once() == [] and agent.poll_once() == []
    stubber.assert_no_pending_responses()
    assert runner.protected_at_start == [True, True], "protected before each run started"
    assert agent.protected is False
    assert not [line for line in lines if "protection" in line], lines  # no unexpected (swallowed) call


def test_a_failed_protection_call_never_fails_the_job_and_is_retried_when_idle(region: Region):
    region.send("cpu", [job_message(id="p-throttled", placement="cpu_only", preference="cpu")])
    agent = agent_for(region, "cpu", RecordingRunner(), OWNER)
    stubber = Stubber(agent.autoscaling)
    stubber.add_client_error("set_instance_protection", service_error_code="Throttling",
                             expected_params=protection(agent, True))
    stubber.add_response("set_instance_protection", {}, protection(agent, False))
    with stubber:
        assert agent.poll_once() == ["succeeded"]
        assert agent.protected is None, "unknown after a failure"
        assert agent.poll_once() == []
    stubber.assert_no_pending_responses()
    assert agent.protected is False


def test_a_restarted_agent_clears_protection_a_crash_may_have_left_on(region: Region):
    agent = agent_for(region, "cpu", RecordingRunner(), OWNER)
    stubber = Stubber(agent.autoscaling)
    stubber.add_response("set_instance_protection", {}, protection(agent, False))
    with stubber:
        assert agent.poll_once() == []
    stubber.assert_no_pending_responses()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def draining(region: Region, job_id: str) -> tuple[Agent, Clock, Stubber]:
    """An agent holding one claimed job, on a hook whose timeout is 90 s (drain budget 60 s)."""
    region.send("cpu", [job_message(id=job_id, placement="cpu_only", preference="cpu")])
    agent = agent_for(region, "cpu", RecordingRunner(), OWNER, drain_seconds=90)
    clock = Clock()
    agent.clock = clock
    stubber = Stubber(agent.autoscaling)
    stubber.add_response("set_instance_protection", {}, protection(agent, True))
    return agent, clock, stubber


def test_a_drain_heartbeats_the_termination_hook_and_requeues_at_the_end_of_its_budget(region: Region):
    agent, clock, stubber = draining(region, "long-drain")
    for _ in range(2):  # at 30 s and 60 s: three beats per 90 s hook timeout
        stubber.add_response("record_lifecycle_action_heartbeat", {}, heartbeat(agent))
    with stubber:
        assert len(agent.receive()) == 1
        started = clock.now
        assert agent.drain(agent.settings.drain_budget_seconds, sleep=clock.sleep) == 1
    stubber.assert_no_pending_responses()
    assert clock.now - started == 60
    assert agent_for(region, "cpu", RecordingRunner(), "i-next").poll_once() == ["succeeded"]


def test_no_active_lifecycle_action_ends_the_drain_at_once(region: Region):
    agent, clock, stubber = draining(region, "hook-gone")
    stubber.add_client_error("record_lifecycle_action_heartbeat", service_error_code="ValidationError",
                             service_message=f"No active Lifecycle Action found with instance ID {OWNER}",
                             expected_params=heartbeat(agent))
    with stubber:
        assert len(agent.receive()) == 1
        started = clock.now
        assert agent.drain(agent.settings.drain_budget_seconds, sleep=clock.sleep) == 1
    stubber.assert_no_pending_responses()
    assert clock.now - started == 30, "requeued at the first beat that found no action, not at the budget's end"
