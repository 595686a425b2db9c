"""The crossfleet job schema, version 1: one definition shared by the CLI, router, rebalancer and workers.

A message body on any crossfleet queue is one JSON job. `parse_job` returns a `Job` or raises `JobRejected`
with a reason a producer can act on; nothing downstream has to re-check fields. See docs/job-schema.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1
JOB_CLASSES = ("inference", "agent", "orchestration", "codegen", "eval", "embedding", "finetune", "batch")
PLACEMENTS = ("cpu_only", "gpu_only", "either")
POOLS = ("cpu", "gpu")
US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
# SQS accepts 256 KiB per message (1 MiB on newer queues); crossfleet keeps inline payloads well below so a
# job plus its envelope always fits. Larger inputs go to S3 and travel as {"s3_uri": ...}.
MAX_INLINE_PAYLOAD_BYTES = 200 * 1024
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_FIELDS = ("schema_version", "id", "class", "placement", "preference", "size", "deadline_seconds", "priority",
           "submitted_at", "attempt", "moves", "payload", "region")
_SIZE_FIELDS = ("input_tokens", "output_tokens", "cpu_seconds", "gpu_seconds")


class JobRejected(ValueError):
    """A message that is not a valid job. The reason names the field and what is allowed."""

    def __init__(self, reason: str, job_id: str | None = None) -> None:
        self.reason = reason
        self.job_id = job_id
        super().__init__(reason)


@dataclass(frozen=True)
class Job:
    id: str
    job_class: str
    placement: str
    preference: str  # the pool the producer prefers for `either` work; the only pool for *_only work
    input_tokens: int
    output_tokens: int
    cpu_seconds: float | None
    gpu_seconds: float | None
    deadline_seconds: float
    priority: int
    submitted_at: float  # epoch seconds
    attempt: int = 0
    moves: int = 0
    payload: dict[str, Any] = field(default_factory=dict)
    region: str | None = None

    def allowed_pools(self) -> tuple[str, ...]:
        if self.placement == "cpu_only":
            return ("cpu",)
        if self.placement == "gpu_only":
            return ("gpu",)
        return POOLS

    def may_run_on(self, pool: str) -> bool:
        return pool in self.allowed_pools()

    def deadline_at(self) -> float:
        return self.submitted_at + self.deadline_seconds

    def moved(self) -> Job:
        return replace(self, moves=self.moves + 1)

    def to_message(self) -> dict[str, Any]:
        size: dict[str, Any] = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cpu_seconds is not None:
            size["cpu_seconds"] = self.cpu_seconds
        if self.gpu_seconds is not None:
            size["gpu_seconds"] = self.gpu_seconds
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "id": self.id, "class": self.job_class,
            "placement": self.placement, "preference": self.preference, "size": size,
            "deadline_seconds": self.deadline_seconds, "priority": self.priority,
            "submitted_at": self.submitted_at, "attempt": self.attempt, "moves": self.moves,
            "payload": self.payload,
        }
        if self.region:
            body["region"] = self.region
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_message(), separators=(",", ":"), sort_keys=True)


def parse_job(body: str | bytes | dict[str, Any]) -> Job:
    if isinstance(body, (str, bytes)):
        try:
            raw = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise JobRejected(f"body is not JSON: {error}") from None
    else:
        raw = body
    if not isinstance(raw, dict):
        raise JobRejected(f"body must be a JSON object, got {type(raw).__name__}")
    job_id = raw.get("id") if isinstance(raw.get("id"), str) else None

    def reject(reason: str) -> JobRejected:
        return JobRejected(reason, job_id)

    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise reject(f"schema_version={version!r}: this crossfleet reads schema_version {SCHEMA_VERSION}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise reject(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    for required in ("id", "class", "placement", "size", "deadline_seconds", "submitted_at"):
        if required not in raw:
            raise reject(f"missing required field '{required}'")
    if not isinstance(raw["id"], str) or not _ID.match(raw["id"]):
        raise reject(f"id={raw['id']!r}: 1-128 characters of letters, digits, '_', '.', ':', '-'")
    job_class = raw["class"]
    if job_class not in JOB_CLASSES:
        raise reject(f"class={job_class!r}: one of {', '.join(JOB_CLASSES)}")
    placement = raw["placement"]
    if placement not in PLACEMENTS:
        raise reject(f"placement={placement!r}: one of {', '.join(PLACEMENTS)}")
    default_preference = {"cpu_only": "cpu", "gpu_only": "gpu", "either": "gpu"}[placement]
    preference = raw.get("preference", default_preference)
    if preference not in POOLS or (placement != "either" and preference != default_preference):
        allowed = ", ".join(POOLS) if placement == "either" else default_preference
        raise reject(f"preference={preference!r}: for placement {placement} one of {allowed}")

    size = raw["size"]
    if not isinstance(size, dict) or not size or set(size) - set(_SIZE_FIELDS):
        raise reject(f"size={size!r}: an object with any of {', '.join(_SIZE_FIELDS)}")
    input_tokens = _count(size, "input_tokens", reject)
    output_tokens = _count(size, "output_tokens", reject)
    cpu_seconds = _seconds(size, "cpu_seconds", reject)
    gpu_seconds = _seconds(size, "gpu_seconds", reject)
    if input_tokens + output_tokens == 0:
        needed = {"cpu_only": [cpu_seconds], "gpu_only": [gpu_seconds], "either": [cpu_seconds, gpu_seconds]}
        if any(value is None for value in needed[placement]):
            raise reject("size: give input_tokens/output_tokens, or the cpu_seconds/gpu_seconds of every pool "
                         f"placement {placement} allows")

    deadline = raw["deadline_seconds"]
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= 7 * 86400:
        raise reject(f"deadline_seconds={deadline!r}: a number of seconds above 0 and at most 604800 (7 days)")
    priority = raw.get("priority", 5)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise reject(f"priority={priority!r}: a whole number from 0 (lowest) to 9")
    attempt = raw.get("attempt", 0)
    moves = raw.get("moves", 0)
    for name, value in (("attempt", attempt), ("moves", moves)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise reject(f"{name}={value!r}: a whole number at least 0")
    submitted_at = _timestamp(raw.get("submitted_at"), reject)
    payload = raw.get("payload", {})
    if not isinstance(payload, dict):
        raise reject("payload: an object (inline JSON) or {\"s3_uri\": \"s3://bucket/key\"}")
    if "s3_uri" in payload and not (isinstance(payload["s3_uri"], str) and payload["s3_uri"].startswith("s3://")):
        raise reject(f"payload.s3_uri={payload['s3_uri']!r}: an s3://bucket/key URI")
    encoded = len(json.dumps(payload, separators=(",", ":")).encode())
    if encoded > MAX_INLINE_PAYLOAD_BYTES:
        raise reject(f"payload is {encoded} bytes inline; the limit is {MAX_INLINE_PAYLOAD_BYTES}: upload it to S3 "
                     "and send {\"s3_uri\": \"s3://bucket/key\"} instead")
    region = raw.get("region")
    if region is not None and region not in US_REGIONS:
        raise reject(f"region={region!r}: a US region pin, one of {', '.join(US_REGIONS)}, or absent")
    return Job(id=raw["id"], job_class=job_class, placement=placement, preference=preference,
               input_tokens=input_tokens, output_tokens=output_tokens, cpu_seconds=cpu_seconds,
               gpu_seconds=gpu_seconds, deadline_seconds=float(deadline), priority=priority,
               submitted_at=submitted_at, attempt=attempt, moves=moves, payload=payload, region=region)


def _count(size: dict[str, Any], key: str, reject: Any) -> int:
    value = size.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000_000:
        raise reject(f"size.{key}={value!r}: a whole number from 0 to 10000000")
    return value


def _seconds(size: dict[str, Any], key: str, reject: Any) -> float | None:
    value = size.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 7 * 86400:
        raise reject(f"size.{key}={value!r}: seconds above 0 and at most 604800")
    return float(value)


def _timestamp(value: Any, reject: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise reject(f"submitted_at={value!r}: epoch seconds or an ISO 8601 timestamp")


def job_summary(job: Job) -> dict[str, Any]:
    """Fields worth logging about a job (never the payload)."""
    data = asdict(job)
    data.pop("payload")
    return data


# Where a job's s3_uri may point: this deployment's results bucket under payloads/ (the worker role can read
# nothing else there; results/ in particular holds other jobs' outputs).
PAYLOAD_PREFIX = "payloads/"


def payload_uri_problem(job: Job, results_bucket: str) -> str | None:
    """Why this job's payload reference may not be read, or None. Checked at intake and again by the worker."""
    uri = job.payload.get("s3_uri")
    if uri is None:
        return None
    allowed = f"s3://{results_bucket}/{PAYLOAD_PREFIX}"
    key = str(uri)[len(allowed):] if str(uri).startswith(allowed) else None
    # Dot segments and empty segments are refused: an HTTP layer may normalise payloads/../results/x to results/x.
    if not results_bucket or not key or any(part in ("", ".", "..") for part in key.split("/")):
        return f"payload.s3_uri={uri!r}: must be under {allowed} (this deployment's payload prefix)"
    return None
