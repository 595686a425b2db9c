"""Per-job outcomes for the dashboards' SLO panel: buffered, published at most once a minute per worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "crossfleet"


@dataclass
class JobMetrics:
    """Counts on-time and late finishes and sums latency, then sends one PutMetricData per flush."""

    client: Any
    deployment: str
    region: str
    pool: str
    flush_seconds: float = 60.0
    clock: Callable[[], float] = time.time
    _on_time: int = 0
    _late: int = 0
    _latencies: list[float] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, latency_seconds: float, deadline_seconds: float) -> None:
        with self._lock:
            if latency_seconds <= deadline_seconds:
                self._on_time += 1
            else:
                self._late += 1
            self._latencies.append(max(0.0, latency_seconds))
        if self.clock() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        with self._lock:
            on_time, late, latencies = self._on_time, self._late, self._latencies
            self._on_time, self._late, self._latencies = 0, 0, []
            self._last_flush = self.clock()
        if not latencies:
            return False
        dimensions = [{"Name": "Deployment", "Value": self.deployment}, {"Name": "Region", "Value": self.region},
                      {"Name": "Pool", "Value": self.pool}]
        data = [{"MetricName": "JobsOnTime", "Dimensions": dimensions, "Value": on_time, "Unit": "Count"},
                {"MetricName": "JobsLate", "Dimensions": dimensions, "Value": late, "Unit": "Count"},
                {"MetricName": "JobLatencySeconds", "Dimensions": dimensions, "Unit": "Seconds",
                 "StatisticValues": {"SampleCount": len(latencies), "Sum": sum(latencies),
                                     "Minimum": min(latencies), "Maximum": max(latencies)}}]
        try:
            self.client.put_metric_data(Namespace=NAMESPACE, MetricData=data)
        except Exception as error:  # metrics must never fail a job
            print(f"crossfleet worker: job metrics not published: {error}")
            return False
        return True
