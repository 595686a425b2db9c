"""Chaos: 10,000 jobs of every class and placement through the real router, agent, ledger and rebalancer
adapters, in two regions, over in-memory SQS/DynamoDB/S3 (tests/chaos_fakes.py), with random faults at every
step. It counts runner invocations and checks the guarantee of docs/job-lifecycle.md.

Faults: a throttle, or a process death just before or just after, on every durable write (SQS send, delete,
visibility change, ledger put/update, S3 put, lifecycle completion); throttled reads; heartbeat failures
during long jobs, with a duplicate copy delivered to another worker while the first runs; Spot notices with
agent restarts; scale-in drains (completing an already-completed lifecycle action); SQS's own redrive after
`maxReceiveCount`; duplicate submissions and SQS duplicate deliveries; rebalancer moves between pools and
failovers to the other region whose deletes fail; worker restarts after every crash.

Reproduce a failure with the command it prints (its seed and job count in `CROSSFLEET_CHAOS_SEED` and
`CROSSFLEET_CHAOS_JOBS`). Long jobs
run on real threads (the agent's heartbeat is wall-clock), so their interleaving can vary between runs of one
seed; everything else is drawn from the seed. `CROSSFLEET_CHAOS_JOBS` changes the job count. The longer soak
(`-m soak`, deselected by `make test`) runs more jobs over several fresh seeds.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from crossfleet_control.aws.dead_letters import reconcile_dead_letters
from crossfleet_control.aws.ledger import TERMINAL, Ledger
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.aws.queues import RegionForwarder, SqsQueues
from crossfleet_control.core.jobs import JOB_CLASSES, Job
from crossfleet_control.core.policy_types import ControllerMemory, Decision, Move
from crossfleet_control.core.settings import RouterSettings
from crossfleet_control.orchestration import act
from crossfleet_control.orchestration.intake_routing import Router, RoutingView
from crossfleet_worker.agent import Agent, InFlight, WorkerSettings
from crossfleet_worker.runners import JobFailed
from tests.chaos_fakes import (
    Clock,
    Crash,
    FakeAutoScaling,
    FakeDynamoDb,
    FakeS3,
    FakeSqs,
    FaultPlan,
    Faulty,
    job_of,
)

DEPLOYMENT = "chaos"
REGIONS = ("us-east-1", "us-west-2")
POOLS = ("cpu", "gpu")
LEASE = 30  # queues.visibility_timeout_seconds (virtual seconds)
MAX_RECEIVE = 5  # queues.max_receive_count: at least max_attempts + 2, as the config requires
MAX_ATTEMPTS = 3
DEFAULT_SEED = 20261130


@dataclass
class Tally:
    """What the driver and the runner saw, per job id."""

    runs: Counter[str] = field(default_factory=Counter)
    failed_runs: Counter[str] = field(default_factory=Counter)  # the runner raised JobFailed
    unrecorded: Counter[str] = field(default_factory=Counter)  # ran, but its process recorded no outcome
    running: Counter[str] = field(default_factory=Counter)
    cut_off: set[str] = field(default_factory=set)  # a run whose heartbeat failed or whose process died mid-run
    overlaps: list[tuple[str, bool]] = field(default_factory=list)  # (job, was the first run cut off)
    after_success: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)  # a live run whose heartbeat did not renew its lease in time
    events: Counter[str] = field(default_factory=Counter)


class ChaosRunner:
    """Counts every run; poison jobs always fail, flaky ones fail their first run; long ones heartbeat."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.lock = threading.Lock()

    def run(self, job: Job, payload: bytes) -> bytes:
        world, tally = self.world, self.world.tally
        with self.lock:
            tally.runs[job.id] += 1
            if tally.running[job.id]:
                tally.overlaps.append((job.id, job.id in tally.cut_off))
            tally.running[job.id] += 1
            if world.truth(job).head(job.id).get("status") == "succeeded":  # type: ignore[union-attr]
                tally.after_success.append(job.id)
        try:
            if job.id in world.long:
                # Longer than the lease (4 x 9 s of virtual time against 30 s): only heartbeats keep it ours.
                for step in range(4):
                    time.sleep(0.06)
                    self.wait_for_renewal(job, ahead=9)
                    world.clock.advance(9)
                    if step == 1:
                        world.interfere(job)
            if job.id in world.poison or (job.id in world.flaky and tally.runs[job.id] == 1):
                with self.lock:
                    tally.failed_runs[job.id] += 1
                raise JobFailed("model server returned 500")
            return json.dumps({"id": job.id}).encode()
        finally:
            with self.lock:
                tally.running[job.id] -= 1


    def wait_for_renewal(self, job: Job, *, ahead: float, patience: float = 2.0) -> None:
        """Virtual time moves only as far as a live heartbeat allows. Each step of a long job waits until its
        lease reaches `ahead` seconds past now before advancing the clock that far; otherwise the clock could
        outrun a heartbeat thread that the OS simply had not scheduled yet (a load-dependent lapse that no fault
        caused). A run whose renewals stopped because a fault cut it off proceeds at once; a live run that does
        not renew within `patience` real seconds is recorded as stalled, which the guarantee check refuses."""
        world, tally = self.world, self.world.tally
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if job.id in tally.cut_off:
                return
            head = world.truth(job).head(job.id) or {}
            if head.get("status") != "running" or float(head.get("claim_until", 0)) >= world.clock() + ahead:
                return
            time.sleep(0.002)
        with self.lock:
            tally.stalled.append(job.id)


