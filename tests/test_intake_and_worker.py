"""Intake (CLI, router) and the worker agent against moto: every job runs once, none is lost."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from crossfleet.cli import main as cli_main
from crossfleet_control.aws.dead_letters import reconcile_dead_letters
from crossfleet_control.aws.ledger import TERMINAL, Ledger
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.aws.queues import SqsQueues
from crossfleet_control.core.jobs import Job
from crossfleet_control.core.placement import PoolHealth, choose_pool, health_from_decision
from crossfleet_control.core.settings import RouterSettings
from crossfleet_control.orchestration.intake_routing import Router, RoutingView
from crossfleet_worker.agent import Agent, WorkerSettings
from crossfleet_worker.runners import CommandRunner, JobFailed
from tests.aws_region import DEPLOYMENT, Region, build_region
from tests.fakes import FaultyClient, throttled
from tests.jobfactory import job_message, make_job


class RecordingRunner:
    """A fast runner that remembers every run; ids in `poison` always fail."""

    def __init__(self, poison: set[str] = frozenset(), seconds: float = 0.0) -> None:
        self.runs: Counter = Counter()
        self.poison = set(poison)
        self.seconds = seconds

    def run(self, job: Job, payload: bytes) -> bytes:
        self.runs[job.id] += 1
        if self.seconds:
            time.sleep(self.seconds)
        if job.id in self.poison:
            raise JobFailed("model server returned 500")
        return json.dumps({"job": job.id, "echo": json.loads(payload)}).encode()


@pytest.fixture
def region() -> Iterator[Region]:
    with mock_aws():
        yield build_region()


def ledger_of(region: Region) -> Ledger:
    return Ledger(region.client("dynamodb"), region.settings.table_name)


def router_for(region: Region, *, health: dict[str, PoolHealth] | None = None,
               view: Callable[[RouterSettings], RoutingView] | None = None,
               peers: dict[str, str] | None = None) -> Router:
    """The intake router as deployed in `region`: a fixed pool health, or a live `view` of the region's state
    (with `peers`, the other regions' GPU queues it may fail over to)."""
    settings = RouterSettings(deployment=DEPLOYMENT, region=region.name, table_name=region.settings.table_name,
                              queue_urls={p: s.queue_url for p, s in region.settings.pools.items()},
                              rejects_url=region.rejects_url, peer_gpu_queue_urls=peers or {},
                              pool_instance_types={p: list(s.instance_types)
                                                   for p, s in region.settings.pools.items()})
    return Router(settings=settings, sqs=region.client("sqs"), ledger=ledger_of(region),
                  health=(lambda: view(settings)) if view is not None else lambda: RoutingView(health or {}),
                  metrics=MetricsRecorder(DEPLOYMENT, region.name, stream=io.StringIO()),
                  sqs_for_region=lambda r: region.session.client("sqs", region_name=r))


def drain_intake(region: Region, router: Router) -> list[dict]:
    """What the Lambda event source does: deliver batches, delete what the router did not report failed."""
    sqs = region.client("sqs")
    failures = []
    while True:
        messages = sqs.receive_message(QueueUrl=region.intake_url, MaxNumberOfMessages=10,
                                       VisibilityTimeout=30).get("Messages", [])
        if not messages:
            return failures
        result = router.route_batch([{"messageId": m["MessageId"], "body": m["Body"]} for m in messages])
        failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        failures += result["batchItemFailures"]
        for message in messages:
            if message["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=region.intake_url, ReceiptHandle=message["ReceiptHandle"])
        if failed:
            return failures


def agent_for(region: Region, pool: str, runner, owner: str, **overrides) -> Agent:
    spec = region.settings.pools[pool]
    settings = WorkerSettings(
        deployment=DEPLOYMENT, region=region.name, pool=pool, queue_url=spec.queue_url,
        dead_letter_url=spec.dead_letter_url, table_name=region.settings.table_name,
        results_bucket=region.results_bucket, group_name=spec.group_name, lifecycle_hook=f"{spec.group_name}-drain",
        visibility_seconds=overrides.pop("visibility_seconds", 30), heartbeat_seconds=overrides.pop("heartbeat", 60),
        max_attempts=overrides.pop("max_attempts", 3), retry_backoff_seconds=0, wait_seconds=0, **overrides)
    return Agent(settings=settings, sqs=region.client("sqs"), s3=region.client("s3"),
                 autoscaling=region.client("autoscaling"), ledger=ledger_of(region), runner=runner, owner=owner,
                 log=lambda _: None)


# -- submission and routing ------------------------------------------------------------------------------------

def test_submit_cli_then_router_places_each_job_by_placement(region: Region, tmp_path, capsys):
    jobs = [job_message(id="c1", placement="cpu_only", preference="cpu"), job_message(id="g1", placement="gpu_only"),
            job_message(id="e1", placement="either", preference="cpu"), {"class": "eval", "placement": "either",
                                                                        "size": {"input_tokens": 10},
                                                                        "deadline_seconds": 60}]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs))
    assert cli_main(["submit", str(path), "--queue-url", region.intake_url, "--region", region.name]) == 0
    printed = capsys.readouterr()
    assert printed.out.split()[:3] == ["c1", "g1", "e1"] and "4 submitted, 0 invalid, 0 failed" in printed.err
    generated_id = printed.out.split()[3]

    assert drain_intake(region, router_for(region)) == []
    assert set(region.job_ids("cpu")) == {"c1", "e1"}
    assert set(region.job_ids("gpu")) == {"g1", generated_id}, "either defaults to the GPU preference"
    ledger = ledger_of(region)
    assert ledger.head("c1")["status"] == "queued" and ledger.head("c1")["pool"] == "cpu"
    assert [h["status"] for h in ledger.history("g1")] == ["queued"]


