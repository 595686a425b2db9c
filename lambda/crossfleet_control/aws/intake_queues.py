"""SQS adapter for the intake router: a job to its pool queue, to a peer region's GPU queue or intake queue, and
a rejected body to the rejects queue with its reason."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
        """Failover: the job goes to another configured region's GPU queue (nothing else is ever a destination),
        naming this region as its origin: its ledger entry stays here, where it was submitted."""
        job = replace(job, origin=job.origin or self.settings.region)
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
        self.sqs.send_message(QueueUrl=self.settings.rejects_url,
                              MessageBody=reject_message(body, reason, job_id, self.settings.region, time.time()),
                              MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:256]}})


# SQS's message limit is 256 KiB (262,144 bytes, body plus attributes; newer queues allow 1 MiB). A reject
# keeps to 200 KiB so it fits either way, with room for the reason attribute.
MAX_REJECT_MESSAGE_BYTES = 200 * 1024


def reject_message(body: str, reason: str, job_id: str | None, region: str, now: float) -> str:
    """The rejects-queue message: as much of the body as fits, measured in encoded bytes (JSON escaping can
    make one character six bytes, so a character count cannot bound it), and the body's full size."""
    encoded = body.encode("utf-8", errors="replace")
    keep = len(encoded)
    while True:
        kept = encoded[:keep].decode("utf-8", errors="ignore")
        message = json.dumps({"reason": reason[:1000], "job_id": job_id, "body": kept,
                              "body_bytes": len(encoded), "body_truncated": keep < len(encoded),
                              "rejected_at": now, "region": region}, ensure_ascii=False)
        if len(message.encode()) <= MAX_REJECT_MESSAGE_BYTES or keep == 0:
            return message
        keep = keep // 2 if len(message.encode()) > 2 * MAX_REJECT_MESSAGE_BYTES else keep - keep // 8
