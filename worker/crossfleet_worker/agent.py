"""The worker agent: long-poll the pool's queue, claim each job in the ledger, run it, record, then delete.

Order of durability: the ledger claim comes before the run, the result (S3) and the ledger's `succeeded` come
before the message is deleted, and a dead-lettered job is in the DLQ before its message is deleted. A crash at
any point leaves the message to reappear after its visibility timeout; the ledger claim (same lease) stops a
duplicate delivery from running the job twice. The guarantee and its one at-least-once window are in
docs/job-lifecycle.md.
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
    heartbeat_seconds: float = 60  # capped at a third of the lease (see `heartbeat_period`)
    max_attempts: int = 3
    retry_backoff_seconds: float = 5  # a failed job waits base * 2^attempt (at most 15 min) before its retry
    wait_seconds: int = 20  # SQS long poll
    runner: dict[str, Any] = field(default_factory=lambda: {"kind": "http"})
    # Scale-in: this pool's lifecycle hook timeout (worker.drain_seconds, shorter in a Capacity Block); running
    # jobs get it less a 30 s margin before they are requeued. None: the lease less 30 s, for older settings.
    drain_seconds: float | None = None
    # The other configured regions' state tables (region -> table name): a job whose origin is there is
    # claimed and recorded there.
    peer_tables: dict[str, str] = field(default_factory=dict)

    @property
    def heartbeat_period(self) -> float:
        """Renew at least three times per lease, whatever was configured: a period at or above the lease would
        let the claim lapse mid-run and another worker take the job; two failed renewals in a row still leave
        one before it lapses."""
        return max(0.05, min(float(self.heartbeat_seconds), self.visibility_seconds / 3))

    @property
    def drain_budget_seconds(self) -> float:
        if self.drain_seconds is not None:
            # drain_seconds is also the lifecycle hook's timeout: keep 30 s of it for the requeue and the
            # completion call, or the hook's default result could terminate the instance mid-requeue.
            return max(0.0, float(self.drain_seconds) - 30)
        return max(30.0, self.visibility_seconds - 30)

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


def unwrap_dead_letter(body: str) -> tuple[str, bool]:
    """A worker's or rebalancer's DLQ envelope moved back by a redrive holds the job's own body: return that
    body and True; anything else unchanged and False."""
    if not body.startswith("{") or '"rejected_by"' not in body:
        return body, False
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return body, False
    if isinstance(envelope, dict) and envelope.get("rejected_by") in ("worker", "rebalancer", "sqs") \
            and isinstance(envelope.get("body"), str):
        return envelope["body"], True
    return body, False


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
    # Another configured region's ledger, for jobs that came from there (failover, cross-region moves).
    ledger_for: Callable[[str], Ledger] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    # Scale-in protection as last set on this instance; None: unknown (a restart may have left it on).
    protected: bool | None = None

    def ledger_of(self, job: Job) -> Ledger:
        """The ledger that holds the job's identity: its origin region's, so it is claimed once across regions."""
        if job.origin and job.origin != self.settings.region:
            if self.ledger_for is None:
                raise LookupError(f"job {job.id} belongs to {job.origin}'s ledger and no peer ledger is configured")
            return self.ledger_for(job.origin)
        return self.ledger

    # -- one message ----------------------------------------------------------------------------------------
    def receive(self, max_messages: int = 1, wait_seconds: int | None = None) -> list[InFlight]:
        """Receive and claim. Malformed messages are dead-lettered; duplicates are settled, never run."""
        if self.stopping.is_set():
            return []
        response = self.sqs.receive_message(
            QueueUrl=self.settings.queue_url, MaxNumberOfMessages=max(1, min(10, max_messages)),
            WaitTimeSeconds=self.settings.wait_seconds if wait_seconds is None else wait_seconds,
            VisibilityTimeout=self.settings.visibility_seconds)
        if not response.get("Messages") and not self.in_flight and self.protected is not False:
            # Idle (an empty long poll, nothing running): scale-in may pick this instance again.
            self.set_protection(False)
        claimed = []
        for message in response.get("Messages", []):
            receipt = message["ReceiptHandle"]
            body, redriven = unwrap_dead_letter(message.get("Body", ""))
            try:
                job = parse_job(body)
            except JobRejected as rejected:
                self._dead_letter_raw(body, receipt, f"malformed: {rejected.reason}")
                continue
            if redriven:
                # Only a redrive moves a DLQ envelope back to a pool queue: the operator wants the job run again.
                self.ledger_of(job).reopen(job.id, via=f"redrive seen by {self.owner}")
            claim = self.ledger_of(job).claim(job.id, owner=self.owner, pool=self.settings.pool,
                                              lease_seconds=self.settings.visibility_seconds,
                                              fingerprint=job.fingerprint(), region=self.settings.region)
            if claim.conflict:
                # Another job already owns this id: never run it as that job, never delete it as a duplicate.
                reason = f"id conflict: job id {job.id!r} already names a different job; resubmit with a new id"
                self._send_dead_letter(body, reason, job.id)
                self._delete(receipt)
                continue
            if claim.won:
                if self.protected is not True:
                    # Before the run starts: scale-in must pick an idle instance, not this one (case 6).
                    self.set_protection(True)
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
        """Run one claimed job to a recorded outcome. Returns the status it ended in.

        Only the runner's own errors (and an unreadable payload, before the runner starts) fail the job: the
        heartbeat never raises, so nothing is recorded while the runner may still be running."""
        job = work.job
        try:
            result, claim_kept = self._run_with_heartbeat(work)
        except JobFailed as failure:
            return self._failed(work, str(failure))
        except Exception as error:  # a runner bug is a job failure, not an agent crash
            return self._failed(work, f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self.in_flight.pop(job.id, None)
        if not claim_kept:
            self.log(f"job {job.id}: claim lost while running; result discarded, message left to its owner")
            return "lost_claim"
        key = f"results/{job.id}/attempt-{work.attempt}"
        self.s3.put_object(Bucket=self.settings.results_bucket, Key=key, Body=result,
                           Metadata={"job-id": job.id, "instance": self.owner})
        uri = f"s3://{self.settings.results_bucket}/{key}"
        if not self.ledger_of(job).finish(job.id, owner=self.owner, status="succeeded", detail={"result_uri": uri}):
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
        """Give every running job back at once (Spot notice): ledger says interrupted (the attempt refunded),
        and a fresh copy is queued before the original is deleted. A fresh copy, not visibility 0: every
        receive counts toward the queue's maxReceiveCount, and a job interrupted a few times would otherwise be
        moved to the DLQ by SQS itself although it never failed."""
        self.stopping.set()
        with self._lock:
            work = list(self.in_flight.values())
            self.in_flight.clear()
        for item in work:
            if not self.ledger_of(item.job).finish(item.job.id, owner=self.owner, status="interrupted",
                                              detail={"reason": reason}):
                continue  # no longer ours: its new owner holds the message
            try:
                self.sqs.send_message(QueueUrl=self.settings.queue_url, MessageBody=item.job.to_json(),
                                      MessageAttributes={"job_id": {"DataType": "String", "StringValue": item.job.id}})
            except (BotoCoreError, ClientError) as error:
                self.log(f"job {item.job.id}: fresh copy not sent ({error}); making the original visible instead")
                self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url,
                                                   ReceiptHandle=item.receipt_handle, VisibilityTimeout=0)
                continue
            self._delete(item.receipt_handle)
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

    def set_protection(self, protected: bool) -> bool:
        """Scale-in protection for this instance in its own group, set while it holds jobs and cleared once idle,
        so a scale-in terminates idle instances first (failure case 6). Set on the first claim and cleared on an
        empty poll, not per job: the call is rate-limited per account. A failure is logged and retried at the
        next transition; the drain still requeues whatever a termination interrupts."""
        try:
            self.autoscaling.set_instance_protection(
                InstanceIds=[self.owner], AutoScalingGroupName=self.settings.group_name,
                ProtectedFromScaleIn=protected)
        except (BotoCoreError, ClientError) as error:
            self.log(f"scale-in protection not {'set' if protected else 'cleared'}: {error}")
            self.protected = None  # unknown: the next idle poll clears it, the next claim sets it
            return False
        self.protected = protected
        return True

    def lifecycle_heartbeat(self) -> bool:
        """Keep this instance's termination hook open while a drain runs (failure case 17). False once AWS has
        no active lifecycle action for it: completed, or timed out into its default result. Either way there is
        nothing left to hold open, and termination goes ahead."""
        try:
            self.autoscaling.record_lifecycle_action_heartbeat(
                LifecycleHookName=self.settings.lifecycle_hook, AutoScalingGroupName=self.settings.group_name,
                InstanceId=self.owner)
        except ClientError as error:
            if "No active Lifecycle Action" in str(error):
                return False
            self.log(f"lifecycle heartbeat failed, retrying: {error}")
        except BotoCoreError as error:
            self.log(f"lifecycle heartbeat failed, retrying: {error}")
        return True

    @property
    def lifecycle_heartbeat_period(self) -> float:
        """Three beats per hook timeout (drain_seconds), like the job lease: two may fail in a row."""
        timeout = self.settings.drain_seconds if self.settings.drain_seconds is not None \
            else self.settings.visibility_seconds
        return max(1.0, float(timeout) / 3)

    def drain(self, budget_seconds: float, sleep: Callable[[float], None] = time.sleep) -> int:
        """Scale-in: take no new jobs, let running ones finish within the budget, requeue the rest. The
        termination hook is heartbeaten meanwhile; once AWS says it has no active action for this instance, the
        instance is going now: requeue at once instead of waiting out the budget."""
        self.stopping.set()
        deadline = self.clock() + budget_seconds
        next_beat = self.clock() + self.lifecycle_heartbeat_period
        while self.in_flight and self.clock() < deadline:
            sleep(1.0)
            if self.clock() >= next_beat:
                if not self.lifecycle_heartbeat():
                    self.log("no active lifecycle action: the instance is terminating now, requeueing")
                    break
                next_beat = self.clock() + self.lifecycle_heartbeat_period
        return self.requeue_in_flight("instance scaling in") if self.in_flight else 0

    # -- internals -----------------------------------------------------------------------------------------------
    def _run_with_heartbeat(self, work: InFlight) -> tuple[bytes, bool]:
        """The runner's result, and whether our claim held throughout. Waits for the runner however the
        heartbeats go: the job's outcome is recorded only once the runner has stopped."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = self.runner.run(work.job, self._payload(work.job))
            except BaseException as error:  # handed to the calling thread
                outcome["error"] = error

        thread = threading.Thread(target=target, name=f"job-{work.job.id}", daemon=True)
        thread.start()
        claim_kept = True
        while thread.is_alive():
            thread.join(self.settings.heartbeat_period)
            if thread.is_alive() and claim_kept:
                claim_kept = self._heartbeat(work)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"], claim_kept

    def _heartbeat(self, work: InFlight) -> bool:
        """Renew the ledger claim, then the message's visibility. False once the ledger says the claim is
        someone else's (stop renewing a message we no longer own). An AWS error is logged and retried at the
        next beat: failing the job here would free it for another worker while this runner still runs."""
        try:
            if not self.ledger_of(work.job).extend(work.job.id, owner=self.owner,
                                                   lease_seconds=self.settings.visibility_seconds):
                return False
            self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url, ReceiptHandle=work.receipt_handle,
                                               VisibilityTimeout=self.settings.visibility_seconds)
        except (BotoCoreError, ClientError) as error:
            self.log(f"job {work.job.id}: heartbeat failed, retrying in {self.settings.heartbeat_period:.0f}s: {error}")
        return True

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
            if not self.ledger_of(job).finish(job.id, owner=self.owner, status="dead_lettered",
                                      detail={"reason": reason, "attempts": work.attempt}):
                return "lost_claim"  # the envelope in the DLQ is redundant; the job's owner settles it
            self._delete(work.receipt_handle)
            return "dead_lettered"
        if not self.ledger_of(job).finish(job.id, owner=self.owner, status="failed",
                                  detail={"reason": reason, "attempt": work.attempt}):
            return "lost_claim"
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


