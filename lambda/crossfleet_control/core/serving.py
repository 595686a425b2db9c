"""The real-time endpoint's traffic split and the instances it needs. Pure: observation in, decision out, no boto3.

One number is decided: the GPU pool's share of requests (`gpu_weight`, 0-100; Graviton gets the rest). In order:

1. Never a pool without healthy targets: if one side has none, everything goes to the other at once (safety is
   not step-limited). Telemetry that could not be read holds the split.
2. An operator's freeze holds it; a pin sets it (within rule 1).
3. Latency first: a side whose p99 is over the SLO gives traffic to the other side if that side has room under
   the SLO; a short GPU pool gives all its traffic to Graviton, a probing or recovering one keeps at most the share
   its breakers admit (25% probing, then 50% rising to 100% as it recovers), as the router does for jobs.
4. Otherwise cost: the split that needs the cheapest instances for the current request rate (GPUs are about 10x
   cheaper per request at full batch, Graviton is cheaper than an idle GPU at low traffic). A cost move waits until
   it has been wanted `calm_cycles` cycles in a row with the receiving side comfortably inside the SLO
   (hysteresis), so a steady load does not flap.

Every change is at most `max_weight_step` and never more traffic than the receiving side's healthy hosts can
carry at the target utilization. The instances each pool needs are sized for the larger of its current and its
target share, so capacity arrives before traffic does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossfleet_control.core.capacity_health import PoolHealth
from crossfleet_control.core.policy_types import PoolSpec, ServingMemory

POOLS = ("cpu", "gpu")
SPLIT_GRID = tuple(range(0, 101, 5))
MIN_CHANGE = 5  # smaller changes are noise in a one-minute p99


@dataclass(frozen=True)
class TargetTelemetry:
    """One target group over the last control period (CloudWatch AWS/ApplicationELB)."""

    requests: float | None  # RequestCount, Sum over the period
    p50_seconds: float | None  # TargetResponseTime p50
    p99_seconds: float | None  # TargetResponseTime p99
    healthy_hosts: float | None  # HealthyHostCount, Minimum over the period

    def known(self) -> bool:
        return self.requests is not None and self.healthy_hosts is not None


@dataclass(frozen=True)
class ServingSettings:
    latency_slo_p99_seconds: float = 2.0
    max_weight_step: int = 20
    calm_cycles: int = 3
    comfort: float = 0.75  # "comfortably inside the SLO": p99 below this share of it
    target_utilization: float = 0.7
    period_seconds: float = 60.0


@dataclass(frozen=True)
class ServingOverride:
    frozen: bool = False
    pinned_gpu_weight: int | None = None
    note: str = ""
    # Pools an operator froze: traffic is not shifted into or out of a pool that may not be resized.
    frozen_pools: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServingObservation:
    gpu_weight: int | None  # the rule's current GPU weight (None: could not be read)
    telemetry: Mapping[str, TargetTelemetry]
    health: Mapping[str, PoolHealth]
    override: ServingOverride = ServingOverride()


@dataclass(frozen=True)
class ServingDecision:
    previous: int | None
    gpu_weight: int | None
    instances: Mapping[str, int]  # instances per pool the endpoint needs (added to the queue's want)
    reason: str
    memory: ServingMemory

    @property
    def changed(self) -> bool:
        return self.previous is not None and self.gpu_weight is not None and self.gpu_weight != self.previous

    @property
    def weights(self) -> dict[str, int] | None:
        return None if self.gpu_weight is None else split(self.gpu_weight)

    def summary(self) -> dict[str, Any]:
        """The decision as the decision log, `crossfleet explain` and `crossfleet plan` show it."""
        return {"previous_gpu_weight": self.previous, "gpu_weight": self.gpu_weight, "reason": self.reason,
                "instances": dict(self.instances)}


def split(gpu_weight: int) -> dict[str, int]:
    """Each target group's weight in the listener rule for a GPU share of `gpu_weight` percent."""
    return {"cpu": 100 - gpu_weight, "gpu": gpu_weight}


