"""The intake router Lambda's entry point: settings parsed and clients built once per container, then each SQS
batch handed to the router (`orchestration.intake_routing`)."""

from __future__ import annotations

import os
import time
from typing import Any

from crossfleet_control.aws import logs
from crossfleet_control.aws.controller_state import ControllerState
from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core.settings import RouterSettings
from crossfleet_control.orchestration.intake_routing import Router, RoutingView, routing_view

_ROUTER: Router | None = None


def build_router(settings: RouterSettings, *, session: Any = None) -> Router:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 4})
    session = session or boto3.session.Session(region_name=settings.region)
    dynamodb = session.client("dynamodb", config=config)
    state = ControllerState(dynamodb, settings.table_name, settings.region)

    store = HealthStore(dynamodb, settings.table_name, settings.region)
    configured = (settings.region, *settings.peer_gpu_queue_urls)

    def health() -> RoutingView:
        return routing_view(state, store, settings.pool_instance_types, configured, time.time(),
                            settings.stale_peer_seconds)

    return Router(settings=settings, sqs=session.client("sqs", config=config),
                  ledger=Ledger(dynamodb, settings.table_name), health=health,
                  metrics=MetricsRecorder(settings.deployment, settings.region),
                  sqs_for_region=lambda region: session.client("sqs", region_name=region, config=config))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _ROUTER
    if _ROUTER is None:
        _ROUTER = build_router(RouterSettings.from_json(os.environ["CROSSFLEET_ROUTER_SETTINGS"]))
    logs.bind(function="router", request_id=getattr(context, "aws_request_id", None),
              region=_ROUTER.settings.region)
    return _ROUTER.route_batch(event.get("Records", []))