def test_submit_cli_reports_invalid_jobs_and_sends_only_valid_ones(region: Region, tmp_path, capsys):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([job_message(id="ok"), job_message(id="bad", placement="somewhere")]))
    assert cli_main(["submit", str(path), "--queue-url", region.intake_url]) == 1
    err = capsys.readouterr().err
    assert "job 2: not sent: placement='somewhere': one of cpu_only, gpu_only, either" in err
    assert region.job_ids("intake") == ["ok"]


def test_invalid_submissions_go_to_the_rejects_store_with_their_reason(region: Region):
    sqs = region.client("sqs")
    # The oversized payload still fits an SQS message (256 KiB) but not crossfleet's inline limit (200 KiB).
    for body in ("not json", json.dumps(job_message(id="late", schema_version=7)),
                 json.dumps(job_message(id="big", payload={"blob": "x" * 210_000}))):
        sqs.send_message(QueueUrl=region.intake_url, MessageBody=body)
    router = router_for(region)
    assert drain_intake(region, router) == []
    rejects = region.client("sqs").receive_message(QueueUrl=region.rejects_url, MaxNumberOfMessages=10)["Messages"]
    reasons = sorted(json.loads(m["Body"])["reason"] for m in rejects)
    assert len(reasons) == 3
    assert reasons[0].startswith("body is not JSON")
    assert reasons[1].startswith("payload is") and "upload it to S3" in reasons[1]
    assert reasons[2] == "schema_version=7: this crossfleet reads schema_version 1"
    assert ledger_of(region).head("late")["status"] == "rejected"
    assert region.job_ids("cpu") == [] and region.job_ids("gpu") == []


def test_a_failed_send_is_reported_so_sqs_redelivers_it(region: Region):
    region.client("sqs").send_message(QueueUrl=region.intake_url, MessageBody=json.dumps(job_message(id="retry")))
    router = router_for(region)
    router.sqs = FaultyClient(router.sqs, {"send_message": throttled("SendMessage")})
    assert len(drain_intake(region, router)) == 1
    assert region.job_ids("intake") == ["retry"], "still in the intake queue, not lost"
    region.reset_visibility()
    assert drain_intake(region, router_for(region)) == []
    assert region.job_ids("gpu") == ["retry"] and region.job_ids("intake") == []


