"""Regression tests for "nothing lost, nothing run twice" (issue 17): each counts runner runs, not results."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from crossfleet_control.aws.queues import SqsQueues
from crossfleet_control.core.jobs import Job, JobRejected, parse_job
from crossfleet_worker.agent import run_forever
from crossfleet_worker.runners import JobFailed
from tests.aws_region import Region, build_region
from tests.jobfactory import job_message
from tests.test_intake_and_worker import agent_for, drain_intake, ledger_of, router_for


class CountingRunner:
    """Counts every run per job and the most runs of one job at the same moment; ids in `poison` fail."""

    def __init__(self, seconds: float = 0.0, poison: set[str] | None = None) -> None:
        self.runs: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.most_at_once: Counter[str] = Counter()
        self.seconds = seconds
        self.poison = poison if poison is not None else set()
        self._lock = threading.Lock()

    def run(self, job: Job, payload: bytes) -> bytes:
        with self._lock:
            self.runs[job.id] += 1
            self.running[job.id] += 1
            self.most_at_once[job.id] = max(self.most_at_once[job.id], self.running[job.id])
        try:
            if self.seconds:
                time.sleep(self.seconds)
            if job.id in self.poison:
                raise JobFailed("model server returned 500")
            return b"{}"
        finally:
            with self._lock:
                self.running[job.id] -= 1


class FailFirst:
    """Wraps a client: the first `times` calls of `operation` fail with a throttling error."""

    def __init__(self, client: Any, operation: str, times: int) -> None:
        self._client, self._operation, self.remaining = client, operation, times

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name != self._operation:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.remaining > 0:
                self.remaining -= 1
                raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, name)
            return attribute(*args, **kwargs)
        return call


class SpotNotice:
    def instance_id(self) -> str:
        return "i-doomed"

    def spot_interruption(self) -> bool:
        return True

    def terminating(self) -> bool:
        return False


@pytest.fixture
def region() -> Iterator[Region]:
    with mock_aws():
        yield build_region()


def cpu_job(job_id: str, **overrides: Any) -> dict[str, Any]:
    return job_message(id=job_id, placement="cpu_only", preference="cpu", **overrides)


def run_in_background(agent: Any, work: Any) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(agent.execute(work)))
    thread.start()
    return thread, outcome


# -- behaviour 1: a heartbeat error ----------------------------------------------------------------------------

def test_a_throttled_heartbeat_neither_fails_the_job_nor_lets_a_second_worker_run_it(region: Region):
    region.send("cpu", [cpu_job("beat")])
    runner = CountingRunner(seconds=1.5)
    agent = agent_for(region, "cpu", runner, "i-a", visibility_seconds=3, heartbeat=0.3)
    agent.sqs = FailFirst(agent.sqs, "change_message_visibility", times=1)
    (work,) = agent.receive()
    thread, outcome = run_in_background(agent, work)
    time.sleep(0.6)  # past the throttled heartbeat
    other = agent_for(region, "cpu", runner, "i-b")
    assert other.poll_once() == []
    thread.join()
    assert outcome == ["succeeded"]
    assert runner.runs["beat"] == 1 and runner.most_at_once["beat"] == 1
    assert ledger_of(region).head("beat")["status"] == "succeeded"


def test_a_lost_ledger_claim_stops_the_heartbeat_and_the_result_is_not_recorded(region: Region):
    region.send("cpu", [cpu_job("stolen")])
    runner = CountingRunner(seconds=0.8)
    agent = agent_for(region, "cpu", runner, "i-a", visibility_seconds=3, heartbeat=0.2)
    (work,) = agent.receive()
    ledger = ledger_of(region)
    # Someone else owns the claim now (as if ours had lapsed and another worker claimed it).
    ledger.client.update_item(TableName=ledger.table_name, Key={"pk": {"S": "job#stolen"}, "sk": {"S": "head"}},
                              UpdateExpression="SET claim_owner = :o", ExpressionAttributeValues={":o": {"S": "i-b"}})
    calls: Counter[str] = Counter()
    real_sqs = agent.sqs

    class Counting:
        def __getattr__(self, name: str) -> Any:
            calls[name] += 1
            return getattr(real_sqs, name)
    agent.sqs = Counting()
    assert agent.execute(work) == "lost_claim"
    assert calls["change_message_visibility"] <= 1, "no more heartbeats once the ledger says the claim is gone"
    assert calls["delete_message"] == 0


# -- behaviour 2: heartbeat period at or above the visibility timeout -------------------------------------------

def test_a_heartbeat_period_longer_than_the_lease_still_keeps_the_job_claimed(region: Region):
    region.send("cpu", [cpu_job("slowbeat")])
    runner = CountingRunner(seconds=2.5)
    agent = agent_for(region, "cpu", runner, "i-a", visibility_seconds=2, heartbeat=3600)
    (work,) = agent.receive()
    thread, outcome = run_in_background(agent, work)
    time.sleep(2.2)  # past the original 2 s lease
    assert agent_for(region, "cpu", runner, "i-b").poll_once() == []
    thread.join()
    assert outcome == ["succeeded"] and runner.runs["slowbeat"] == 1


# -- behaviour 3: Spot notice plus Restart=always ---------------------------------------------------------------

def test_an_agent_restarted_under_a_spot_notice_claims_nothing(region: Region):
    region.send("cpu", [cpu_job("spotted")])
    runner = CountingRunner()
    for restart in range(6):  # systemd's Restart=always brings the agent back every few seconds
        agent = agent_for(region, "cpu", runner, f"i-doomed-{restart}")
        run_forever(agent, SpotNotice(), drain_budget_seconds=0, check_seconds=0.3)
    assert runner.runs["spotted"] == 0
    assert ledger_of(region).head("spotted") is None, "no claim, so no attempt spent"
    assert region.job_ids("cpu") == ["spotted"]


def test_a_spot_requeue_does_not_spend_an_attempt(region: Region):
    region.send("cpu", [cpu_job("flaky")])
    runner = CountingRunner(poison={"flaky"})
    for n in range(4):
        doomed = agent_for(region, "cpu", runner, f"i-spot-{n}", max_attempts=2)
        assert [w.job.id for w in doomed.receive()] == ["flaky"]
        assert doomed.requeue_in_flight("spot interruption") == 1
    outcomes = [agent_for(region, "cpu", runner, "i-ok", max_attempts=2).poll_once() for _ in range(3)]
    assert outcomes == [["failed"], ["dead_lettered"], []]
    assert runner.runs["flaky"] == 2, "both attempts ran; the interruptions spent none"


# -- behaviour 5: a rejected id may be resubmitted; an id cannot silently suppress another job ------------------

def test_a_rejected_then_fixed_job_with_the_same_id_runs(region: Region):
    sqs = region.client("sqs")
    sqs.send_message(QueueUrl=region.intake_url, MessageBody=json.dumps(cpu_job("fixme", priority=42)))
    assert drain_intake(region, router_for(region)) == []
    assert ledger_of(region).head("fixme")["status"] == "rejected"
    sqs.send_message(QueueUrl=region.intake_url, MessageBody=json.dumps(cpu_job("fixme")))
    assert drain_intake(region, router_for(region)) == []
    runner = CountingRunner()
    assert agent_for(region, "cpu", runner, "i-a").poll_once() == ["succeeded"]
    assert runner.runs["fixme"] == 1
    assert ledger_of(region).head("fixme")["status"] == "succeeded"


def test_a_different_job_reusing_a_live_id_is_rejected_with_a_reason_not_dropped(region: Region):
    sqs = region.client("sqs")
    sqs.send_message(QueueUrl=region.intake_url, MessageBody=json.dumps(cpu_job("shared")))
    assert drain_intake(region, router_for(region)) == []
    other = cpu_job("shared", payload={"prompt": "someone else's job"})
    sqs.send_message(QueueUrl=region.intake_url, MessageBody=json.dumps(other))
    assert drain_intake(region, router_for(region)) == []
    rejects = sqs.receive_message(QueueUrl=region.rejects_url, MaxNumberOfMessages=10).get("Messages", [])
    assert [json.loads(m["Body"])["job_id"] for m in rejects] == ["shared"]
    assert "already names a different job" in json.loads(rejects[0]["Body"])["reason"]
    runner = CountingRunner()
    agent = agent_for(region, "cpu", runner, "i-a")
    assert agent.poll_once() + agent.poll_once() == ["succeeded"]
    assert runner.runs["shared"] == 1


def test_an_identical_resubmission_is_settled_as_a_duplicate_not_run(region: Region):
    sqs = region.client("sqs")
    body = json.dumps(cpu_job("twice"))
    for _ in range(2):
        sqs.send_message(QueueUrl=region.intake_url, MessageBody=body)
        assert drain_intake(region, router_for(region)) == []
    runner = CountingRunner()
    agent = agent_for(region, "cpu", runner, "i-a")
    assert agent.poll_once() + agent.poll_once() + agent.poll_once() == ["succeeded"]
    assert runner.runs["twice"] == 1
    assert sqs.receive_message(QueueUrl=region.rejects_url).get("Messages", []) == []


# -- behaviour 6: the DLQ redrive can rerun a job -----------------------------------------------------------------

def test_a_dead_lettered_job_redriven_by_sqs_runs_again(region: Region):
    region.send("cpu", [cpu_job("second-chance")])
    runner = CountingRunner(poison={"second-chance"})
    assert agent_for(region, "cpu", runner, "i-a", max_attempts=1).poll_once() == ["dead_lettered"]
    # SQS's "start DLQ redrive" moves the DLQ entry back unchanged: here, the worker's envelope.
    sqs = region.client("sqs")
    (entry,) = sqs.receive_message(QueueUrl=region.settings.pools["cpu"].dead_letter_url)["Messages"]
    sqs.send_message(QueueUrl=region.settings.pools["cpu"].queue_url, MessageBody=entry["Body"])
    sqs.delete_message(QueueUrl=region.settings.pools["cpu"].dead_letter_url, ReceiptHandle=entry["ReceiptHandle"])
    runner.poison.clear()
    assert agent_for(region, "cpu", runner, "i-b", max_attempts=1).poll_once() == ["succeeded"]
    assert runner.runs["second-chance"] == 2
    assert ledger_of(region).head("second-chance")["status"] == "succeeded"


# -- behaviour 7: bodies Python's json cannot turn into a job ---------------------------------------------------

HUGE_INTEGER = '{"schema_version": 1, "id": "huge", "priority": ' + "9" * 5000 + "}"
DEEP_NESTING = '{"schema_version": 1, "id": "deep", "payload": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize("body", [HUGE_INTEGER, DEEP_NESTING], ids=["5000-digit-integer", "deep-nesting"])
def test_unparseable_bodies_are_rejected_by_the_schema(body: str):
    with pytest.raises(JobRejected, match="body is not a job"):
        parse_job(body)


@pytest.mark.parametrize("body", [HUGE_INTEGER, DEEP_NESTING], ids=["5000-digit-integer", "deep-nesting"])
def test_unparseable_bodies_are_rejected_by_the_router_with_a_reason(region: Region, body: str):
    assert router_for(region).route_batch([{"messageId": "m1", "body": body}]) == {"batchItemFailures": []}
    (reject,) = region.client("sqs").receive_message(QueueUrl=region.rejects_url)["Messages"]
    assert json.loads(reject["Body"])["reason"].startswith("body is not a job")


@pytest.mark.parametrize("body", [HUGE_INTEGER, DEEP_NESTING], ids=["5000-digit-integer", "deep-nesting"])
def test_unparseable_bodies_are_quarantined_by_the_worker_and_the_rebalancer(region: Region, body: str):
    region.send("cpu", [body])
    assert agent_for(region, "cpu", CountingRunner(), "i-a").poll_once() == []
    (dead,) = region.dead_letter_bodies("cpu")
    assert dead["reason"].startswith("malformed: body is not a job")
    region.send("gpu", [body])
    queues = SqsQueues(region.client("sqs"), {"gpu": region.settings.pools["gpu"].queue_url}, {},
                       lambda where, error: None)
    jobs, malformed = queues.sample("gpu", 5, 30, lambda: 10.0)
    assert jobs == [] and [m.reason[:17] for m in malformed] == ["body is not a job"]


def test_a_slot_thread_survives_an_unexpected_error(region: Region):
    region.send("cpu", [cpu_job("after-error")])
    runner = CountingRunner()
    agent = agent_for(region, "cpu", runner, "i-a")
    real_receive = agent.receive
    failures = [RuntimeError("bug")]

    def receive(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_receive(*args, **kwargs)
    agent.receive = receive  # type: ignore[method-assign]

    class QuietThenStop:
        checks = 0

        def instance_id(self) -> str:
            return "i-a"

        def spot_interruption(self) -> bool:
            self.checks += 1
            return self.checks > 8

        def terminating(self) -> bool:
            return False
    run_forever(agent, QuietThenStop(), drain_budget_seconds=0, check_seconds=0.25, error_pause_seconds=0.1)
    assert runner.runs["after-error"] == 1


# -- behaviour 8: a reject too large to send --------------------------------------------------------------------

def test_a_large_utf8_body_is_rejected_within_the_sqs_message_limit(region: Region):
    body = json.dumps({"schema_version": 1, "id": "wide", "payload": {"text": "é" * 180_000}}, ensure_ascii=False)
    assert len(body.encode()) > 360_000
    assert router_for(region).route_batch([{"messageId": "m1", "body": body}]) == {"batchItemFailures": []}
    (reject,) = region.client("sqs").receive_message(QueueUrl=region.rejects_url)["Messages"]
    stored = json.loads(reject["Body"])
    assert len(reject["Body"].encode()) <= 256 * 1024
    assert stored["job_id"] == "wide" and stored["body_bytes"] == len(body.encode())
    assert stored["body_truncated"] is True and body.startswith(stored["body"])


# -- behaviour 9: a pin to a US region outside the configuration -------------------------------------------------

def test_a_pin_to_an_unconfigured_us_region_is_rejected_with_a_reason(region: Region):
    body = json.dumps(cpu_job("pinned-away", region="us-west-1"))
    assert router_for(region).route_batch([{"messageId": "m1", "body": body}]) == {"batchItemFailures": []}
    (reject,) = region.client("sqs").receive_message(QueueUrl=region.rejects_url)["Messages"]
    reason = json.loads(reject["Body"])["reason"]
    assert reason == "region='us-west-1': not a region of this deployment; one of us-east-1, or absent"
    assert ledger_of(region).head("pinned-away")["status"] == "rejected"


# -- behaviour 10: SQS's own redrive ------------------------------------------------------------------------------

def crash_until_sqs_dead_letters(region: Region, job_id: str) -> None:
    """A worker claims the job and dies, again and again, until the queue's redrive policy moves it."""
    for n in range(region.settings.max_receive_count + 1):
        agent_for(region, "cpu", CountingRunner(), f"i-crash-{n}", visibility_seconds=1).receive()
        region.reset_visibility()
    assert region.job_ids("cpu") == [] and region.job_ids("cpu", dead_letters=True) == [job_id]


