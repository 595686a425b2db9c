"""What a capacity event means: EventBridge event plus the instance's facts in, circuit-breaker signals out (pure).

Events (each region's rules deliver only that region's):
- Auto Scaling "EC2 Instance Launch Unsuccessful" / "EC2 Instance Launch Successful" for this deployment's
  groups: the StatusMessage says why (insufficient capacity, quota, reservation) and usually which type.
- EC2 "EC2 Spot Instance Interruption Warning" and "EC2 Instance Rebalance Recommendation": the instance's
  group tag says whether it is ours (most are not: the rule cannot filter by tag).
- EC2 Capacity Block expiration warning for the configured block: its instances are drained through the
  termination lifecycle hook (the worker finishes or requeues its jobs) before EC2 reclaims them, and the
  block's offering stays open until the block ends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crossfleet_control.core.capacity_health import ANY_TYPE, CLOSED, Offering, Signal, classify_launch_failure
from crossfleet_control.core.policy_types import PoolTelemetry

LAUNCH_UNSUCCESSFUL = "EC2 Instance Launch Unsuccessful"
LAUNCH_SUCCESSFUL = "EC2 Instance Launch Successful"
SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
# The EC2 guide names this event both ways on different pages: the rule matches both.
BLOCK_ENDING = ("Capacity Block Expiration Warning", "Capacity Block Reservation Expiration Warning")
GROUP_TAG = "aws:autoscaling:groupName"


@dataclass(frozen=True)
class EventSettings:
    deployment: str
    region: str
    table_name: str
    groups: Mapping[str, str]  # pool -> Auto Scaling group name
    capacity_block_id: str | None = None
    block_pool: str = "gpu"
    block_instance_type: str | None = None
    # More groups of a pool (Auto Scaling group name -> pool): the GPU pool's warm lane, whose launches (and
    # starts from the warm pool) fail for lack of capacity like the main group's.
    lanes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> EventSettings:
        return cls(**json.loads(text))

    def pool_of(self, group_name: str | None) -> str | None:
        own = next((pool for pool, name in self.groups.items() if name == group_name), None)
        return own if own is not None or group_name is None else self.lanes.get(group_name)


@dataclass(frozen=True)
class InstanceFacts:
    instance_type: str
    market: str  # "spot" or "on-demand"
    group_name: str | None


def interpret(event: Mapping[str, Any], settings: EventSettings, facts: InstanceFacts | None,
              now: float) -> list[Signal]:
    """The signals one event carries for this deployment (none for another deployment's instance)."""
    kind = event.get("detail-type", "")
    detail = event.get("detail") or {}
    # An event stamped in the future (clock skew) must not push a breaker's clock ahead of everyone else's.
    at = min(_event_time(event, now), now)
    region = event.get("region") or settings.region
    if kind in (LAUNCH_UNSUCCESSFUL, LAUNCH_SUCCESSFUL):
        pool = settings.pool_of(detail.get("AutoScalingGroupName"))
        if pool is None:
            return []
        if kind == LAUNCH_SUCCESSFUL:
            launched_type = facts.instance_type if facts else ANY_TYPE
            market = facts.market if facts else "on-demand"
            offerings = {Offering(region, pool, launched_type, market), Offering(region, pool, ANY_TYPE, "on-demand")}
            return [Signal(o, "success", at, "instance launched") for o in sorted(offerings, key=str)]
        message = str(detail.get("StatusMessage") or detail.get("Cause") or "")
        signal_kind, instance_type, market = classify_launch_failure(message)
        return [Signal(Offering(region, pool, instance_type or ANY_TYPE, market), signal_kind, at, message[:300])]
    if kind in (SPOT_WARNING, REBALANCE):
        if facts is None:
            return []
        pool = settings.pool_of(facts.group_name)
        if pool is None:
            return []
        signal_kind = "spot_interruption" if kind == SPOT_WARNING else "rebalance_recommendation"
        return [Signal(Offering(region, pool, facts.instance_type, "spot"), signal_kind, at,
                       f"{kind} for {detail.get('instance-id')}")]
    if kind in BLOCK_ENDING:
        block = detail.get("capacity-reservation-id")
        if not settings.capacity_block_id or block != settings.capacity_block_id:
            return []
        until = _parse_time(detail.get("end-date")) or at + 40 * 60
        return [Signal(Offering(region, settings.block_pool, settings.block_instance_type or ANY_TYPE, "reserved"),
                       "block_ending", at, f"Capacity Block {block} ends at {detail.get('end-date')}", until=until)]
    return []


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _event_time(event: Mapping[str, Any], now: float) -> float:
    return _parse_time(event.get("time")) or now



def gap_signals(region: str, telemetry: dict[str, PoolTelemetry], pool_wide: dict[str, str],
                now: float) -> list[Signal]:
    """The group's own evidence: desired above in-service + pending while launches fail opens the pool-wide
    breaker (after two cycles); a group that has everything it asked for closes a half-open one."""
    signals = []
    for pool, t in telemetry.items():
        if t.desired is None or t.in_service is None:
            continue
        offering = Offering(region, pool, ANY_TYPE, "on-demand")
        gap = t.desired - t.in_service - (t.pending or 0)
        if gap > 0 and (t.failed_launches or 0) > 0:
            signals.append(Signal(offering, "launch_gap", now,
                                  f"desired {t.desired}, in service {t.in_service}, pending {t.pending}, "
                                  f"{t.failed_launches} failed launches"))
        elif gap <= 0 and t.desired > 0 and pool_wide.get(pool, CLOSED) != CLOSED:
            signals.append(Signal(offering, "success", now, f"{t.in_service} of {t.desired} in service"))
    return signals

