"""What one rebalancer cycle works with: its settings and an adapter per AWS service, injected (tests pass
fakes or moto-backed clients; `handlers.rebalancer` builds the real ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from crossfleet_control.aws.controller_state import ControllerState
from crossfleet_control.aws.endpoint import EndpointClient
from crossfleet_control.aws.fleets import AutoScalingFleets
from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.aws.queues import QueueMetrics, RegionForwarder, SqsQueues
from crossfleet_control.aws.spot_prices import SpotPrices
from crossfleet_control.core.settings import Settings


@dataclass
class Dependencies:
    settings: Settings
    queues: SqsQueues
    fleets: AutoScalingFleets
    state: ControllerState
    metrics: MetricsRecorder
    ledger: Ledger | None = None
    queue_metrics: QueueMetrics | None = None
    health: HealthStore | None = None
    forwarder: RegionForwarder | None = None
    endpoint: EndpointClient | None = None
    spot_prices: SpotPrices | None = None
    clock: Callable[[], float] = time.time
