"""SQS adapter for the intake router: a job to its pool queue, to a peer region's GPU queue or intake queue, and
a rejected body to the rejects queue with its reason."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crossfleet_control.core.jobs import Job
from crossfleet_control.core.settings import RouterSettings


@dataclass
class IntakeQueues:
    sqs: Any
    settings: RouterSettings
    sqs_for_region: Callable[[str], Any] | None = None
    _intake_urls: dict[str, str] = field(default_factory=dict)

    def _client(self, region: str) -> Any:
        return self.sqs_for_region(region) if self.sqs_for_region else self.sqs

    @staticmethod
    def _attributes(job: Job) -> dict[str, Any]:
        return {"job_id": {"DataType": "String", "StringValue": job.id}}

    def send_to_pool(self, pool: str, job: Job) -> None:
        self.sqs.send_message(QueueUrl=self.settings.queue_urls[pool], MessageBody=job.to_json(),
                              MessageAttributes=self._attributes(job))

    def send_to_peer(self, region: str, job: Job) -> None:
        """Failover: the job goes to another configured region's GPU queue (nothing else is ever a destination)."""
        self._client(region).send_message(QueueUrl=self.settings.peer_gpu_queue_urls[region],
                                          MessageBody=job.to_json(), MessageAttributes=self._attributes(job))

    def forward(self, region: str, job: Job) -> None:
        """A job pinned to another region goes to that region's intake queue, unchanged."""
        client = self._client(region)
        if region not in self._intake_urls:
            name = f"{self.settings.deployment}-{region}-intake"
            self._intake_urls[region] = client.get_queue_url(QueueName=name)["QueueUrl"]
        client.send_message(QueueUrl=self._intake_urls[region], MessageBody=job.to_json())

    def reject(self, body: str, reason: str, job_id: str | None) -> None:
        self.sqs.send_message(QueueUrl=self.settings.rejects_url, MessageBody=json.dumps(
            {"reason": reason, "job_id": job_id, "body": body[:200_000], "rejected_at": time.time(),
             "region": self.settings.region}),
            MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:256]}})
