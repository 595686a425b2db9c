"""Capacity health: one circuit breaker per offering (region, pool, instance type, market). Pure: no boto3.

Signals (launch failures, Spot notices, Capacity Block ends, the ASG's desired-versus-actual gap) add to a
failure score that decays with a half-life; a strong signal (insufficient capacity, a zero quota) opens the
breaker at once, weak ones (a rebalance recommendation) only when they pile up. An open breaker says "this
offering said no": nobody launches there until it half-opens after a backoff that doubles with every reopen
(capped, as cluster-autoscaler does). Half-open admits a trickle of work and a probe launch; a failure reopens
it, two successes or a quiet spell close it. After closing, the share of new work a pool accepts ramps back up
over `RAMP_SECONDS`, so work returns gradually instead of all at once.

`pool_health` folds a pool's breakers into the status the rebalancer, the router and other regions read.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
ANY_TYPE = "*"  # a pool-wide breaker (the desired-versus-actual gap names no instance type)
MARKETS = ("on-demand", "spot", "reserved")

# Failure weight per signal: 1.0 opens a closed breaker by itself.
SIGNAL_WEIGHTS = {
    "insufficient_capacity": 1.0,
    "quota_exceeded": 1.0,
    "reservation_unavailable": 1.0,
    "block_ending": 1.0,
    "launch_failed": 0.5,  # a failed launch for another reason (bad subnet, throttled): twice before opening
    "launch_gap": 0.5,  # desired above in-service + pending with failed activities, seen by the rebalancer
    "spot_interruption": 0.5,
    "rebalance_recommendation": 0.25,
}
# First open lasts this long; quotas do not come back by themselves, so they wait longer.
BASE_OPEN_SECONDS = {"quota_exceeded": 900.0}
DEFAULT_BASE_OPEN_SECONDS = 180.0  # Karpenter blocks an offering for 3 minutes
MAX_OPEN_SECONDS = 1800.0  # cluster-autoscaler backs off 5 to 30 minutes
SCORE_HALF_LIFE_SECONDS = 600.0
CLOSE_AFTER_SUCCESSES = 2
QUIET_CLOSE_SECONDS = 600.0  # half-open with no failure for this long closes (Spot is never probed directly)
RESET_OPENS_AFTER_SECONDS = 1800.0  # closed this long: the backoff starts again from its base
RAMP_SECONDS = 600.0
HALF_OPEN_ADMIT = 0.25
RAMP_START_ADMIT = 0.5


@dataclass(frozen=True)
class Offering:
    region: str
    pool: str
    instance_type: str
    market: str

    @property
    def sort_key(self) -> str:
        return f"offering#{self.pool}#{self.instance_type}#{self.market}"

    @classmethod
    def from_sort_key(cls, region: str, sort_key: str) -> Offering:
        _, pool, instance_type, market = sort_key.split("#", 3)
        return cls(region, pool, instance_type, market)


@dataclass(frozen=True)
class Breaker:
    offering: Offering
    state: str = CLOSED
    score: float = 0.0
    score_at: float = 0.0
    opens: int = 0  # consecutive opens: the backoff doubles with each
    open_until: float = 0.0
    half_open_at: float = 0.0
    successes: int = 0
    closed_at: float | None = None
    reason: str = ""
    version: int = 0  # optimistic concurrency in the state table

    def decayed_score(self, now: float) -> float:
        elapsed = max(0.0, now - self.score_at)
        return float(self.score * 0.5 ** (elapsed / SCORE_HALF_LIFE_SECONDS))


@dataclass(frozen=True)
class Signal:
    """One piece of evidence about an offering: a failure kind from SIGNAL_WEIGHTS, or "success"."""

    offering: Offering
    kind: str
    at: float
    reason: str
    until: float | None = None  # keep open at least until then (a Capacity Block's end)

    @property
    def is_success(self) -> bool:
        return self.kind == "success"


def backoff_seconds(kind: str, opens: int) -> float:
    base = BASE_OPEN_SECONDS.get(kind, DEFAULT_BASE_OPEN_SECONDS)
    return float(min(MAX_OPEN_SECONDS, base * 2 ** max(0, opens - 1)))


def current(breaker: Breaker, now: float) -> Breaker:
    """The breaker as time alone has changed it: open -> half-open after the backoff, quiet half-open -> closed."""
    if breaker.state == OPEN and now >= breaker.open_until:
        breaker = replace(breaker, state=HALF_OPEN, half_open_at=breaker.open_until, successes=0)
    if breaker.state == HALF_OPEN and now - breaker.half_open_at >= QUIET_CLOSE_SECONDS:
        breaker = replace(breaker, state=CLOSED, closed_at=breaker.half_open_at + QUIET_CLOSE_SECONDS,
                          score=0.0, score_at=now, reason=f"closed: quiet for {QUIET_CLOSE_SECONDS:.0f}s half-open")
    if (breaker.state == CLOSED and breaker.opens and breaker.closed_at is not None
            and now - breaker.closed_at >= RESET_OPENS_AFTER_SECONDS):
        breaker = replace(breaker, opens=0)
    return breaker


def apply(breaker: Breaker, signal: Signal) -> Breaker:
    """The breaker after one signal. Signals may arrive late or out of order: time never runs backwards."""
    now = max(signal.at, breaker.score_at)
    breaker = current(breaker, now)
    if signal.is_success:
        if breaker.state != HALF_OPEN:
            return breaker  # an open breaker waits out its backoff; a closed one has nothing to learn
        successes = breaker.successes + 1
        if successes >= CLOSE_AFTER_SUCCESSES:
            return replace(breaker, state=CLOSED, successes=0, closed_at=now, score=0.0, score_at=now,
                           reason=f"closed: {successes} successful launches while half-open")
        return replace(breaker, successes=successes)
    weight = SIGNAL_WEIGHTS.get(signal.kind, SIGNAL_WEIGHTS["launch_failed"])
    score = breaker.decayed_score(now) + weight
    breaker = replace(breaker, score=score, score_at=now)
    must_open = breaker.state == HALF_OPEN or (breaker.state == CLOSED and score >= 1.0 - 1e-9)
    if must_open:
        opens = breaker.opens + 1
        until = now + backoff_seconds(signal.kind, opens)
        if signal.until is not None:
            until = max(until, signal.until)
        return replace(breaker, state=OPEN, opens=opens, open_until=until, successes=0,
                       reason=f"open until +{until - now:.0f}s after {signal.kind}: {signal.reason}")
    if breaker.state == OPEN and signal.until is not None and signal.until > breaker.open_until:
        return replace(breaker, open_until=signal.until, reason=f"open until block end: {signal.reason}")
    return breaker


def admit_fraction(breaker: Breaker, now: float) -> float:
    """Share of new work this offering may take: 0 open, a trickle half-open, ramping back after closing."""
    breaker = current(breaker, now)
    if breaker.state == OPEN:
        return 0.0
    if breaker.state == HALF_OPEN:
        return HALF_OPEN_ADMIT
    if breaker.closed_at is None:
        return 1.0
    progress = (now - breaker.closed_at) / RAMP_SECONDS
    return min(1.0, RAMP_START_ADMIT + (1.0 - RAMP_START_ADMIT) * max(0.0, progress))


# -- a pool's health from its breakers ------------------------------------------------------------------------

HEALTHY, DEGRADED, PROBING, SHORT = "healthy", "degraded", "probing", "short"
STATUS_RANK = {HEALTHY: 0, DEGRADED: 1, PROBING: 2, SHORT: 3}


@dataclass(frozen=True)
class PoolHealth:
    status: str = HEALTHY
    admit: float = 1.0  # share of new work the router sends here (the rest goes elsewhere)
    spot_short: bool = False  # Spot is failing for this pool: run On-Demand until it recovers
    reason: str = ""

    @property
    def short(self) -> bool:
        return self.status == SHORT

    @property
    def probing(self) -> bool:
        return self.status == PROBING


def pool_health(breakers: Iterable[Breaker], instance_types: Iterable[str], now: float) -> PoolHealth:
    """Short when a pool-wide breaker is open or every type the group may launch is open (On-Demand or reserved
    capacity: Spot only decides `spot_short`); probing when nothing is closed but something is half-open."""
    types = tuple(instance_types)
    capacity: dict[str, Breaker] = {}
    spot_open: list[Breaker] = []
    pool_wide: Breaker | None = None
    for breaker in (current(b, now) for b in breakers):
        offering = breaker.offering
        if offering.market == "spot":
            if breaker.state != CLOSED:
                spot_open.append(breaker)
            continue
        if offering.instance_type == ANY_TYPE:
            pool_wide = breaker
        elif offering.instance_type in types:
            previous = capacity.get(offering.instance_type)
            # Two markets for one type: the worse of them counts.
            if previous is None or _worse(breaker, previous, now):
                capacity[offering.instance_type] = breaker
    spot_short = bool(spot_open)
    spot_note = f"; Spot short ({spot_open[0].reason})" if spot_open else ""
    if pool_wide is not None and pool_wide.state == OPEN:
        return PoolHealth(SHORT, 0.0, spot_short, f"pool: {pool_wide.reason}{spot_note}")
    # The pool-wide breaker (the group's own gap) never stands in for an instance type: a closed one does not
    # make a pool whose every type is half-open any less a probe.
    type_states = [capacity[t].state if t in capacity else CLOSED for t in types] or [CLOSED]
    if all(state == OPEN for state in type_states):
        worst = next(iter(capacity.values()))
        return PoolHealth(SHORT, 0.0, spot_short, f"every type open: {worst.reason}{spot_note}")
    not_closed = [t for t in types if t in capacity and capacity[t].state != CLOSED]
    if CLOSED not in type_states or (pool_wide is not None and pool_wide.state == HALF_OPEN):
        what = ", ".join(not_closed) or "the group"
        return PoolHealth(PROBING, HALF_OPEN_ADMIT, spot_short,
                          f"{what} half-open: probing, admitting {HALF_OPEN_ADMIT:.0%}{spot_note}")
    admits = [admit_fraction(capacity[t], now) for t in types if t in capacity]
    if pool_wide is not None:
        admits.append(admit_fraction(pool_wide, now))
    admit = min([a for a in admits if a > 0] or [1.0])
    if not_closed:
        return PoolHealth(DEGRADED, admit, spot_short, f"{', '.join(not_closed)} not closed{spot_note}")
    reason = f"recovering: admitting {admit:.0%}" if admit < 1.0 else "healthy"
    return PoolHealth(HEALTHY, admit, spot_short, reason + spot_note)


def _worse(a: Breaker, b: Breaker, now: float) -> bool:
    order = {OPEN: 2, HALF_OPEN: 1, CLOSED: 0}
    return (order[a.state], -admit_fraction(a, now)) > (order[b.state], -admit_fraction(b, now))


def admits(job_id: str, fraction: float) -> bool:
    """Deterministic by job id, so a redelivered job lands where its first delivery did."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    return zlib.crc32(job_id.encode()) / 2**32 < fraction


