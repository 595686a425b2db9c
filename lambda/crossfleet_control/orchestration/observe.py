"""Observe: everything the policy sees, read fresh from AWS through the adapters (failure case 9: AWS is the
source of truth), plus the real-time endpoint's split, which adds the instances it needs to each pool's want.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from crossfleet_control.aws import logs
from crossfleet_control.aws.endpoint import serving_override
from crossfleet_control.core import serving
from crossfleet_control.core.capacity_health import (
    ANY_TYPE,
    PoolHealth,
    RegionSummary,
    pool_health,
)
from crossfleet_control.core.capacity_signals import gap_signals
from crossfleet_control.core.policy_types import (
    ControllerMemory,
    Observation,
    PoolSpec,
    PoolTelemetry,
)
from crossfleet_control.core.serving import ServingDecision, ServingObservation
from crossfleet_control.orchestration.dependencies import Dependencies


def observe(deps: Dependencies, now: float, overrides: dict[str, Any], *, record_signals: bool = False
            ) -> Observation:
    """Everything the policy sees, read fresh from AWS (failure case 9: AWS is the source of truth)."""
    settings, metrics = deps.settings, deps.metrics
    groups = deps.fleets.telemetry()
    ages, sent = deps.queue_metrics.read(now) if deps.queue_metrics else ({}, {})
    telemetry: dict[str, PoolTelemetry] = {}
    for pool in settings.pools:
        queue = deps.queues.telemetry(pool)
        group = groups[pool]
        tag_ok = group.deployment_tag == settings.deployment
        if group.desired is not None and not tag_ok:
            # Failure case 22: a group that lost or never had our tag is not ours to size.
            metrics.add("Errors", 1, Operation="foreign_group")
        failed, launched = deps.fleets.launch_activity(pool, now)
        telemetry[pool] = PoolTelemetry(
            visible=queue.visible, in_flight=queue.in_flight, oldest_age_seconds=ages.get(pool),
            desired=group.desired if tag_ok else None, in_service=group.in_service if tag_ok else None,
            pending=group.pending, failed_launches=failed, launches=launched, sent_recently=sent.get(pool))
    health, peers = capacity(deps, telemetry, now, record_signals)
    spot_prices = deps.spot_prices.current(now) if deps.spot_prices else {}
    return Observation(now=now, pools=telemetry, overrides=overrides, health=health, peers=peers,
                       region=settings.region, configured_regions=settings.configured_regions,
                       on_demand_percentage={pool: groups[pool].on_demand_percentage for pool in settings.pools},
                       spot_prices=spot_prices)



def capacity(deps: Dependencies, telemetry: dict[str, PoolTelemetry], now: float,
              record_signals: bool) -> tuple[dict[str, PoolHealth], dict[str, RegionSummary]]:
    """This region's pool health (its breakers, plus the gap signals this cycle) and the other regions' GPU."""
    settings = deps.settings
    if deps.health is None:
        return {}, {}
    try:
        breakers = deps.health.breakers()
        if record_signals:
            pool_wide = {b.offering.pool: b.state for b in breakers if b.offering.instance_type == ANY_TYPE
                         and b.offering.market == "on-demand"}
            signals = gap_signals(settings.region, telemetry, pool_wide, now)
            if signals:
                written = {b.offering: b for b in deps.health.record(signals)}
                breakers = [written.pop(b.offering, b) for b in breakers] + list(written.values())
    except Exception as error:
        # Unknown health is not "short": the queue and group telemetry still drive the pools as before.
        deps.metrics.add("Errors", 1, Operation="dynamodb.capacity_health")
        logs.warning("capacity health unreadable: sizing on queue and group telemetry alone", error=str(error))
        return {}, {}
    health = {pool: pool_health([b for b in breakers if b.offering.pool == pool], spec.instance_types, now)
              for pool, spec in settings.pools.items()}
    peers = {r: s for r, s in deps.health.summaries().items() if r != settings.region}
    return health, peers


def serve(deps: Dependencies, observation: Observation, specs: Mapping[str, PoolSpec],
           memory: ControllerMemory) -> tuple[Observation, ServingDecision | None]:
    """The real-time endpoint's split, and the observation with the instances that split needs added to each
    pool's want (unchanged, with no decision, where this region has no endpoint)."""
    if deps.endpoint is None or deps.settings.endpoint is None:
        return observation, None
    config = deps.settings.endpoint.serving
    telemetry = deps.endpoint.telemetry(observation.now, int(config.period_seconds))
    seen = ServingObservation(gpu_weight=deps.endpoint.gpu_weight(), telemetry=telemetry,
                              health=observation.health, override=serving_override(observation.overrides),
                              now=observation.now)
    endpoint = serving.decide(seen, specs, config, memory.serving)
    return replace(observation, serving_instances=endpoint.instances), endpoint

