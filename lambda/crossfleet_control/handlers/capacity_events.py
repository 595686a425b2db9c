"""The capacity-events Lambda's entry point: settings parsed and clients built once per container, then each
EventBridge event handed to `orchestration.capacity_events`."""

from __future__ import annotations

import os
import time
from typing import Any

from crossfleet_control.aws import logs
from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core.capacity_signals import EventSettings
from crossfleet_control.orchestration.capacity_events import CapacityEvents

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
    logs.bind(function="capacity_events", request_id=getattr(context, "aws_request_id", None),
              region=_HANDLER.settings.region, event=event.get("detail-type"))
    result = _HANDLER.handle(event, time.time())
    if result["signals"]:
        logs.info("capacity signals recorded", signals=result["signals"], breakers=result["breakers"],
                  drained=result["drained"])
    return result