def test_a_job_sqs_dead_letters_on_its_own_ends_dead_lettered_in_the_ledger(region: Region):
    from crossfleet_control.orchestration.rebalance_cycle import run_cycle

    region.send("cpu", [cpu_job("worn-out")])
    crash_until_sqs_dead_letters(region, "worn-out")
    assert ledger_of(region).head("worn-out")["status"] == "running"
    time.sleep(1.1)  # the last crashed claim (1 s lease) lapses, as it must have before SQS could redrive it
    run_cycle(region.deps(mode="observe"), {}, holder="tick", remaining_ms=lambda: 50_000)
    head = ledger_of(region).head("worn-out")
    assert head["status"] == "dead_lettered" and "received" in head["reason"]
    (entry,) = region.dead_letter_bodies("cpu")
    assert entry["rejected_by"] == "sqs" and entry["job_id"] == "worn-out"
    run_cycle(region.deps(mode="observe"), {}, holder="tick-2", remaining_ms=lambda: 50_000)
    assert len(region.dead_letter_bodies("cpu")) == 1, "reconciled once, not wrapped again"


def test_crossfleet_redrive_reruns_dead_lettered_jobs_and_never_a_succeeded_one(region: Region):
    from crossfleet.redrive import redrive

    region.send("cpu", [cpu_job("poisoned"), cpu_job("fine")])
    runner = CountingRunner(poison={"poisoned"})
    agent = agent_for(region, "cpu", runner, "i-a", max_attempts=1)
    assert sorted(agent.poll_once() + agent.poll_once()) == ["dead_lettered", "succeeded"]
    sqs, cpu = region.client("sqs"), region.settings.pools["cpu"]
    # A stale raw copy of the succeeded job (as SQS's own redrive would leave one) sits in the DLQ too.
    sqs.send_message(QueueUrl=cpu.dead_letter_url, MessageBody=json.dumps(cpu_job("fine")))
    report = redrive(sqs, cpu.dead_letter_url, cpu.queue_url)
    assert sorted(report.moved) == ["fine", "poisoned"] and report.failed == 0
    runner.poison.clear()
    agent = agent_for(region, "cpu", runner, "i-b", max_attempts=1)
    assert sorted(agent.poll_once() + agent.poll_once() + agent.poll_once()) == ["succeeded"]
    assert runner.runs == Counter({"poisoned": 2, "fine": 1})
    assert region.job_ids("cpu") == [] and region.dead_letter_bodies("cpu") == []
    assert [h["status"] for h in ledger_of(region).history("poisoned")][-3:] == ["redriven", "running", "succeeded"]


