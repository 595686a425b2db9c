"""EC2 Auto Scaling target tracking as AWS documents it: what every baseline scales with.

Every parameter is AWS's documented default (the simplifications, and whom each favours, are marked):

- Two CloudWatch alarms per policy, created and managed by Auto Scaling. High: the metric above the target for
  3 consecutive 1-minute datapoints; low: below the scale-in threshold for 15 consecutive 1-minute datapoints.
  ("AlarmHigh ... 3 datapoints within 3 minutes", "AlarmLow ... 15 datapoints within 15 minutes": the alarms a
  target tracking policy creates, as listed in the CloudWatch console and described in AWS's "How target
  tracking scaling works"; before the November 2024 "highly responsive" update these were fixed, and they still
  are for 1-minute metrics.)
- Aggressive out, conservative in: "more aggressive in adding capacity when utilization increases than it is in
  removing capacity when utilization decreases"; it removes capacity only when the metric is below the target
  "usually more than 10%" (Application Auto Scaling user guide, "How target tracking scaling works"). The
  scale-in threshold is therefore 90% of the target.
- Proportional: the new capacity is ceil(capacity x metric / target), the size that brings the metric back to
  the target; scale-out never lowers the desired capacity.
- Instance warm-up ("Set the default instance warmup for an Auto Scaling group"): an instance still warming up
  does not contribute to the metric, counts as capacity when deciding a scale-out (so repeated breaches add one
  activity, not several), and blocks scale-in until it has warmed up. Every policy here uses the same warm-up:
  the instance type's boot-and-load time from the service model, the time it takes before it serves.
- The metric for queue work is backlog per instance (AWS's SQS scaling guidance: the queue's messages divided by
  the instances in service; target = acceptable latency / time per message).

Simplifications: one datapoint per control period (every shipped scenario uses 60 s, the metric's 1-minute
resolution). With no instance in service the metric divides by one instead of going missing (favours the
baseline: AWS would see no data and not scale out). Queue baselines count in-flight messages in the backlog
(favours the baseline: visible messages alone read zero while every instance is busy).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

HIGH_DATAPOINTS = 3  # AlarmHigh: 3 datapoints within 3 minutes
LOW_DATAPOINTS = 15  # AlarmLow: 15 datapoints within 15 minutes
SCALE_IN_THRESHOLD = 0.9  # "usually more than 10%" below the target


@dataclass
class TargetTracker:
    """One target tracking policy on one Auto Scaling group."""

    target: float
    high_datapoints: int = HIGH_DATAPOINTS
    low_datapoints: int = LOW_DATAPOINTS
    scale_in_threshold: float = SCALE_IN_THRESHOLD
    history: deque[float] = field(default_factory=deque)

    def step(self, *, load: float, in_service: int, warming: int, desired: int, min_size: int,
             max_size: int) -> int:
        """Record one datapoint of `load` (backlog, or requests) over `in_service` warmed-up instances and return
        the desired capacity the policy sets (unchanged unless an alarm is in ALARM)."""
        metric = load / max(1, in_service)
        self.history.append(metric)
        while len(self.history) > max(self.high_datapoints, self.low_datapoints):
            self.history.popleft()
        recent = list(self.history)
        wanted = math.ceil(load / self.target - 1e-9)  # ceil(capacity x metric / target)
        if len(recent) >= self.high_datapoints and all(m > self.target for m in recent[-self.high_datapoints:]):
            # Warming instances count as capacity here: repeated breaches make one activity, not several.
            return max(min_size, min(max_size, max(desired, wanted)))
        low = self.target * self.scale_in_threshold
        if (warming == 0 and len(recent) >= self.low_datapoints
                and all(m < low for m in recent[-self.low_datapoints:]) and wanted < desired):
            return max(min_size, min(max_size, wanted))
        return max(min_size, min(max_size, desired))