class World:
    def __init__(self, seed: int, jobs: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.lock = threading.RLock()
        self.plan = FaultPlan(roll=self.rng.random)
        self.sqs = FakeSqs(self.clock, self.lock, duplicate=lambda: self.plan.armed and self.rng.random() < 0.01,
                           tie=lambda: self.rng.getrandbits(32))
        self.tables = {r: FakeDynamoDb(self.lock) for r in REGIONS}
        self.s3 = FakeS3(self.lock)
        self.autoscaling = FakeAutoScaling(self.lock)
        self.tally = Tally()
        self.runner = ChaosRunner(self)
        self.urls: dict[tuple[str, str], str] = {}
        self.dlqs: dict[tuple[str, str], str] = {}
        for region in REGIONS:
            for pool in POOLS:
                dlq = self.sqs.create(f"{DEPLOYMENT}-{region}-{pool}-dlq")
                self.dlqs[(region, pool)] = dlq
                self.urls[(region, pool)] = self.sqs.create(f"{DEPLOYMENT}-{region}-{pool}", dead_letter_url=dlq,
                                                            max_receive=MAX_RECEIVE)
            self.urls[(region, "intake")] = self.sqs.create(f"{DEPLOYMENT}-{region}-intake")
            self.urls[(region, "rejects")] = self.sqs.create(f"{DEPLOYMENT}-{region}-rejects")
        self.agents: dict[tuple[str, str], list[Agent]] = {
            (r, p): [self.agent(r, p) for _ in range(3)] for r in REGIONS for p in POOLS}
        self.instances = 0
        self.running_on: dict[str, tuple[str, str]] = {}  # job id -> the (region, pool) queue it runs from
        self.submitted: dict[str, str] = {}  # accepted job id -> the region whose ledger holds it
        self.invalid: set[str] = set()
        self.poison: set[str] = set()
        self.flaky: set[str] = set()
        self.long: set[str] = set()
        self._make_jobs(jobs)

    # -- construction ------------------------------------------------------------------------------------------
    def ledger(self, region: str) -> Ledger:
        return Ledger(Faulty(self.tables[region], self.plan), f"{DEPLOYMENT}-{region}-state", clock=self.clock)

    def truth(self, job: Job | str) -> Ledger:
        """The origin ledger, read without faults (the test's own view)."""
        job_id = job if isinstance(job, str) else job.id
        region = self.submitted.get(job_id) or (job.origin if isinstance(job, Job) and job.origin else REGIONS[0])
        return Ledger(self.tables[region], f"{DEPLOYMENT}-{region}-state", clock=self.clock)

    def agent(self, region: str, pool: str, owner: str | None = None) -> Agent:
        if owner is None:
            self.instances = getattr(self, "instances", 0) + 1
            owner = f"i-{region[-1]}{pool}{self.instances:05d}"
        settings = WorkerSettings(
            deployment=DEPLOYMENT, region=region, pool=pool, queue_url=self.urls[(region, pool)],
            dead_letter_url=self.dlqs[(region, pool)], table_name=f"{DEPLOYMENT}-{region}-state",
            results_bucket=f"{DEPLOYMENT}-{region}-results", group_name=f"{DEPLOYMENT}-{region}-{pool}",
            lifecycle_hook=f"{DEPLOYMENT}-{region}-{pool}-drain", visibility_seconds=LEASE, heartbeat_seconds=0.01,
            max_attempts=MAX_ATTEMPTS, retry_backoff_seconds=1, wait_seconds=0, drain_seconds=60)

        def log(line: str) -> None:
            if "heartbeat failed" in line:
                self.tally.cut_off.add(line.split()[1].rstrip(":"))
                self.tally.events["heartbeat failed"] += 1

        return Agent(settings=settings, sqs=Faulty(self.sqs, self.plan), s3=Faulty(self.s3, self.plan),
                     autoscaling=Faulty(self.autoscaling, self.plan), ledger=self.ledger(region),
                     runner=self.runner, owner=owner, clock=self.clock, log=log, ledger_for=self.ledger)

    def router(self, region: str) -> Router:
        other = next(r for r in REGIONS if r != region)
        settings = RouterSettings(deployment=DEPLOYMENT, region=region, table_name=f"{DEPLOYMENT}-{region}-state",
                                  queue_urls={p: self.urls[(region, p)] for p in POOLS},
                                  rejects_url=self.urls[(region, "rejects")],
                                  peer_gpu_queue_urls={other: self.urls[(other, "gpu")]})
        sqs = Faulty(self.sqs, self.plan)
        return Router(settings=settings, sqs=sqs, ledger=self.ledger(region), health=lambda: RoutingView({}),
                      metrics=MetricsRecorder(DEPLOYMENT, region, stream=io.StringIO()),
                      sqs_for_region=lambda _: sqs)

    def _make_jobs(self, count: int) -> None:
        rng = self.rng
        bodies: list[tuple[str, str]] = []
        for n in range(count):
            placement = rng.choice(("cpu_only", "gpu_only", "either"))
            preference = {"cpu_only": "cpu", "gpu_only": "gpu"}.get(placement) or rng.choice(("cpu", "gpu"))
            body: dict[str, Any] = {
                "schema_version": 1, "id": f"c{n:05d}", "class": JOB_CLASSES[n % len(JOB_CLASSES)],
                "placement": placement, "preference": preference, "size": {"input_tokens": rng.randint(1, 4000)},
                "deadline_seconds": rng.choice((30, 120, 3600)), "priority": rng.randint(0, 9),
                "submitted_at": self.clock(), "payload": {"n": n}}
            home = REGIONS[0]
            if rng.random() < 0.05:
                # Pinned: the first router forwards it to the other region and records it here, where it was
                # submitted; the other region's workers claim and finish it in this ledger.
                body["region"] = REGIONS[1]
            if rng.random() < 0.01:
                body["placement"] = "somewhere"  # invalid: rejected at intake, never run
                self.invalid.add(body["id"])
            else:
                self.submitted[body["id"]] = home
                draw = rng.random()
                if draw < 0.02:
                    self.poison.add(body["id"])
                elif draw < 0.07:
                    self.flaky.add(body["id"])
                elif draw < 0.073:
                    self.long.add(body["id"])
            copies = 2 if rng.random() < 0.05 else 1  # the producer retried: a duplicate submission
            bodies += [(REGIONS[0], json.dumps(body))] * copies
        rng.shuffle(bodies)
        for region, text in bodies:
            self.sqs.send_message(QueueUrl=self.urls[(region, "intake")], MessageBody=text)

    # -- one step of each actor ----------------------------------------------------------------------------------
    def route(self, region: str) -> int:
        """The Lambda event source: a batch in, every message not reported failed deleted."""
        url = self.urls[(region, "intake")]
        try:
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                                VisibilityTimeout=LEASE).get("Messages", [])
            if not messages:
                return 0
            result = self.router(region).route_batch([{"messageId": m["MessageId"], "body": m["Body"]}
                                                      for m in messages])
            failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
            for message in messages:
                if message["MessageId"] not in failed:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            return len(messages)
        except Crash:
            self.tally.events["router crashed"] += 1
            return 1

    def execute(self, agent: Agent, work: InFlight) -> str:
        """`execute` as a slot thread runs it; a crash kills the process (the caller restarts the agent)."""
        job_id, before = work.job.id, self.tally.runs[work.job.id]
        outcome = "crashed"
        self.running_on[job_id] = (agent.settings.region, agent.settings.pool)
        try:
            outcome = agent.execute(work)
            return outcome
        except Exception as error:  # run_forever's slot loop logs it and carries on
            outcome = f"error {type(error).__name__}"
            return outcome
        finally:
            if self.tally.runs[job_id] > before and outcome not in ("succeeded", "failed", "dead_lettered"):
                self.tally.unrecorded[job_id] += 1
                if outcome == "crashed" and self.tally.running[job_id]:
                    self.tally.cut_off.add(job_id)  # its runner thread outlives the dead process

    def work(self, region: str, pool: str, slot: int) -> int:
        agents = self.agents[(region, pool)]
        agent = agents[slot]
        fate = self.rng.random() if self.plan.armed else 1.0
        try:
            claimed = agent.receive(self.rng.randint(1, 5), wait_seconds=0)
            if fate < 0.01:
                # Spot notice: give everything back; systemd restarts the agent, which sees the notice and takes
                # no work; the instance is then gone and a replacement comes up.
                self.tally.events["spot"] += 1
                agent.requeue_in_flight("spot interruption")
                restarted = self.agent(region, pool, owner=agent.owner)
                restarted.stopping.set()
                assert restarted.receive() == []
                agents[slot] = self.agent(region, pool)
                return len(claimed)
            if fate < 0.02:
                self.tally.events["scale-in"] += 1
                self.autoscaling.active.add(agent.owner)
                agent.drain(0, sleep=lambda _: None)
                agent.complete_lifecycle()
                agent.complete_lifecycle()  # already completed: "no active lifecycle action" counts as done
                agents[slot] = self.agent(region, pool)
                return len(claimed)
            for work in claimed:
                self.execute(agent, work)
            return len(claimed)
        except Crash:
            self.tally.events["worker crashed"] += 1
            agents[slot] = self.agent(region, pool, owner=agent.owner)  # systemd restarts it on the same instance
            return 1
        except Exception:
            self.tally.events["slot error"] += 1
            return 1

    def interfere(self, job: Job) -> None:
        """While a long job runs: a duplicate copy is delivered to another worker on the queue it came from."""
        where = self.running_on.get(job.id)
        if where is None:
            return
        region, pool = where
        self.sqs.send_message(QueueUrl=self.urls[(region, pool)], MessageBody=job.to_json())
        self.tally.events["duplicate during a run"] += 1
        other = self.agent(region, pool)
        try:
            for work in other.receive(10, wait_seconds=0):
                self.execute(other, work)
        except (Crash, Exception):
            self.tally.events["interfering worker crashed"] += 1

    def rebalance(self, region: str) -> None:
        """The rebalancer's queue work: DLQ reconciliation, and sampled jobs moved by the real `act.apply`."""
        other = next(r for r in REGIONS if r != region)
        metrics = MetricsRecorder(DEPLOYMENT, region, stream=io.StringIO())
        queues = SqsQueues(Faulty(self.sqs, self.plan), {p: self.urls[(region, p)] for p in POOLS},
                           {p: self.dlqs[(region, p)] for p in POOLS}, lambda *_: None)
        ledger = self.ledger(region)
        try:
            for pool in POOLS:
                reconcile_dead_letters(queues, ledger, pool, limit=50, time_left=lambda: 1.0)
            if not self.plan.armed:
                return
            pool = self.rng.choice(POOLS)
            received, _ = queues.sample(pool, 10, hold_seconds=LEASE, time_left=lambda: 1.0)
            moves = []
            for item in received:
                job = item.job
                if job.moves >= 2:
                    continue
                destination = "gpu" if pool == "cpu" else "cpu"
                if job.placement == "either" and self.rng.random() < 0.5:
                    moves.append(Move(job.id, pool, destination, "idle_capacity", "chaos"))
                elif pool == "gpu" and job.region is None and self.rng.random() < 0.3:
                    moves.append(Move(job.id, pool, "gpu", "failover", "chaos", destination_region=other))
            self.tally.events["moves"] += len(moves)
            self.tally.events["failovers"] += sum(1 for m in moves if m.destination_region)
            deps = SimpleNamespace(
                settings=SimpleNamespace(region=region, max_receive_count=MAX_RECEIVE), metrics=metrics,
                state=SimpleNamespace(still_holds=lambda *_: True), queues=queues, ledger=ledger,
                forwarder=RegionForwarder({other: Faulty(self.sqs, self.plan)},
                                          {other: self.urls[(other, "gpu")]}, lambda *_: None))
            decision = Decision(pools={}, moves=tuple(moves), memory=ControllerMemory())
            act.apply(deps, decision, received, "chaos", 1, lambda: 1.0)  # type: ignore[arg-type]
        except Crash:
            self.tally.events["rebalancer crashed"] += 1

    # -- the run ---------------------------------------------------------------------------------------------------
    def settled(self) -> bool:
        for (_region, pool), url in self.urls.items():
            if pool == "rejects":
                continue
            if self.sqs.queues[url].messages:
                return False
        return all('"rejected_by"' in body for url in self.dlqs.values() for body in self.sqs.bodies(url))

    def run(self, chaos_steps: int, deadline: float) -> None:
        slots = [(r, p, s) for r in REGIONS for p in POOLS for s in range(3)]
        for step in range(chaos_steps):
            draw = self.rng.random()
            if draw < 0.25:
                self.route(self.rng.choice(REGIONS))
            elif draw < 0.28:
                self.rebalance(self.rng.choice(REGIONS))
            else:
                self.work(*self.rng.choice(slots))
            self.clock.advance(self.rng.uniform(0, 0.3))
            if step % 500 == 0 and time.monotonic() > deadline:
                break
        # Quiet: no new faults; leases lapse, backoffs pass, everything still queued reaches its outcome.
        self.plan.armed = False
        for _ in range(400):
            progress = sum(self.route(r) for r in REGIONS for _ in range(50))
            for region, pool, slot in slots:
                while self.work(region, pool, slot):
                    progress += 1
            for region in REGIONS:
                self.rebalance(region)
            if self.settled():
                break
            if not progress:
                # Live runs finish first: jumping past the lease under a running job would model a frozen
                # heartbeat, which is not one of the faults injected here.
                for _ in range(200):
                    if not any(self.tally.running.values()):
                        break
                    time.sleep(0.01)
                self.clock.advance(LEASE + 1)
        for _ in range(100):  # a dead process's runner thread still finishing
            if not any(self.tally.running.values()):
                break
            time.sleep(0.05)


