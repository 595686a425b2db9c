"""Workloads: the Azure LLM inference trace mapped to inference jobs, synthetic streams, and their mix.

The Azure trace (TIMESTAMP, ContextTokens, GeneratedTokens) is from the Azure Public Dataset
(github.com/Azure/AzurePublicDataset, CC-BY 4.0; Patel et al., "Splitwise", ISCA 2024). It is read from
wherever the user keeps it and never copied into this repository.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from datetime import datetime

from crossfleet.sim.scenario import Scenario, SyntheticStream, TraceWorkload
from crossfleet.sim.stats import no_cyclic_gc
from crossfleet_control.core.jobs import Job


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds from the start of the run
    region: str
    job: Job


def read_trace(path: str) -> list[tuple[float, int, int]]:
    """(seconds since the first request, context tokens, generated tokens), in time order."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            stamp = row["TIMESTAMP"].strip()
            # The trace has 7 fractional digits; Python parses at most 6.
            if "." in stamp:
                head, fraction = stamp.split(".", 1)
                stamp = f"{head}.{fraction[:6]}"
            rows.append((datetime.fromisoformat(stamp).timestamp(), int(row["ContextTokens"]),
                         int(row["GeneratedTokens"])))
    rows.sort()
    if not rows:
        return []
    first = rows[0][0]
    return [(t - first, c, g) for t, c, g in rows]


def trace_arrivals(workload: TraceWorkload, duration: float, rng: random.Random) -> list[Arrival]:
    """The trace on its own timeline at `rate_scale` times its request rate.

    Each request stands for `rate_scale` requests of the same size (a fractional part by a seeded coin),
    spread over the following second, so the trace's own burstiness (per-minute peaks about 3.8x the mean)
    is kept at its real time scale. Past the trace's end (57 minutes) it starts again from the top.
    """
    rows = read_trace(workload.path)
    if not rows:
        return []
    span = rows[-1][0] + 1.0
    whole, fraction = int(workload.rate_scale), workload.rate_scale - int(workload.rate_scale)
    arrivals: list[Arrival] = []
    index = 0
    # Loop invariants hoisted: at 40x this loop makes ~400k jobs.
    regions, last = workload.regions, math.nextafter(duration, 0)
    preference = _preference(workload.placement, workload.preference)
    for cycle in range(math.ceil(duration / span)):
        for offset, context, generated in rows:
            base = cycle * span + offset
            if base >= duration:
                break
            for _ in range(whole + (1 if rng.random() < fraction else 0)):
                at = min(base + rng.random(), last)
                region = regions[index % len(regions)]
                job = Job(id=f"trace-{index}", job_class="inference", placement=workload.placement,
                          preference=preference, input_tokens=context,
                          output_tokens=generated, cpu_seconds=None, gpu_seconds=None,
                          deadline_seconds=workload.deadline_seconds, priority=5, submitted_at=at)
                arrivals.append(Arrival(at=at, region=region, job=job))
                index += 1
    return arrivals


def synthetic_arrivals(stream: SyntheticStream, number: int, duration: float, rng: random.Random) -> list[Arrival]:
    """A Poisson stream of jobs with sizes uniform in the configured ranges."""
    arrivals: list[Arrival] = []
    if stream.rate_per_second <= 0:
        return arrivals
    at = stream.start_seconds + rng.expovariate(stream.rate_per_second)
    end = min(duration, stream.end_seconds if stream.end_seconds is not None else duration)
    index = 0
    preference = _preference(stream.placement, stream.preference)
    while at < end:
        job = Job(id=f"{stream.job_class}-{number}-{index}", job_class=stream.job_class, placement=stream.placement,
                  preference=preference,
                  input_tokens=rng.randint(*stream.input_tokens), output_tokens=rng.randint(*stream.output_tokens),
                  cpu_seconds=rng.uniform(*stream.cpu_seconds) if stream.cpu_seconds else None,
                  gpu_seconds=rng.uniform(*stream.gpu_seconds) if stream.gpu_seconds else None,
                  deadline_seconds=stream.deadline_seconds, priority=5, submitted_at=at)
        arrivals.append(Arrival(at=at, region=rng.choice(stream.regions), job=job))
        at += rng.expovariate(stream.rate_per_second)
        index += 1
    return arrivals


def _preference(placement: str, preference: str) -> str:
    return {"cpu_only": "cpu", "gpu_only": "gpu"}.get(placement, preference)


def build_workload(scenario: Scenario) -> list[Arrival]:
    rng = random.Random(scenario.seed)
    arrivals: list[Arrival] = []
    with no_cyclic_gc():
        if scenario.trace:
            arrivals += trace_arrivals(scenario.trace, scenario.duration_seconds, rng)
        for number, stream in enumerate(scenario.synthetic):
            arrivals += synthetic_arrivals(stream, number, scenario.duration_seconds, rng)
        arrivals.sort(key=lambda a: (a.at, a.job.id))
    return arrivals
