"""The rebalancer Lambda's entry point: settings parsed and clients built once per container, then one cycle
(`orchestration.rebalance_cycle`) per EventBridge tick."""

from __future__ import annotations

import os
import uuid
from typing import Any

from crossfleet_control.aws import logs
from crossfleet_control.aws.controller_state import ControllerState
from crossfleet_control.aws.endpoint import EndpointClient
from crossfleet_control.aws.fleets import AutoScalingFleets, WarmLane
from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.aws.queues import QueueMetrics, RegionForwarder, SqsQueues
from crossfleet_control.aws.spot_prices import SpotPrices
from crossfleet_control.core.settings import Settings
from crossfleet_control.orchestration.dependencies import Dependencies
from crossfleet_control.orchestration.rebalance_cycle import run_cycle


def build_dependencies(settings: Settings, *, session: Any = None) -> Dependencies:
    import boto3
    from botocore.config import Config

    # Standard retries with backoff and jitter: throttling is normal at fleet scale (failure case 8).
    config = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=10)
    session = session or boto3.session.Session(region_name=settings.region)
    metrics = MetricsRecorder(settings.deployment, settings.region)

    def on_error(where: str, error: Exception) -> None:
        metrics.add("Errors", 1, Operation=where.split("[")[0])
        logs.error("AWS call failed", operation=where, error=str(error))

    dynamodb = session.client("dynamodb", config=config)
    peer_dynamodb = {region: session.client("dynamodb", region_name=region, config=config)
                     for region in settings.peers}
    peer_sqs = {region: session.client("sqs", region_name=region, config=config) for region in settings.peers}
    # Pools that run Spot: their Spot price decides whether Spot still saves anything (core.policy.choose_markets).
    spot_pools = {p: s.instance_type for p, s in settings.pools.items() if s.on_demand_percentage < 100}
    return Dependencies(
        settings=settings,
        queues=SqsQueues(session.client("sqs", config=config),
                         {p: s.queue_url for p, s in settings.pools.items()},
                         {p: s.dead_letter_url for p, s in settings.pools.items()}, on_error),
        fleets=AutoScalingFleets(session.client("autoscaling", config=config),
                                 {p: s.group_name for p, s in settings.pools.items()}, on_error,
                                 lanes={p: WarmLane(s.warm_lane_group, s.warm_lane_max, s.min_size)
                                        for p, s in settings.pools.items() if s.warm_lane_group}),
        state=ControllerState(dynamodb, settings.table_name, settings.region),
        metrics=metrics,
        ledger=Ledger(dynamodb, settings.table_name),
        queue_metrics=QueueMetrics(session.client("cloudwatch", config=config),
                                   {p: s.queue_url.rsplit("/", 1)[-1] for p, s in settings.pools.items()}, on_error),
        health=HealthStore(dynamodb, settings.table_name, settings.region,
                           peers={r: (peer_dynamodb[r], peer.table_name) for r, peer in settings.peers.items()},
                           on_error=on_error),
        forwarder=RegionForwarder(peer_sqs, {r: peer.gpu_queue_url for r, peer in settings.peers.items()},
                                  on_error),
        endpoint=EndpointClient(session.client("elbv2", config=config), session.client("cloudwatch", config=config),
                                settings.endpoint, on_error) if settings.endpoint else None,
        spot_prices=SpotPrices(session.client("ec2", config=config), spot_pools, on_error) if spot_pools else None,
    )


_DEPENDENCIES: Dependencies | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _DEPENDENCIES
    if _DEPENDENCIES is None:  # once per container: settings parsed, clients built
        _DEPENDENCIES = build_dependencies(Settings.from_json(os.environ["CROSSFLEET_SETTINGS"]))
    holder = getattr(context, "aws_request_id", None) or str(uuid.uuid4())
    logs.bind(function="rebalancer", request_id=holder, region=_DEPENDENCIES.settings.region)
    remaining = getattr(context, "get_remaining_time_in_millis", lambda: 50_000)
    result = run_cycle(_DEPENDENCIES, event, holder=holder, remaining_ms=remaining)
    # The decision id is the lease's fencing token: `crossfleet explain` and the decision log carry it too.
    logs.info("cycle", decision_id=result.get("fence"), **{k: v for k, v in result.items() if k != "fence"})
    return result