def test_region_pinned_job_is_forwarded_to_that_regions_intake():
    with mock_aws():
        east, west = build_region("us-east-1"), build_region("us-west-2")
        east.client("sqs").send_message(QueueUrl=east.intake_url,
                                        MessageBody=json.dumps(job_message(id="pinned", region="us-west-2")))
        # Both regions are in the deployment (the stacks give each router its peers); a pin elsewhere is rejected.
        drain_intake(east, router_for(east, peers={"us-west-2": west.settings.pools["gpu"].queue_url}))
        assert west.job_ids("intake") == ["pinned"] and east.job_ids("gpu") == []
        drain_intake(west, router_for(west))
        assert west.job_ids("gpu") == ["pinned"]


def test_placement_avoids_a_pool_the_rebalancer_saw_unable_to_take_work():
    either = make_job(placement="either", preference="gpu")
    gpu_only = make_job(placement="gpu_only")
    record = {"observation": {"gpu": {"failed_launches": 3, "in_service": 0}, "cpu": {"in_service": 2}},
              "overrides": {}, "pools": {}}
    health = health_from_decision(record)
    assert choose_pool(either, health) == ("cpu", "preferred gpu admitting 0% (launches failing and nothing "
                                                  "in service)")
    assert choose_pool(gpu_only, health)[0] == "gpu", "placement is never broken"
    frozen = health_from_decision({"observation": {"gpu": {}, "cpu": {}}, "overrides": {"gpu": {"frozen": True}}})
    assert choose_pool(either, frozen)[0] == "cpu"
    assert choose_pool(either, {})[0] == "gpu"


# -- the worker agent ------------------------------------------------------------------------------------------

def test_duplicate_delivery_runs_once(region: Region):
    message = job_message(id="dup", placement="cpu_only", preference="cpu")
    region.send("cpu", [message, message])
    runner = RecordingRunner()
    agent = agent_for(region, "cpu", runner, "i-a")
    assert agent.poll_once() == ["succeeded"]
    assert agent.poll_once() == [], "the second copy is recognised and deleted, not run"
    assert runner.runs["dup"] == 1
    assert region.job_ids("cpu") == []
    head = ledger_of(region).head("dup")
    assert head["status"] == "succeeded" and head["result_uri"].startswith(f"s3://{region.results_bucket}/results/dup/")
    body = region.client("s3").get_object(Bucket=region.results_bucket, Key=head["result_uri"].split("/", 3)[3])
    assert json.loads(body["Body"].read())["job"] == "dup"


def test_crash_mid_job_reappears_after_the_visibility_timeout_and_completes_once(region: Region):
    region.send("cpu", [job_message(id="crashy", placement="cpu_only", preference="cpu")])
    crashed = agent_for(region, "cpu", RecordingRunner(), "i-crashed", visibility_seconds=1)
    assert [w.job.id for w in crashed.receive()] == ["crashy"]  # claimed, then the process dies
    survivor_runner = RecordingRunner()
    survivor = agent_for(region, "cpu", survivor_runner, "i-survivor", visibility_seconds=1)
    assert survivor.poll_once() == [], "invisible while the crashed worker's lease lasts"
    time.sleep(1.2)
    assert survivor.poll_once() == ["succeeded"]
    assert survivor_runner.runs["crashy"] == 1
    statuses = [(h["status"], h.get("owner")) for h in ledger_of(region).history("crashy")]
    assert statuses == [("running", "i-crashed"), ("running", "i-survivor"), ("succeeded", "i-survivor")]


