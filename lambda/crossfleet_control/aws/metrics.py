"""CloudWatch metrics in Embedded Metric Format: one JSON log line per flush, no PutMetricData calls."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

NAMESPACE = "crossfleet"


@dataclass
class MetricsRecorder:
    deployment: str
    region: str
    stream: TextIO = sys.stdout
    clock: Callable[[], float] = time.time
    _values: dict[tuple[tuple[str, str], ...], dict[str, float]] = field(
        default_factory=lambda: defaultdict(dict))

    def put(self, name: str, value: float, **dimensions: str) -> None:
        key = tuple(sorted(dimensions.items()))
        self._values[key][name] = value

    def add(self, name: str, value: float = 1, **dimensions: str) -> None:
        key = tuple(sorted(dimensions.items()))
        self._values[key][name] = self._values[key].get(name, 0) + value

    def value(self, name: str, **dimensions: str) -> float | None:
        return self._values.get(tuple(sorted(dimensions.items())), {}).get(name)

    def flush(self) -> list[dict[str, Any]]:
        documents = []
        for key, metrics in self._values.items():
            dimensions = {"Deployment": self.deployment, "Region": self.region, **dict(key)}
            document = {
                "_aws": {"Timestamp": int(self.clock() * 1000), "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE, "Dimensions": [sorted(dimensions)],
                    "Metrics": [{"Name": name, "Unit": "Count" if "Seconds" not in name else "Seconds"}
                                for name in sorted(metrics)]}]},
                **dimensions, **metrics,
            }
            print(json.dumps(document, sort_keys=True), file=self.stream)
            documents.append(document)
        self._values.clear()
        return documents