# -- other regions, for failover ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegionSummary:
    """What one region's rebalancer last published about its GPU pool, for the other regions' failover."""

    region: str
    status: str
    admit: float
    in_service: int
    desired: int
    max_size: int
    queued: int
    updated_at: float
    # How long a job queued now waits for a GPU there, as that region's own policy estimates it, and the wait
    # that region sizes for: at its maximum size and past its target, it takes no more forwarded work.
    wait_seconds: float = 0.0
    target_wait_seconds: float = 120.0
    # That region's GPU demand forecast (`forecast.peak`): what a healthy region should hold for it while it is
    # short and forwarding its GPU work (older summaries without it read 0: no hold).
    peak_want: int = 0

    def headroom(self) -> int:
        return max(0, self.max_size - self.desired)

    def full(self) -> bool:
        return self.headroom() == 0 and self.wait_seconds > self.target_wait_seconds


def failover_target(peers: Mapping[str, RegionSummary], configured: Iterable[str], now: float,
                    stale_after_seconds: float) -> tuple[str | None, str]:
    """The healthiest other configured region to forward GPU work to, or None with why not.

    Only configured regions count (a summary from anywhere else is ignored); a stale summary is unknown, and
    unknown is never healthy. Healthiest: best status, then fullest admit, then the shortest wait, then the most
    room to grow."""
    allowed = set(configured)
    candidates = []
    notes = []
    for name, summary in sorted(peers.items()):
        if name not in allowed:
            continue
        if now - summary.updated_at > stale_after_seconds:
            notes.append(f"{name} stale")
            continue
        if summary.status not in (HEALTHY, DEGRADED) or summary.admit < RAMP_START_ADMIT:
            notes.append(f"{name} {summary.status}")
            continue
        if summary.full():
            notes.append(f"{name} full (at its maximum, {summary.wait_seconds:.0f}s wait)")
            continue
        candidates.append(((STATUS_RANK[summary.status], -summary.admit, round(summary.wait_seconds),
                            -summary.headroom()), name))
    if not candidates:
        return None, "no healthy configured region: " + (", ".join(notes) or "none configured")
    best = min(candidates)[1]
    return best, f"{best} is the healthiest configured region"


