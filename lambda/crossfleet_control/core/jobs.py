"""The crossfleet job schema, version 1: one definition shared by the CLI, router, rebalancer and workers.

A message body on any crossfleet queue is one JSON job. `parse_job` returns a `Job` or raises `JobRejected`
with a reason a producer can act on; nothing downstream has to re-check fields. See docs/job-schema.md.
"""

from __future__ import annotations

import hashlib
import json
import math
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
# fullmatch, not `$`: `$` also matches before a trailing newline, so "abc\n" would pass as an id.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# submitted_at must be finite and before 2100: year 9999 or Infinity would make every deadline meaningless,
# and Infinity is not JSON. (Small positive values stay valid: the simulator counts from its own zero.)
_LATEST_SUBMITTED_AT = 4_102_444_800.0  # 2100-01-01T00:00:00Z
_MAX_COUNTER = 1_000_000  # attempt and moves: far above any configured limit, far below absurd
_FIELDS = ("schema_version", "id", "class", "placement", "preference", "size", "deadline_seconds", "priority",
           "submitted_at", "attempt", "moves", "payload", "region", "origin", "model_params_billion")
# Model size bounds: above any released dense or mixture-of-experts model's total parameters, below absurd.
_MAX_MODEL_PARAMS_BILLION = 10_000.0
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
    # The region whose ledger holds this job's identity, set when it leaves that region (failover or a
    # cross-region move): workers anywhere claim it there, so it runs once across regions.
    origin: str | None = None
    # The model's size in billions of parameters, when the producer names it: placement scales the service
    # model's per-token times from its reference model (core/marginal_cost.py). None: the reference model.
    model_params_billion: float | None = None

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

    def moved(self, origin: str | None = None) -> Job:
        """The copy a move sends; `origin` is the sending region when the copy leaves it (kept if already set)."""
        return replace(self, moves=self.moves + 1, origin=self.origin or origin)

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
        if self.origin:
            body["origin"] = self.origin
        if self.model_params_billion is not None:
            body["model_params_billion"] = self.model_params_billion
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_message(), separators=(",", ":"), sort_keys=True, allow_nan=False)

    def fingerprint(self) -> str:
        """What makes two submissions with one id the same job: everything but what changes as the job travels
        (attempt, moves, origin). The ledger keeps it so a different job reusing the id is told
        apart from a duplicate delivery (see docs/job-lifecycle.md)."""
        content = {k: v for k, v in self.to_message().items() if k not in ("attempt", "moves", "origin")}
        canonical = json.dumps(content, separators=(",", ":"), sort_keys=True, allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def parse_job(body: str | bytes | dict[str, Any]) -> Job:
    if isinstance(body, (str, bytes)):
        try:
            raw = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise JobRejected(f"body is not JSON: {error}") from None
        except (ValueError, RecursionError) as error:
            # Valid JSON Python will not build: an integer over 4300 digits (ValueError) or nesting deeper
            # than the interpreter's stack (RecursionError). Both are a producer's bug, never a job.
            raise JobRejected(f"body is not a job: {type(error).__name__}: {str(error)[:120]}") from None
    else:
        raw = body
    if not isinstance(raw, dict):
        raise JobRejected(f"body must be a JSON object, got {type(raw).__name__}")
    job_id = raw.get("id") if isinstance(raw.get("id"), str) else None

    def reject(reason: str) -> JobRejected:
        return JobRejected(reason, job_id)

    version = raw.get("schema_version")
    # `type(...) is int`: `true == 1` and `1.0 == 1` in Python, but neither is schema_version 1.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise reject(f"schema_version={version!r}: this crossfleet reads schema_version {SCHEMA_VERSION}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise reject(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    for required in ("id", "class", "placement", "size", "deadline_seconds", "submitted_at"):
        if required not in raw:
            raise reject(f"missing required field '{required}'")
    if not isinstance(raw["id"], str) or not _ID.fullmatch(raw["id"]):
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
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNTER:
            raise reject(f"{name}={value!r}: a whole number from 0 to {_MAX_COUNTER}")
    submitted_at = _timestamp(raw.get("submitted_at"), reject)
    payload = raw.get("payload", {})
    if not isinstance(payload, dict):
        raise reject("payload: an object (inline JSON) or {\"s3_uri\": \"s3://bucket/key\"}")
    if "s3_uri" in payload and not (isinstance(payload["s3_uri"], str) and payload["s3_uri"].startswith("s3://")):
        raise reject(f"payload.s3_uri={payload['s3_uri']!r}: an s3://bucket/key URI")
    try:
        encoded = len(json.dumps(payload, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:  # NaN or Infinity: Python's json reads them, but they are not JSON and cannot be resent
        raise reject("payload: JSON numbers only (NaN and Infinity are not JSON)") from None
    if encoded > MAX_INLINE_PAYLOAD_BYTES:
        raise reject(f"payload is {encoded} bytes inline; the limit is {MAX_INLINE_PAYLOAD_BYTES}: upload it to S3 "
                     "and send {\"s3_uri\": \"s3://bucket/key\"} instead")
    region = raw.get("region")
    if region is not None and region not in US_REGIONS:
        raise reject(f"region={region!r}: a US region pin, one of {', '.join(US_REGIONS)}, or absent")
    origin = raw.get("origin")
    if origin is not None and origin not in US_REGIONS:
        raise reject(f"origin={origin!r}: the US region whose ledger holds the job, one of {', '.join(US_REGIONS)}")
    model_params = raw.get("model_params_billion")
    if model_params is not None and (isinstance(model_params, bool) or not isinstance(model_params, (int, float))
                                     or not 0 < model_params <= _MAX_MODEL_PARAMS_BILLION):
        raise reject(f"model_params_billion={model_params!r}: the model's size in billions of parameters, above 0 "
                     f"and at most {_MAX_MODEL_PARAMS_BILLION:.0f}, or absent (the reference 8B model)")
    return Job(id=raw["id"], job_class=job_class, placement=placement, preference=preference,
               input_tokens=input_tokens, output_tokens=output_tokens, cpu_seconds=cpu_seconds,
               gpu_seconds=gpu_seconds, deadline_seconds=float(deadline), priority=priority,
               submitted_at=submitted_at, attempt=attempt, moves=moves, payload=payload, region=region,
               origin=origin, model_params_billion=None if model_params is None else float(model_params))


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
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= _LATEST_SUBMITTED_AT:
        raise reject(f"submitted_at={value!r}: epoch seconds or an ISO 8601 timestamp, above 0 and before "
                     "2100-01-01 (UTC)")
    return seconds


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