# -- behaviour 4: cross-region identity ----------------------------------------------------------------------------

def test_a_failover_whose_delete_fails_runs_the_job_once_and_the_origin_ledger_shows_the_outcome():
    from dataclasses import replace

    from crossfleet_control.aws.ledger import Ledger
    from crossfleet_control.core.policy_types import ControllerMemory, Decision, Move
    from crossfleet_control.core.settings import PeerRegion
    from crossfleet_control.orchestration.act import apply

    with mock_aws():
        east, west = build_region("us-east-1", gpu_desired=1), build_region("us-west-2", gpu_desired=1)
        east.settings = replace(east.settings, peers={"us-west-2": PeerRegion(
            west.settings.pools["gpu"].queue_url, west.settings.table_name)})
        east.client("sqs").send_message(QueueUrl=east.intake_url, MessageBody=json.dumps(
            job_message(id="travels", placement="gpu_only")))
        assert drain_intake(east, router_for(east)) == []
        deps = east.deps()
        (sampled,), _ = deps.queues.sample("gpu", 1, 30, lambda: 10.0)
        deps.queues.client = FailFirst(deps.queues.client, "delete_message_batch", times=1)
        move = Move(job_id="travels", source="gpu", destination="gpu", reason="failover", detail="test",
                    destination_region="us-west-2")
        applied = apply(deps, Decision(pools={}, moves=(move,), memory=ControllerMemory()), [sampled], "t",
                        deps.state.acquire_lease("t", 55), lambda: 10.0)
        assert applied["moved"] == ["travels"]
        east.reset_visibility()
        assert east.job_ids("gpu") == ["travels"] and west.job_ids("gpu") == ["travels"], "a copy in each region"

        runner = CountingRunner()
        ledgers = {r.name: Ledger(r.client("dynamodb"), r.settings.table_name) for r in (east, west)}
        agents = [agent_for(r, "gpu", runner, f"i-{r.name}") for r in (west, east)]
        for agent in agents:
            agent.ledger_for = ledgers.__getitem__
        outcomes = [o for _ in range(2) for agent in agents for o in agent.poll_once()]
        assert outcomes == ["succeeded"] and runner.runs["travels"] == 1
        head = ledgers["us-east-1"].head("travels")
        assert head["status"] == "succeeded" and head["claim_region"] == "us-west-2"
        assert ledgers["us-west-2"].head("travels") is None, "one identity: the origin region's ledger"
        assert east.job_ids("gpu") == [] and west.job_ids("gpu") == []


