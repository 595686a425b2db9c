"""The capacity-events function's work: read the instance's facts, interpret the event (`core.capacity_signals`),
record the signals in the breakers, and drain a Capacity Block's instances before EC2 reclaims them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.aws.instances import InstanceLookup
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core.capacity_signals import EventSettings, InstanceFacts, interpret


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

    def _instances(self) -> InstanceLookup:
        return InstanceLookup(self.ec2, self.autoscaling)

    def _facts(self, event: Mapping[str, Any]) -> InstanceFacts | None:
        detail = event.get("detail") or {}
        instance_id = detail.get("instance-id") or detail.get("EC2InstanceId")
        return self._instances().facts(instance_id) if instance_id else None

    def _drain_block_instances(self) -> int:
        """Scale the block's group in through its lifecycle hook, so workers drain before EC2 reclaims."""
        drained = self._instances().drain_group(self.settings.groups[self.settings.block_pool])
        self.metrics.add("BlockInstancesDrained", drained, Pool=self.settings.block_pool)
        return drained

