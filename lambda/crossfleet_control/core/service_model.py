"""How long a job takes on an instance type, what an instance costs and draws: the controllers' service model.

Pure (no boto3). Rates come from data/instance_profiles.json, whose entries cite their sources. A job's time
on an instance is the work it needs (prompt tokens at the prefill rate, output tokens at the decode rate, or
explicit CPU/GPU seconds) divided across the instance's concurrent streams.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from crossfleet_control.core.jobs import Job

_PROFILES = Path(__file__).with_name("data") / "instance_profiles.json"


@dataclass(frozen=True)
class InstanceProfile:
    """One instance type's capacity for the reference workload."""

    instance_type: str
    on_demand_per_hour: float
    spot_per_hour: float
    prefill_tokens_per_second: float  # whole instance, at full concurrency
    decode_tokens_per_second: float  # whole instance, at full concurrency
    streams: int  # jobs that run at once on one instance
    boot_seconds: float
    watts: float
    is_accelerated: bool
    replicas: int = 1  # model copies per instance: one per accelerator, one per CPU instance
    decode_tokens_per_second_batch1: float = 0.0  # one stream alone on a replica

    @property
    def _decode_exponent(self) -> float:
        """Per-stream decode falls as k^-beta from batch 1 to full batch (two cited points per family)."""
        per_replica = self.streams / self.replicas
        full = self.decode_tokens_per_second / self.streams
        if per_replica <= 1 or self.decode_tokens_per_second_batch1 <= full:
            return 0.0
        return math.log(self.decode_tokens_per_second_batch1 / full) / math.log(per_replica)

    def job_seconds_at(self, job: Job, active: int) -> float:
        """Seconds for a job that starts while `active` jobs (itself included) run on the instance.

        Used by the simulator. At full concurrency it equals `job_seconds`, which the controller uses: the
        controller plans with the slowest per-job case, the simulator plays out the real concurrency.
        """
        explicit = job.gpu_seconds if self.is_accelerated else job.cpu_seconds
        if explicit is not None:
            return explicit
        per_replica = max(1.0, active / self.replicas)
        prefill = self.prefill_tokens_per_second / self.replicas / per_replica
        batch1 = self.decode_tokens_per_second_batch1 or self.decode_tokens_per_second / self.streams
        decode = batch1 * per_replica ** (-self._decode_exponent)
        return float(job.input_tokens / prefill + job.output_tokens / decode)

    def job_seconds(self, job: Job) -> float:
        """Wall-clock seconds one job takes while the instance runs `streams` jobs at once."""
        explicit = job.gpu_seconds if self.is_accelerated else job.cpu_seconds
        if explicit is not None:
            return explicit
        per_stream_prefill = self.prefill_tokens_per_second / self.streams
        per_stream_decode = self.decode_tokens_per_second / self.streams
        return job.input_tokens / per_stream_prefill + job.output_tokens / per_stream_decode

    def jobs_per_second(self, mean_job_seconds: float) -> float:
        return self.streams / mean_job_seconds if mean_job_seconds > 0 else float("inf")


@cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_PROFILES.read_text())
    return document


def known_families() -> tuple[str, ...]:
    return tuple(sorted(_document()["families"]))


def profile_for(instance_type: str, *, vcpus: int, accelerators: int) -> InstanceProfile:
    """Scale the family's per-vCPU or per-device figures to one instance size."""
    document = _document()
    family = instance_type.split(".", 1)[0]
    entry = document["families"].get(family)
    if entry is None:
        raise KeyError(f"no service profile for {instance_type}; known families: {', '.join(known_families())}")
    accelerated = entry["unit"] == "accelerator"
    units = accelerators if accelerated else vcpus
    on_demand = entry["price_per_unit_hour"] * units
    spot_factor = document["spot_price_factor"]["accelerator" if accelerated else "cpu"]
    return InstanceProfile(
        instance_type=instance_type,
        on_demand_per_hour=round(on_demand, 5),
        spot_per_hour=round(on_demand * spot_factor, 5),
        prefill_tokens_per_second=entry["prefill_tps_per_unit"] * units,
        decode_tokens_per_second=entry["decode_tps_per_unit"] * units,
        streams=max(1, round(entry["streams_per_unit"] * units)),
        boot_seconds=float(entry["boot_seconds"]),
        watts=entry["watts_per_unit"] * units,
        is_accelerated=accelerated,
        replicas=max(1, accelerators) if accelerated else 1,
        decode_tokens_per_second_batch1=entry.get("decode_tps_batch1_per_unit", 0.0) * (1 if accelerated else units),
    )
