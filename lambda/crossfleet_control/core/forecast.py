"""A pool's demand forecast from its own recent history: a decaying recent-peak envelope. Pure, no boto3.

Why a peak envelope: the workloads crossfleet serves arrive in bursts shorter than a control period (the Azure
code trace goes from ~80 to ~3,000 requests a minute and back within a minute or two), so a queue sampled once a
minute is usually empty, and the want it gives falls between bursts. Scaling in on that want leaves the next burst
to a fleet that needs a boot (110 s on a GPU) before it can help, while every job in the burst has a 60 s deadline.
The largest recent want is the cheapest predictor of the next burst we have without a time-of-day profile (an hour
of history holds no day), and it never predicts more than the pool itself needed recently.

Why it decays: a peak counts in proportion to how recent it is (full weight now, nothing after `window_seconds`),
so capacity held for a burst is released gradually, and a one-off peak (a failover, a backfill) does not hold the
whole fleet for the whole window. Measured on the shipped scenarios (docs/simulator.md): a flat 30-minute envelope
cost 12-38% more than the decaying one for the same SLO.

State: the envelope keeps only samples that can still be a (decayed) maximum: each kept sample is larger than
every later one, so it holds a handful of (time, want) pairs and fits the state table's item.

Failover: a region whose GPUs are short sends its GPU work to the healthy regions, so a healthy region holds, on
top of its own floor, its share of each short peer's published peak (`failover_floor`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from crossfleet_control.core.capacity_health import DEGRADED, HEALTHY, RegionSummary

Sample = tuple[float, int]  # (seconds, instances wanted then)
MAX_SAMPLES = 64  # a bound on the stored item whatever the history: older maxima are dropped first


@dataclass(frozen=True)
class ForecastSettings:
    window_seconds: float = 1800.0  # a peak's weight falls linearly from 1 now to 0 this long after it
    share: float = 1.0  # floor = share x the decayed recent peak (0 switches the floor off)


def record(envelope: tuple[Sample, ...], now: float, want: int, window_seconds: float) -> tuple[Sample, ...]:
    """The envelope after observing `want` at `now`. Samples out of the window, from the future (a clock that went
    back), or not larger than the new one are dropped: they can never be the maximum again."""
    want = max(0, want)
    kept = [s for s in envelope if now - window_seconds < s[0] <= now and s[1] > want]
    kept.append((now, want))
    return tuple(kept[-MAX_SAMPLES:])


def peak(envelope: tuple[Sample, ...], now: float, window_seconds: float) -> int:
    """The largest want within the window, each weighted by 1 - age/window (0 with no history)."""
    if window_seconds <= 0:
        return 0
    return max((math.ceil(n * (1 - (now - at) / window_seconds) - 1e-9)
                for at, n in envelope if now - window_seconds < at <= now), default=0)


def floor(envelope: tuple[Sample, ...], now: float, settings: ForecastSettings, max_size: int) -> int:
    """Instances to keep ahead of the next burst: `share` of the decayed recent peak, within [0, max_size]."""
    if settings.share <= 0:
        return 0
    return max(0, min(max_size, math.ceil(settings.share * peak(envelope, now, settings.window_seconds) - 1e-9)))


def failover_floor(peers: Mapping[str, RegionSummary], region: str, configured: tuple[str, ...], now: float,
                   stale_after_seconds: float, share: float) -> tuple[int, str]:
    """This region's share of the GPU work short peers will forward: each fresh, configured, short peer's published
    peak, split evenly over the regions able to take it (this one and every fresh healthy peer)."""
    if share <= 0:
        return 0, ""
    fresh = {name: s for name, s in peers.items()
             if name != region and name in configured and now - s.updated_at <= stale_after_seconds}
    receivers = 1 + sum(1 for s in fresh.values() if s.status in (HEALTHY, DEGRADED))
    total, notes = 0, []
    for name, summary in sorted(fresh.items()):
        if summary.status in (HEALTHY, DEGRADED) or summary.peak_want <= 0:
            continue
        part = math.ceil(share * summary.peak_want / receivers - 1e-9)
        total += part
        notes.append(f"{part} for {name} ({summary.status}, peak {summary.peak_want})")
    return total, "; ".join(notes)
