"""The `queues`, `state` and `rebalancer` sections: the work queues, the state table and the controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crossfleet.config import parsing as p


@dataclass(frozen=True)
class QueueConfig:
    visibility_timeout_seconds: int
    max_receive_count: int
    retention_days: int


@dataclass(frozen=True)
class StateConfig:
    retain_on_delete: bool


@dataclass(frozen=True)
class RebalancerConfig:
    mode: str  # "observe" or "enforce"
    schedule_minutes: int
    scale_in_delay_minutes: int
    max_scale_up_step: int
    max_scale_in_step: int
    move_budget_per_cycle: int
    decision_ttl_days: int
    target_wait_seconds: int
    max_launches_per_window: int = 10  # the runaway guard (failure case 18)
    runaway_hold_minutes: int = 30
    # Warm start and proportional steps (crossfleet_control.core.forecast, policy.size_pool).
    forecast_window_minutes: int = 30
    forecast_burst_seconds: int = 40
    scale_up_gain_percent: int = 100

    def policy_fields(self) -> dict[str, float | int]:
        """The policy's settings (crossfleet_control.policy_types.PolicySettings), for the Lambda and simulator."""
        return {"target_wait_seconds": float(self.target_wait_seconds),
                "scale_in_delay_seconds": float(self.scale_in_delay_minutes * 60),
                "max_scale_up_step": self.max_scale_up_step, "max_scale_in_step": self.max_scale_in_step,
                "move_budget": self.move_budget_per_cycle,
                "max_launches_per_window": self.max_launches_per_window,
                "runaway_hold_seconds": float(self.runaway_hold_minutes * 60),
                "forecast_window_seconds": float(self.forecast_window_minutes * 60),
                "forecast_share": 1.0 if self.forecast_window_minutes > 0 else 0.0,
                "forecast_burst_seconds": float(self.forecast_burst_seconds),
                "scale_up_gain": self.scale_up_gain_percent / 100}


def parse_queues(raw: Any) -> QueueConfig:
    path = "queues"
    s = p.section(raw, path, ("visibility_timeout_seconds", "max_receive_count", "retention_days"))
    return QueueConfig(
        visibility_timeout_seconds=p.integer(s, path, "visibility_timeout_seconds", 900, minimum=30,
                                             maximum=43200),
        max_receive_count=p.integer(s, path, "max_receive_count", 5, minimum=1, maximum=1000),
        # The DLQs keep messages 14 days, SQS's maximum, and a standard queue's message keeps its enqueue time
        # in the DLQ (SQS Developer Guide, "Setting-up dead-letter queue retention in Amazon SQS"), so a source
        # queue keeps at most 13. Default 7: a week to be picked up, then at least a week in the DLQ to inspect.
        retention_days=p.integer(s, path, "retention_days", 7, minimum=1, maximum=13),
    )


def parse_state(raw: Any) -> StateConfig:
    s = p.section(raw, "state", ("retain_on_delete",))
    return StateConfig(retain_on_delete=p.boolean(s, "state", "retain_on_delete", True))


def parse_rebalancer(raw: Any, path: str = "rebalancer") -> RebalancerConfig:
    s = p.section(raw, path, ("mode", "schedule_minutes", "scale_in_delay_minutes", "max_scale_up_step",
                              "max_scale_in_step", "move_budget_per_cycle", "decision_ttl_days",
                              "target_wait_seconds", "max_launches_per_window", "runaway_hold_minutes",
                              "forecast_window_minutes", "forecast_burst_seconds", "scale_up_gain_percent"))
    return RebalancerConfig(
        mode=p.choice(s, path, "mode", "enforce", ("observe", "enforce")),
        schedule_minutes=p.integer(s, path, "schedule_minutes", 1, minimum=1, maximum=60),
        scale_in_delay_minutes=p.integer(s, path, "scale_in_delay_minutes", 10, minimum=0, maximum=1440),
        max_scale_up_step=p.integer(s, path, "max_scale_up_step", 10, minimum=1, maximum=1000),
        max_scale_in_step=p.integer(s, path, "max_scale_in_step", 2, minimum=1, maximum=1000),
        move_budget_per_cycle=p.integer(s, path, "move_budget_per_cycle", 200, minimum=0, maximum=5000),
        decision_ttl_days=p.integer(s, path, "decision_ttl_days", 14, minimum=1, maximum=365),
        target_wait_seconds=p.integer(s, path, "target_wait_seconds", 120, minimum=1, maximum=86400),
        # At most 20: the guard counts the group's 20 most recent scaling activities (one API call per cycle).
        max_launches_per_window=p.integer(s, path, "max_launches_per_window", 10, minimum=1, maximum=20),
        runaway_hold_minutes=p.integer(s, path, "runaway_hold_minutes", 30, minimum=1, maximum=1440),
        forecast_window_minutes=p.integer(s, path, "forecast_window_minutes", 30, minimum=0, maximum=1440),
        forecast_burst_seconds=p.integer(s, path, "forecast_burst_seconds", 40, minimum=0, maximum=3600),
        scale_up_gain_percent=p.integer(s, path, "scale_up_gain_percent", 100, minimum=0, maximum=100),
    )