# -- reading launch failures ----------------------------------------------------------------------------------

_TYPE_IN_MESSAGE = re.compile(r"\b([a-z][a-z0-9-]*\d[a-z0-9-]*\.\d*x?[a-z0-9]*large|[a-z][a-z0-9-]*\d[a-z]*\."
                              r"(?:metal|nano|micro|small|medium|large)(?:-\d+xl)?)\b")


def classify_launch_failure(message: str) -> tuple[str, str | None, str]:
    """(signal kind, instance type or None, market) from an Auto Scaling activity's StatusMessage."""
    text = message or ""
    lowered = text.lower()
    if "insufficientinstancecapacity" in lowered or ("sufficient" in lowered and "capacity" in lowered):
        kind = "insufficient_capacity"
    elif ("vcpulimitexceeded" in lowered or "maxspotinstancecountexceeded" in lowered
          or ("limit" in lowered and ("vcpu" in lowered or "quota" in lowered))):
        kind = "quota_exceeded"
    elif "reservation" in lowered and ("insufficient" in lowered or "capacity" in lowered
                                       or "not active" in lowered or "expired" in lowered):
        kind = "reservation_unavailable"
    else:
        kind = "launch_failed"
    if "capacityreservation" in lowered.replace(" ", "") or "capacity block" in lowered:
        market = "reserved"
    elif "spot" in lowered:
        market = "spot"
    else:
        market = "on-demand"
    if kind == "insufficient_capacity" and "reservation" in lowered:
        kind, market = "reservation_unavailable", "reserved"
    match = _TYPE_IN_MESSAGE.search(text)
    return kind, (match.group(1) if match else None), market


