"""One SQS work queue per pool, each with its dead-letter queue; encrypted and TLS-only."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crossfleet.config.model import QueueConfig


@dataclass(frozen=True)
class PoolQueue:
    queue: sqs.Queue
    dead_letter_queue: sqs.Queue


class WorkQueues(Construct):
    pools: dict[str, PoolQueue]

    def __init__(self, scope: Construct, id_: str, *, config: QueueConfig, pools: tuple[str, ...]) -> None:
        super().__init__(scope, id_)
        retention = Duration.days(config.retention_days)
        self.pools = {}
        for pool in pools:
            # The DLQ keeps messages the longest SQS allows, so a poison job is there to inspect.
            dlq = sqs.Queue(self, f"{pool.capitalize()}DeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED,
                            enforce_ssl=True, retention_period=Duration.days(14))
            queue = sqs.Queue(
                self, f"{pool.capitalize()}Jobs",
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
                retention_period=retention,
                # Workers extend visibility while a job runs; this is the lease a crashed worker gives up.
                visibility_timeout=Duration.seconds(config.visibility_timeout_seconds),
                receive_message_wait_time=Duration.seconds(20),
                dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=config.max_receive_count),
            )
            self.pools[pool] = PoolQueue(queue=queue, dead_letter_queue=dlq)
