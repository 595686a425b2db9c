"""The worker agent: long-poll the pool's queue, claim each job in the ledger, run it, record, then delete.

Order of durability: the ledger claim comes before the run, the result (S3) and the ledger's `succeeded` come
before the message is deleted, and a dead-lettered job is in the DLQ before its message is deleted. A crash at
any point leaves the message to reappear after its visibility timeout; the ledger claim (same lease) stops a
duplicate delivery from running the job twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from crossfleet_control.aws.ledger import TERMINAL, Ledger
from crossfleet_control.core.jobs import Job, JobRejected, parse_job, payload_uri_problem
from crossfleet_worker.job_metrics import JobMetrics
from crossfleet_worker.runners import JobFailed, Runner


@dataclass(frozen=True)
class WorkerSettings:
    deployment: str
    region: str
    pool: str
    queue_url: str
    dead_letter_url: str
    table_name: str
    results_bucket: str
    group_name: str
    lifecycle_hook: str
    concurrency: int = 1
    visibility_seconds: int = 300  # the lease a crashed worker gives up; heartbeats renew it while running
    heartbeat_seconds: float = 60
    max_attempts: int = 3
    retry_backoff_seconds: float = 5  # a failed job waits base * 2^attempt (at most 15 min) before its retry
    wait_seconds: int = 20  # SQS long poll
    runner: dict[str, Any] = field(default_factory=lambda: {"kind": "http"})
    drain_seconds: int = 900  # the scale-in lifecycle hook's timeout (480 in a Capacity Block): the drain fits in it

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        return cls(**json.loads(text))


class InstanceEvents(Protocol):
    def instance_id(self) -> str: ...

    def spot_interruption(self) -> bool: ...

    def terminating(self) -> bool: ...


@dataclass
class InFlight:
    job: Job
    receipt_handle: str
    attempt: int


@dataclass
class Agent:
    settings: WorkerSettings
    sqs: Any
    s3: Any
    autoscaling: Any
    ledger: Ledger
    runner: Runner
    owner: str  # this instance's id: the ledger shows which instance ran what
    clock: Callable[[], float] = time.time
    log: Callable[[str], None] = print
    job_metrics: JobMetrics | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: dict[str, InFlight] = field(default_factory=dict)

    # -- one message ----------------------------------------------------------------------------------------
    def receive(self, max_messages: int = 1, wait_seconds: int | None = None) -> list[InFlight]:
        """Receive and claim. Malformed messages are dead-lettered; duplicates are settled, never run."""
        if self.stopping.is_set():
            return []
        response = self.sqs.receive_message(
            QueueUrl=self.settings.queue_url, MaxNumberOfMessages=max(1, min(10, max_messages)),
            WaitTimeSeconds=self.settings.wait_seconds if wait_seconds is None else wait_seconds,
            VisibilityTimeout=self.settings.visibility_seconds)
        claimed = []
        for message in response.get("Messages", []):
            receipt = message["ReceiptHandle"]
            try:
                job = parse_job(message.get("Body", ""))
            except JobRejected as rejected:
                self._dead_letter_raw(message.get("Body", ""), receipt, f"malformed: {rejected.reason}")
                continue
            claim = self.ledger.claim(job.id, owner=self.owner, pool=self.settings.pool,
                                      lease_seconds=self.settings.visibility_seconds)
            if claim.won:
                with self._lock:
                    self.in_flight[job.id] = InFlight(job, receipt, claim.attempt)
                claimed.append(self.in_flight[job.id])
            elif claim.status in TERMINAL:
                # Already done (or dead-lettered): this copy is a duplicate delivery or a moved twin.
                self.log(f"job {job.id}: duplicate of a {claim.status} job, deleting this copy")
                self._delete(receipt)
            else:
                # Another worker holds a live claim: look again when that claim would have lapsed.
                wait = max(1, int((claim.claim_until or self.clock()) - self.clock()) + 1)
                self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url, ReceiptHandle=receipt,
                                                   VisibilityTimeout=min(wait, 43200))
        return claimed

    def execute(self, work: InFlight) -> str:
        """Run one claimed job to a recorded outcome. Returns the status it ended in."""
        job = work.job
        try:
            result = self._run_with_heartbeat(work)
        except JobFailed as failure:
            return self._failed(work, str(failure))
        except Exception as error:  # a runner bug is a job failure, not an agent crash
            return self._failed(work, f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self.in_flight.pop(job.id, None)
        key = f"results/{job.id}/attempt-{work.attempt}"
        self.s3.put_object(Bucket=self.settings.results_bucket, Key=key, Body=result,
                           Metadata={"job-id": job.id, "instance": self.owner})
        uri = f"s3://{self.settings.results_bucket}/{key}"
        if not self.ledger.finish(job.id, owner=self.owner, status="succeeded", detail={"result_uri": uri}):
            # Our claim lapsed and someone else owns the job now: leave the message to them.
            self.log(f"job {job.id}: claim lost before completion; not deleting")
            return "lost_claim"
        self._delete(work.receipt_handle)
        if self.job_metrics is not None:
            self.job_metrics.record(self.clock() - job.submitted_at, job.deadline_seconds)
        return "succeeded"

    def poll_once(self, wait_seconds: int | None = None) -> list[str]:
        """Receive up to `concurrency` jobs and run them one after another (tests and simple hosts)."""
        return [self.execute(w) for w in self.receive(self.settings.concurrency, wait_seconds)]

    # -- interruptions and scale-in ----------------------------------------------------------------------------
    def requeue_in_flight(self, reason: str) -> int:
        """Give every running job back at once (Spot notice): visible now, ledger says interrupted."""
        self.stopping.set()
        with self._lock:
            work = list(self.in_flight.values())
            self.in_flight.clear()
        for item in work:
            self.ledger.finish(item.job.id, owner=self.owner, status="interrupted", detail={"reason": reason})
            self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url, ReceiptHandle=item.receipt_handle,
                                               VisibilityTimeout=0)
        return len(work)

    def complete_lifecycle(self) -> bool:
        """Let the Auto Scaling group finish terminating this instance. 'No active action' counts as done."""
        try:
            self.autoscaling.complete_lifecycle_action(
                LifecycleHookName=self.settings.lifecycle_hook, AutoScalingGroupName=self.settings.group_name,
                LifecycleActionResult="CONTINUE", InstanceId=self.owner)
        except ClientError as error:
            if "No active Lifecycle Action" in str(error) or error.response["Error"]["Code"] == "ValidationError":
                return True
            raise
        return True

    def drain(self, budget_seconds: float, sleep: Callable[[float], None] = time.sleep) -> int:
        """Scale-in: take no new jobs, let running ones finish within the budget, requeue the rest."""
        self.stopping.set()
        deadline = self.clock() + budget_seconds
        while self.in_flight and self.clock() < deadline:
            sleep(1.0)
        return self.requeue_in_flight("instance scaling in") if self.in_flight else 0

    # -- internals -----------------------------------------------------------------------------------------------
    def _run_with_heartbeat(self, work: InFlight) -> bytes:
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = self.runner.run(work.job, self._payload(work.job))
            except BaseException as error:  # handed to the calling thread
                outcome["error"] = error

        thread = threading.Thread(target=target, name=f"job-{work.job.id}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(self.settings.heartbeat_seconds)
            if thread.is_alive():
                # Keep both leases ahead of the run: the message's visibility and the ledger claim.
                self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url,
                                                   ReceiptHandle=work.receipt_handle,
                                                   VisibilityTimeout=self.settings.visibility_seconds)
                self.ledger.extend(work.job.id, owner=self.owner, lease_seconds=self.settings.visibility_seconds)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _payload(self, job: Job) -> bytes:
        uri = job.payload.get("s3_uri")
        if not uri:
            return json.dumps(job.payload).encode()
        if (problem := payload_uri_problem(job, self.settings.results_bucket)) is not None:
            raise JobFailed(problem)  # the router refuses these too; this covers messages sent to a pool queue
        bucket, _, key = uri[len("s3://"):].partition("/")
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def _failed(self, work: InFlight, reason: str) -> str:
        job = work.job
        if work.attempt >= self.settings.max_attempts:
            # Retries spent: durable in the DLQ with the reason first, then the ledger, then the delete.
            self._send_dead_letter(job.to_json(), f"failed {work.attempt} times: {reason}", job.id)
            self.ledger.finish(job.id, owner=self.owner, status="dead_lettered",
                               detail={"reason": reason, "attempts": work.attempt})
            self._delete(work.receipt_handle)
            return "dead_lettered"
        self.ledger.finish(job.id, owner=self.owner, status="failed",
                           detail={"reason": reason, "attempt": work.attempt})
        # Back off a little per attempt before another worker (or this one) tries again.
        self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url, ReceiptHandle=work.receipt_handle,
                                           VisibilityTimeout=int(min(900, self.settings.retry_backoff_seconds
                                                                     * 2 ** work.attempt)))
        return "failed"

    def _dead_letter_raw(self, body: str, receipt: str, reason: str) -> None:
        self._send_dead_letter(body, reason, None)
        self._delete(receipt)

    def _send_dead_letter(self, body: str, reason: str, job_id: str | None) -> None:
        self.sqs.send_message(
            QueueUrl=self.settings.dead_letter_url,
            MessageBody=json.dumps({"rejected_by": "worker", "instance": self.owner, "reason": reason,
                                    "job_id": job_id, "body": body}),
            MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:256]}})

    def _delete(self, receipt: str) -> None:
        self.sqs.delete_message(QueueUrl=self.settings.queue_url, ReceiptHandle=receipt)


def run_forever(agent: Agent, events: InstanceEvents, *, drain_budget_seconds: float,
                check_seconds: float = 5.0) -> None:
    """The service: `concurrency` job threads, and a watcher for Spot notices and scale-in."""
    def work_loop() -> None:
        while not agent.stopping.is_set():
            try:
                for work in agent.receive(1):
                    agent.execute(work)
            except (BotoCoreError, ClientError) as error:
                agent.log(f"AWS call failed, retrying: {error}")
                time.sleep(5)

    threads = [threading.Thread(target=work_loop, name=f"slot-{i}", daemon=True)
               for i in range(agent.settings.concurrency)]
    for thread in threads:
        thread.start()
    while True:
        time.sleep(check_seconds)
        if agent.job_metrics is not None and agent.clock() - agent.job_metrics._last_flush >= 60:
            agent.job_metrics.flush()
        try:
            if events.spot_interruption():
                agent.log(f"Spot interruption notice: requeued {agent.requeue_in_flight('spot interruption')} jobs")
                return
            if events.terminating():
                agent.log(f"scale-in: requeued {agent.drain(drain_budget_seconds)} jobs")
                agent.complete_lifecycle()
                return
        except OSError as error:
            agent.log(f"instance metadata unavailable: {error}")