def check_guarantee(world: World) -> dict[str, int]:
    """docs/job-lifecycle.md, job by job. Returns the outcome counts."""
    tally, outcomes = world.tally, Counter[str]()
    assert world.settled(), "every queue drained and every SQS dead letter reconciled"
    assert not tally.after_success, f"a succeeded job ran again: {tally.after_success[:5]}"
    assert not tally.stalled, f"a live run's heartbeat did not renew its lease: {tally.stalled[:5]}"
    illegal = [job for job, cut_off in tally.overlaps if not cut_off]
    assert not illegal, f"two runs at once while the first could renew its lease: {illegal[:5]}"
    for job_id in world.invalid:
        assert tally.runs[job_id] == 0, f"{job_id}: a rejected job ran"
    # Never accepted: in the rejects queue with its reason (the ledger's `rejected` head is best effort).
    rejected = {(job_of(body) or {}).get("id") for body in world.sqs.bodies(world.urls[(REGIONS[0], "rejects")])}
    assert world.invalid <= rejected, world.invalid - rejected
    for job_id in world.invalid:
        assert (world.truth(job_id).head(job_id) or {}).get("status") in (None, "rejected")
    for job_id in world.submitted:
        ledger = world.truth(job_id)
        # The head is the outcome (one item, conditional writes); the history is appended after it, so a process
        # that dies between the two leaves the transition out of the history, never a second outcome in it.
        head = ledger.head(job_id)
        assert head is not None and head["status"] in TERMINAL, f"{job_id}: accepted job ended {head}"
        status = head["status"]
        terminal = [h["status"] for h in ledger.history(job_id) if h["status"] in TERMINAL]
        assert terminal in ([], [status]), f"{job_id}: one terminal outcome, history has {terminal}"
        by_sqs = str(head.get("reason", "")).startswith("SQS moved it to the DLQ")
        outcomes[f"{status} by sqs" if by_sqs else status] += 1
        runs, failed, unrecorded = tally.runs[job_id], tally.failed_runs[job_id], tally.unrecorded[job_id]
        if job_id in world.poison and not by_sqs:
            assert status == "dead_lettered", job_id
        if status == "succeeded":
            # One run that succeeded; every other run either failed (and was retried) or ended without a
            # durable outcome (the doc's at-least-once window).
            assert 1 <= runs <= 1 + failed + unrecorded, (job_id, runs, failed, unrecorded)
        elif status == "dead_lettered" and not by_sqs:
            assert runs - unrecorded <= MAX_ATTEMPTS, (job_id, runs, unrecorded)
            assert job_id in world.poison or job_id in world.flaky or unrecorded, (job_id, "dead-lettered unfailed")
        elif status == "dead_lettered":
            assert runs <= failed + unrecorded, (job_id, "SQS dead-lettered a job whose run had succeeded")
        else:
            raise AssertionError(f"{job_id}: accepted job ended {status}")
    return dict(outcomes)


