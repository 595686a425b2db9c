"""The capacity-events Lambda: EventBridge capacity signals in, circuit breakers per offering out.

Events (each region's rules deliver only that region's):
- Auto Scaling "EC2 Instance Launch Unsuccessful" / "EC2 Instance Launch Successful" for this deployment's
  groups: the StatusMessage says why (insufficient capacity, quota, reservation) and usually which type.
- EC2 "EC2 Spot Instance Interruption Warning" and "EC2 Instance Rebalance Recommendation": the instance's
  group tag says whether it is ours (most are not: the rule cannot filter by tag).
- EC2 Capacity Block expiration warning for the configured block: its instances are drained through the
  termination lifecycle hook (the worker finishes or requeues its jobs) before EC2 reclaims them, and the
  block's offering stays open until the block ends.

`interpret` is pure (event + the instance's facts in, signals out); `handle` does the AWS calls.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crossfleet_control.capacity_health import ANY_TYPE, Offering, Signal, classify_launch_failure
from crossfleet_control.health_store import HealthStore
from crossfleet_control.metrics import MetricsRecorder

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

    @classmethod
    def from_json(cls, text: str) -> EventSettings:
        return cls(**json.loads(text))

    def pool_of(self, group_name: str | None) -> str | None:
        return next((pool for pool, name in self.groups.items() if name == group_name), None)


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
            instance_type = facts.instance_type if facts else ANY_TYPE
            market = facts.market if facts else "on-demand"
            offerings = {Offering(region, pool, instance_type, market), Offering(region, pool, ANY_TYPE, "on-demand")}
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


@dataclass
class CapacityEvents:
    settings: EventSettings
    store: HealthStore
    ec2: Any
    autoscaling: Any
    metrics: MetricsRecorder

    def handle(self, event: Mapping[str, Any], now: float) -> dict[str, Any]:
        facts = self._facts(event)
        signals = interpret(event, self.settings, facts, now)
        written = self.store.record(signals)
        for signal in signals:
            self.metrics.add("CapacitySignals", 1, Pool=signal.offering.pool, Kind=signal.kind)
        drained = 0
        if any(s.kind == "block_ending" for s in signals):
            drained = self._drain_block_instances()
        self.metrics.flush()
        return {"signals": [s.kind for s in signals],
                "breakers": {b.offering.sort_key: b.state for b in written}, "drained": drained}

    def _facts(self, event: Mapping[str, Any]) -> InstanceFacts | None:
        detail = event.get("detail") or {}
        instance_id = detail.get("instance-id") or detail.get("EC2InstanceId")
        if not instance_id:
            return None
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except Exception as error:  # gone already, or not ours to see: no facts, no signal
            print(f"crossfleet capacity events: describe_instances {instance_id}: {error}")
            return None
        for reservation in reservations:
            for instance in reservation.get("Instances", []):
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                return InstanceFacts(instance_type=instance["InstanceType"],
                                     market="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
                                     group_name=tags.get(GROUP_TAG))
        return None

    def _drain_block_instances(self) -> int:
        """Scale the block's group in through its lifecycle hook, so workers drain before EC2 reclaims."""
        group = self.settings.groups[self.settings.block_pool]
        instances = self.autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[group])["AutoScalingGroups"][0].get("Instances", [])
        drained = 0
        for instance in instances:
            if instance.get("LifecycleState") not in ("InService", "Pending", "Pending:Wait", "Pending:Proceed"):
                continue
            try:
                self.autoscaling.terminate_instance_in_auto_scaling_group(
                    InstanceId=instance["InstanceId"], ShouldDecrementDesiredCapacity=True)
                drained += 1
            except Exception as error:  # already terminating is fine: the hook is running for it
                print(f"crossfleet capacity events: drain {instance['InstanceId']}: {error}")
        self.metrics.add("BlockInstancesDrained", drained, Pool=self.settings.block_pool)
        return drained


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _event_time(event: Mapping[str, Any], now: float) -> float:
    return _parse_time(event.get("time")) or now


_HANDLER: CapacityEvents | None = None


def build(settings: EventSettings, *, session: Any = None) -> CapacityEvents:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 4})
    session = session or boto3.session.Session(region_name=settings.region)
    return CapacityEvents(
        settings=settings,
        store=HealthStore(session.client("dynamodb", config=config), settings.table_name, settings.region),
        ec2=session.client("ec2", config=config), autoscaling=session.client("autoscaling", config=config),
        metrics=MetricsRecorder(settings.deployment, settings.region))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = build(EventSettings.from_json(os.environ["CROSSFLEET_EVENT_SETTINGS"]))
    return _HANDLER.handle(event, time.time())