def test_spot_interruption_requeues_and_another_agent_completes(region: Region):
    region.send("gpu", [job_message(id="spot", placement="gpu_only")])
    doomed = agent_for(region, "gpu", RecordingRunner(), "i-spot")
    doomed.receive()
    assert doomed.requeue_in_flight("spot interruption") == 1
    assert doomed.receive() == [], "an interrupted agent takes no new work"
    other = agent_for(region, "gpu", RecordingRunner(), "i-other")
    assert other.poll_once() == ["succeeded"]
    assert [h["status"] for h in ledger_of(region).history("spot")] == ["running", "interrupted", "running",
                                                                         "succeeded"]


def test_poison_job_is_dead_lettered_with_its_reason_after_max_attempts(region: Region):
    region.send("cpu", [job_message(id="poison", placement="cpu_only", preference="cpu")])
    runner = RecordingRunner(poison={"poison"})
    agent = agent_for(region, "cpu", runner, "i-a", max_attempts=3)
    outcomes = [agent.poll_once() for _ in range(4)]
    assert outcomes == [["failed"], ["failed"], ["dead_lettered"], []]
    assert runner.runs["poison"] == 3
    (dead,) = region.dead_letter_bodies("cpu")
    assert dead["job_id"] == "poison" and dead["reason"] == "failed 3 times: model server returned 500"
    assert ledger_of(region).head("poison")["status"] == "dead_lettered"
    assert region.job_ids("cpu") == []


def test_malformed_message_on_a_pool_queue_is_dead_lettered(region: Region):
    region.send("gpu", ["{oops"])
    assert agent_for(region, "gpu", RecordingRunner(), "i-a").poll_once() == []
    (dead,) = region.dead_letter_bodies("gpu")
    assert dead["reason"].startswith("malformed: body is not JSON")


def test_heartbeat_keeps_a_long_job_invisible_and_claimed(region: Region):
    region.send("cpu", [job_message(id="long", placement="cpu_only", preference="cpu")])
    agent = agent_for(region, "cpu", RecordingRunner(seconds=2.5), "i-a", visibility_seconds=2, heartbeat=0.5)
    (work,) = agent.receive()
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(agent.execute(work)))
    thread.start()
    time.sleep(2.2)  # past the original 2 s lease
    assert agent_for(region, "cpu", RecordingRunner(), "i-b").poll_once() == []
    thread.join()
    assert outcome == ["succeeded"]


def test_scale_in_drains_requeues_and_completes_the_lifecycle_action(region: Region):
    region.send("cpu", [job_message(id="drain-me", placement="cpu_only", preference="cpu")])
    agent = agent_for(region, "cpu", RecordingRunner(), "i-0123456789abcdef0")
    agent.receive()
    assert agent.drain(budget_seconds=0) == 1
    stubber = Stubber(agent.autoscaling)
    expected = {"LifecycleHookName": agent.settings.lifecycle_hook,
                "AutoScalingGroupName": agent.settings.group_name, "LifecycleActionResult": "CONTINUE",
                "InstanceId": "i-0123456789abcdef0"}
    stubber.add_response("complete_lifecycle_action", {}, expected)
    stubber.add_client_error("complete_lifecycle_action", service_error_code="ValidationError",
                             service_message="No active Lifecycle Action found with instance ID i-0123456789abcdef0",
                             expected_params=expected)
    with stubber:
        assert agent.complete_lifecycle() is True
        assert agent.complete_lifecycle() is True, "an already-completed action counts as done"
    stubber.assert_no_pending_responses()
    assert agent_for(region, "cpu", RecordingRunner(), "i-next").poll_once() == ["succeeded"]


