"""One SQS work queue per pool, each with its dead-letter queue; encrypted and TLS-only."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crossfleet.config.control import QueueConfig


@dataclass(frozen=True)
class PoolQueue:
    queue: sqs.Queue
    dead_letter_queue: sqs.Queue


class WorkQueues(Construct):
    """Per pool a work queue and its DLQ; plus the intake queue producers send to and the rejects queue."""

    pools: dict[str, PoolQueue]
    intake: PoolQueue
    rejects: sqs.Queue

    def __init__(self, scope: Construct, id_: str, *, config: QueueConfig, pools: tuple[str, ...],
                 intake_queue_name: str, pool_queue_names: dict[str, str]) -> None:
        """Pool queues have fixed names: another region's rebalancer forwards GPU work to them on failover."""
        super().__init__(scope, id_)
        retention = Duration.days(config.retention_days)
        self.pools = {}
        for pool in pools:
            # The DLQ keeps messages the longest SQS allows, so a poison job is there to inspect.
            dlq = sqs.Queue(self, f"{pool.capitalize()}DeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED,
                            queue_name=f"{pool_queue_names[pool]}-dlq",
                            enforce_ssl=True, retention_period=Duration.days(14))
            queue = sqs.Queue(
                self, f"{pool.capitalize()}Jobs", queue_name=pool_queue_names[pool],
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
                retention_period=retention,
                # Workers extend visibility while a job runs; this is the lease a crashed worker gives up.
                visibility_timeout=Duration.seconds(config.visibility_timeout_seconds),
                receive_message_wait_time=Duration.seconds(20),
                dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=config.max_receive_count),
            )
            self.pools[pool] = PoolQueue(queue=queue, dead_letter_queue=dlq)

        # The intake queue has a fixed name so a router in another region can forward pinned jobs to it.
        intake_dlq = sqs.Queue(self, "IntakeDeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED,
                               enforce_ssl=True, retention_period=Duration.days(14))
        intake = sqs.Queue(
            self, "Intake", queue_name=intake_queue_name, encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True, retention_period=retention,
            # Six times the router's timeout, as Lambda's SQS guidance asks.
            visibility_timeout=Duration.seconds(180),
            dead_letter_queue=sqs.DeadLetterQueue(queue=intake_dlq, max_receive_count=config.max_receive_count))
        self.intake = PoolQueue(queue=intake, dead_letter_queue=intake_dlq)
        # Invalid submissions, each with its reason, kept as long as SQS allows for producers to inspect.
        self.rejects = sqs.Queue(self, "Rejects", encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                                 retention_period=Duration.days(14))