def run_chaos(seed: int, jobs: int, budget_seconds: float) -> tuple[World, dict[str, int], float]:
    print(f"chaos seed {seed} ({jobs} jobs); reproduce with CROSSFLEET_CHAOS_SEED={seed} CROSSFLEET_CHAOS_JOBS={jobs} "
          "pytest -s tests/test_chaos.py -m 'not soak'")
    started = time.monotonic()
    world = World(seed, jobs)
    world.run(chaos_steps=jobs * 6, deadline=started + budget_seconds)
    outcomes = check_guarantee(world)
    return world, outcomes, time.monotonic() - started


def test_chaos_every_accepted_job_has_exactly_one_outcome_and_never_runs_twice_at_once():
    seed = int(os.environ.get("CROSSFLEET_CHAOS_SEED", DEFAULT_SEED))
    jobs = int(os.environ.get("CROSSFLEET_CHAOS_JOBS", 10_000))
    world, outcomes, seconds = run_chaos(seed, jobs, budget_seconds=60)
    print(f"chaos seed {seed}: {seconds:.1f}s, outcomes {outcomes}, events {dict(world.tally.events)}, "
          f"SQS redrives {world.sqs.redriven}, faults {sum(world.plan.seen.values())}, "
          f"overlapping runs after a cut-off {len(world.tally.overlaps)}")
    # The faults really happened: otherwise the checks above were vacuous.
    seen = world.plan.seen
    for kind in ("throttled", "crash before", "crash after"):
        assert sum(n for name, n in seen.items() if name.startswith(kind)) > 50, (kind, seen)
    for operation in ("put_item", "update_item", "send_message", "delete_message", "put_object"):
        assert seen.get(f"crash after {operation}") and seen.get(f"crash before {operation}"), (operation, seen)
    events = world.tally.events
    for event in ("spot", "scale-in", "worker crashed", "router crashed", "rebalancer crashed", "moves",
                  "failovers", "duplicate during a run", "heartbeat failed"):
        assert events[event] > 0, (event, dict(events))
    assert world.sqs.redriven > 0 and outcomes.get("succeeded", 0) > 0.9 * len(world.submitted)
    assert sum(world.tally.unrecorded.values()) > 0, "the at-least-once window was exercised"
    assert sum(world.tally.runs.values()) >= len(world.submitted) - outcomes.get("dead_lettered by sqs", 0)


@pytest.mark.soak
@pytest.mark.parametrize("round_number", range(5))
def test_chaos_soak(round_number: int):
    seed = random.SystemRandom().randrange(2**32)
    run_chaos(seed, jobs=30_000, budget_seconds=600)