def test_job_outcomes_are_published_for_the_slo_panel(region: Region):
    from crossfleet_worker.job_metrics import JobMetrics

    now = time.time()
    region.send("cpu", [job_message(id="fast", placement="cpu_only", preference="cpu", submitted_at=now,
                                    deadline_seconds=60),
                        job_message(id="slow", placement="cpu_only", preference="cpu", submitted_at=now - 600,
                                    deadline_seconds=60)])
    agent = agent_for(region, "cpu", RecordingRunner(), "i-a")
    agent.job_metrics = JobMetrics(region.client("cloudwatch"), DEPLOYMENT, region.name, "cpu", flush_seconds=3600)
    assert agent.poll_once() + agent.poll_once() == ["succeeded", "succeeded"]
    assert agent.job_metrics.flush() is True
    assert agent.job_metrics.flush() is False, "nothing new to publish"
    cloudwatch = region.client("cloudwatch")
    dimensions = [{"Name": "Deployment", "Value": DEPLOYMENT}, {"Name": "Region", "Value": region.name},
                  {"Name": "Pool", "Value": "cpu"}]

    def total(name: str) -> float:
        points = cloudwatch.get_metric_statistics(
            Namespace="crossfleet", MetricName=name, Dimensions=dimensions, StartTime=now - 3600,
            EndTime=now + 3600, Period=3600, Statistics=["Sum"])["Datapoints"]
        return sum(p["Sum"] for p in points)

    assert (total("JobsOnTime"), total("JobsLate")) == (1, 1)


def test_command_runner_runs_a_template_and_reports_failures(tmp_path):
    job = make_job(id="cmd-1")
    echo = CommandRunner(argv=("python3", "-c", "import sys, shutil; shutil.copy(sys.argv[1], sys.argv[2])",
                               "{input}", "{output}"))
    assert json.loads(echo.run(job, b'{"prompt": "hi"}')) == {"prompt": "hi"}
    with pytest.raises(JobFailed, match="command exited 3"):
        CommandRunner(argv=("python3", "-c", "raise SystemExit(3)")).run(job, b"{}")


# -- conservation ------------------------------------------------------------------------------------------------