def test_a_job_pinned_to_another_region_ends_in_the_ledger_of_the_region_it_was_submitted_to():
    """The guarantee says an outcome is visible from the region the user submitted to. A pinned job used to be
    recorded only in the destination's ledger (submitted in us-east-1, `crossfleet job` there said nothing)."""
    from crossfleet_control.aws.ledger import Ledger

    with mock_aws():
        east, west = build_region("us-east-1"), build_region("us-west-2")
        east.client("sqs").send_message(QueueUrl=east.intake_url, MessageBody=json.dumps(
            job_message(id="pinned-west", placement="gpu_only", region="us-west-2")))
        drain_intake(east, router_for(east, peers={"us-west-2": west.settings.pools["gpu"].queue_url}))
        ledgers = {r.name: Ledger(r.client("dynamodb"), r.settings.table_name) for r in (east, west)}
        head = ledgers["us-east-1"].head("pinned-west")
        assert head is not None and head["region"] == "us-west-2", "the origin knows where it went"
        drain_intake(west, router_for(west))
        runner = CountingRunner()
        agent = agent_for(west, "gpu", runner, "i-west")
        agent.ledger_for = ledgers.__getitem__
        assert agent.poll_once() == ["succeeded"] and runner.runs["pinned-west"] == 1
        assert ledgers["us-east-1"].head("pinned-west")["status"] == "succeeded"
        assert ledgers["us-west-2"].head("pinned-west") is None, "one identity: the origin region's ledger"