def requests_per_second_per_instance(spec: PoolSpec, settings: ServingSettings) -> float:
    return spec.profile.jobs_per_second(spec.mean_job_seconds) * settings.target_utilization


def instances_for(rate: float, share: float, spec: PoolSpec, settings: ServingSettings) -> int:
    if share <= 0 or rate <= 0:
        return 0
    return max(1, math.ceil(rate * share / requests_per_second_per_instance(spec, settings) - 1e-9))


def cheapest_split(rate: float, specs: Mapping[str, PoolSpec], settings: ServingSettings) -> int:
    """The GPU share whose instances cost least at this request rate (ties go to the GPU side: lower latency).

    A pool never runs below its minimum size, so those instances are paid for whatever the split: at a trickle the
    Graviton pool's always-on instances serve for free while any GPU share keeps a GPU instance up."""
    def cost(g: int) -> tuple[float, int]:
        dollars = sum(max(instances_for(rate, share, specs[pool], settings), specs[pool].min_size)
                      * specs[pool].profile.on_demand_per_hour
                      for pool, share in (("cpu", (100 - g) / 100), ("gpu", g / 100)))
        return dollars, -g
    return min(SPLIT_GRID, key=cost)


def decide(observation: ServingObservation, specs: Mapping[str, PoolSpec], settings: ServingSettings,
           memory: ServingMemory) -> ServingDecision:
    current = observation.gpu_weight
    telemetry = observation.telemetry
    if current is None or any(not telemetry.get(p, TargetTelemetry(None, None, None, None)).known()
                              for p in POOLS):
        return ServingDecision(current, current, {}, "hold: endpoint telemetry or weights unknown", memory)
    healthy = {p: (telemetry[p].healthy_hosts or 0) > 0 for p in POOLS}
    rate = sum(telemetry[p].requests or 0.0 for p in POOLS) / settings.period_seconds
    slo = settings.latency_slo_p99_seconds

    def result(weight: int, reason: str, new_memory: ServingMemory | None = None,
               aim: int | None = None) -> ServingDecision:
        # Size each side for the most traffic it has, gets, or is headed for: capacity arrives before traffic.
        splits = [g for g in (weight, current, aim) if g is not None]
        share = {"cpu": (100 - weight) / 100, "gpu": weight / 100}
        most = {"cpu": max(100 - g for g in splits) / 100, "gpu": max(splits) / 100}
        instances = {p: instances_for(rate, most[p], specs[p], settings) for p in POOLS}
        for pool in POOLS:
            p99 = telemetry[pool].p99_seconds
            if share[pool] > 0 and p99 is not None and p99 > slo:
                instances[pool] += max(1, math.ceil(instances[pool] * 0.25))  # over the SLO: more room now
        return ServingDecision(current, weight, instances, reason, new_memory or ServingMemory())

    gpu_health = observation.health.get("gpu", PoolHealth())
    # A probing or recovering GPU pool takes the share of traffic its breakers admit, as the router does for jobs.
    gpu_cap = 0 if gpu_health.short else int(gpu_health.admit * 100) // 5 * 5
    p99 = {p: telemetry[p].p99_seconds for p in POOLS}
    # Over the SLO only on fresh evidence: a p99 from requests that completed this period after the traffic
    # stopped arriving (a burst that is over) would shift weights for a load that is gone, and then back.
    over = {p: (p99[p] or 0.0) > slo and (telemetry[p].requests or 0) > 0 for p in POOLS}

    # 1. Never send traffic to a side with no healthy targets, but size it for the share it should have, so it
    # comes up (then rule 4 hands it traffic in bounded steps).
    if not healthy["cpu"] and not healthy["gpu"]:
        return result(current, "hold: neither pool has a healthy target", aim=cheapest_split(rate, specs, settings))
    if not healthy["gpu"]:
        # Probing, this asks for the one probe instance that tells whether GPUs are back; short, for none.
        aim = min(cheapest_split(rate, specs, settings), gpu_cap)
        if over["cpu"]:
            aim = max(aim, min(settings.max_weight_step, gpu_cap))
        return result(0, "all traffic to Graviton: the GPU target group has no healthy hosts", aim=aim)
    if not healthy["cpu"]:
        aim = cheapest_split(rate, specs, settings)
        if over["gpu"] or gpu_cap < 100:
            aim = min(aim, 100 - settings.max_weight_step)
        return result(100, "all traffic to GPUs: the Graviton target group has no healthy hosts", aim=aim)

    # 2. Operators.
    override = observation.override
    note = f": {override.note}" if override.note else ""
    if override.frozen:
        return result(current, f"frozen by operator{note}")
    if override.frozen_pools:
        return result(current, f"hold: pool {', '.join(override.frozen_pools)} frozen by operator")
    if override.pinned_gpu_weight is not None:
        return result(override.pinned_gpu_weight, f"pinned at {override.pinned_gpu_weight}% GPU by operator{note}")

    def step_toward(target: int) -> int:
        delta = max(-settings.max_weight_step, min(settings.max_weight_step, target - current))
        weight = current + delta
        # Never more traffic than the receiving side's healthy hosts carry at the target utilization.
        if delta > 0:
            room = (telemetry["gpu"].healthy_hosts or 0.0) * requests_per_second_per_instance(specs["gpu"], settings)
            weight = min(weight, max(current, _share_within(room, rate)))
        elif delta < 0:
            room = (telemetry["cpu"].healthy_hosts or 0.0) * requests_per_second_per_instance(specs["cpu"], settings)
            weight = max(weight, min(current, 100 - _share_within(room, rate)))
        return weight

    # 3. Latency and capacity shortage.
    if current > gpu_cap:
        weight = step_toward(gpu_cap)
        return result(weight, f"toward Graviton: GPU capacity {gpu_health.status} ({gpu_health.reason}), "
                              f"at most {gpu_cap}% GPU", aim=gpu_cap)
    if over["cpu"] and not over["gpu"] and current < gpu_cap:
        weight = step_toward(gpu_cap)
        return result(weight, f"toward GPUs: Graviton p99 {p99['cpu']:.2f}s over the {slo:.2f}s SLO",
                      aim=min(gpu_cap, current + settings.max_weight_step))
    if over["gpu"] and not over["cpu"] and current > 0:
        weight = step_toward(0)
        return result(weight, f"toward Graviton: GPU p99 {p99['gpu']:.2f}s over the {slo:.2f}s SLO",
                      aim=max(0, current - settings.max_weight_step))
    if over["cpu"] and over["gpu"]:
        return result(current, f"hold: both pools over the {slo:.2f}s SLO; both grow")

    # 4. Cost, with hysteresis.
    target = min(cheapest_split(rate, specs, settings), gpu_cap)
    if abs(target - current) < MIN_CHANGE:
        return result(current, f"steady at {current}% GPU: the cheapest split for {rate:.1f} req/s")
    # The side that would take the traffic must be comfortably inside the SLO (it was sized for it first).
    receiver = "gpu" if target > current else "cpu"
    receiver_p99 = p99[receiver]
    comfortable = receiver_p99 is None or receiver_p99 <= slo * settings.comfort
    same = memory.pending_cost_target is not None and (memory.pending_cost_target > current) == (target > current)
    calm = memory.calm + 1 if (same and comfortable) else (1 if comfortable else 0)
    if calm < settings.calm_cycles:
        return result(current, f"hold at {current}% GPU: {target}% is cheaper for {rate:.1f} req/s, waiting "
                               f"{settings.calm_cycles - calm} more calm cycle(s)",
                      ServingMemory(pending_cost_target=target, calm=calm), aim=target)
    weight = step_toward(target)
    side = "GPUs" if target > current else "Graviton"
    return result(weight, f"toward {side}: {target}% GPU is the cheapest split for {rate:.1f} req/s",
                  ServingMemory(pending_cost_target=target, calm=calm), aim=target)


def _share_within(capacity_per_second: float, rate: float) -> int:
    """The largest share (in steps of 5) of `rate` that `capacity_per_second` can carry."""
    if rate <= 0 or capacity_per_second >= rate:
        return 100
    return max(0, int(capacity_per_second / rate * 100) // 5 * 5)