def test_conservation_under_random_faults(region: Region):
    """N jobs, duplicates, crashes (before the run and between the run and its durable outcome), interruptions,
    poison and throttling, then healthy workers and the rebalancer's DLQ reconciliation: every job ends in
    exactly one terminal status, and the runner ran each job exactly as often as docs/job-lifecycle.md allows.

    Counts the runner's runs (not what `execute` returned) and accepts only terminal statuses at the end: an
    earlier version accepted every status and counted `execute()` results, so a job stuck `running`, or a
    duplicate that ran and was then discarded, passed it."""
    rng = random.Random(20261122)
    n, max_attempts = 30, 2
    ids = [f"cons-{i}" for i in range(n)]
    poison = set(rng.sample(ids, 3))
    bodies = []
    for job_id in ids:
        body = job_message(id=job_id, placement="cpu_only", preference="cpu")
        bodies.append(body)
        if rng.random() < 0.3:
            bodies.append(body)  # duplicate delivery
    rng.shuffle(bodies)
    region.send("cpu", bodies)
    runner = RecordingRunner(poison=poison)
    # Jobs whose run ended without a durable outcome (the process died after the runner returned): the only
    # ones the guarantee lets run again.
    rerun_allowed: Counter = Counter()
    faults: Counter = Counter()

    def crash() -> Exception:
        return SystemError("process killed after the run, before the result was stored")

    for round_number in range(40):
        owner = f"i-{round_number}"
        agent = agent_for(region, "cpu", runner, owner, visibility_seconds=1, max_attempts=max_attempts)
        if rng.random() < 0.3:
            agent.ledger.client = FaultyClient(agent.ledger.client, {"update_item": throttled("UpdateItem")})
            faults["throttled"] += 1
        try:
            claimed = agent.receive(max_messages=10)
        except ClientError:
            continue  # throttled claim: the message comes back after its lease
        for work in claimed:
            fate = rng.random()
            if fate < 0.15:
                faults["crash before run"] += 1
                continue  # crash: abandon the claim and the message
            if fate < 0.25:
                faults["interrupted"] += 1
                agent.requeue_in_flight("spot interruption")
                break
            if fate < 0.32 and work.job.id not in poison:
                faults["crash after run"] += 1
                rerun_allowed[work.job.id] += 1
                agent.s3 = FaultyClient(agent.s3, {"put_object": crash})
                with pytest.raises(SystemError):
                    agent.execute(work)
                break  # this process is dead
            agent.execute(work)
        time.sleep(0.35)
        region.reset_visibility()

    # Time passes (every crashed claim's 1 s lease lapses) and healthy workers finish the rest; the
    # rebalancer's reconciliation settles whatever SQS dead-lettered by itself.
    time.sleep(1.1)
    healthy = agent_for(region, "cpu", runner, "i-healthy", visibility_seconds=1, max_attempts=max_attempts)
    for _ in range(20):
        while healthy.poll_once():
            pass
        region.reset_visibility()
        if not region.job_ids("cpu"):
            break
        time.sleep(1.1)
    assert region.job_ids("cpu") == [], "every message on the pool queue reached an outcome"
    queues = SqsQueues(region.client("sqs"), {"cpu": region.settings.pools["cpu"].queue_url},
                       {"cpu": region.settings.pools["cpu"].dead_letter_url}, lambda *_: None)
    reconcile_dead_letters(queues, ledger_of(region), "cpu", limit=100, time_left=lambda: 1.0)

    ledger = ledger_of(region)
    statuses: Counter = Counter()
    by_sqs = set()
    for job_id in ids:
        history = ledger.history(job_id)
        terminal = [h for h in history if h["status"] in TERMINAL]
        assert len(terminal) == 1, f"{job_id}: exactly one terminal outcome, got {terminal}"
        status = ledger.head(job_id)["status"]
        assert status == terminal[0]["status"]
        statuses[status] += 1
        if terminal[0].get("by") == "sqs redrive":
            by_sqs.add(job_id)
        runs, allowed_extra = runner.runs[job_id], rerun_allowed[job_id]
        if job_id in poison:
            assert status == "dead_lettered"
            # At most max_attempts runs: a claim abandoned by a crash before the run also spends an attempt.
            assert runs <= max_attempts and (runs >= 1 or job_id in by_sqs), (job_id, runs)
        elif job_id in by_sqs:
            assert status == "dead_lettered" and runs <= allowed_extra, (job_id, runs)
        else:
            assert status == "succeeded", job_id
            # Once, plus one more for each run whose process died before `succeeded` was written.
            assert 1 <= runs <= 1 + allowed_extra, (job_id, runs, allowed_extra)
    assert sum(statuses.values()) == n
    dead_by_worker = {d["job_id"] for d in region.dead_letter_bodies("cpu") if d.get("rejected_by") == "worker"}
    assert dead_by_worker == {j for j in ids if ledger.head(j)["status"] == "dead_lettered"} - by_sqs
    # The faults really happened (so the invariants above were tested, not vacuous).
    assert all(faults[f] > 0 for f in ("throttled", "crash before run", "interrupted", "crash after run")), faults
    assert sum(rerun_allowed.values()) and any(runner.runs[j] > 1 for j in rerun_allowed), "a rerun was exercised"
    assert statuses["succeeded"] >= n - len(poison) - 5 and statuses["dead_lettered"] >= len(poison)
    assert len(bodies) > n, "duplicates were delivered"


def test_job_command_follows_a_job_through_the_ledger(region: Region, capsys):
    region.send("cpu", [job_message(id="follow-me", placement="cpu_only", preference="cpu")])
    ledger_of(region).record_queued("follow-me", pool="cpu", region=region.name, via="test")
    agent_for(region, "cpu", RecordingRunner(), "i-0abc").poll_once()
    assert cli_main(["job", "follow-me", "--region", region.name, "--table", region.settings.table_name]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("follow-me: succeeded (pool cpu, attempt 1), result s3://")
    assert [line.split()[2] for line in out[1:]] == ["queued", "running", "succeeded"]
    assert cli_main(["job", "nobody", "--region", region.name, "--table", region.settings.table_name]) == 1