def _leaving(agent: Agent, events: InstanceEvents) -> bool:
    """A Spot notice or a pending termination: the instance is going away, so take no work."""
    try:
        return events.spot_interruption() or events.terminating()
    except OSError as error:
        agent.log(f"instance metadata unavailable: {error}")
        return False


def run_forever(agent: Agent, events: InstanceEvents, *, drain_budget_seconds: float,
                check_seconds: float = 5.0, error_pause_seconds: float = 5.0) -> None:
    """The service: `concurrency` job threads, and a watcher for Spot notices and scale-in."""
    # systemd restarts the agent after it returns on a notice (Restart=always): look before claiming
    # anything, or every restart would claim (and requeue) jobs on an instance about to disappear.
    if _leaving(agent, events):
        agent.stopping.set()
        agent.log("instance is being interrupted or terminated: taking no work")
        return

    def work_loop() -> None:
        while not agent.stopping.is_set():
            try:
                for work in agent.receive(1):
                    agent.execute(work)
            except Exception as error:
                # Any error (AWS, or a bug) pauses this slot instead of ending it: a dead slot thread in a live
                # process is never restarted by systemd. Unfinished work is reclaimed when its lease lapses.
                agent.log(f"slot error, retrying: {type(error).__name__}: {error}")
                time.sleep(error_pause_seconds)

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
