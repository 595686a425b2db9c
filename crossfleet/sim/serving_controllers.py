"""Real-time serving in the simulator: requests reach a pool through the endpoint's weighted split, not a queue.

Each pool's waiting requests stand for the model servers' own request queues; latency is wait plus the service
model's time, as for queued jobs. Three controllers:

- `serving-crossfleet`: the Lambda's own modules. Each period it builds what CloudWatch would report per target
  group (requests, p50/p99 of the period's requests, healthy hosts = instances in service), runs
  `crossfleet_control.core.serving.decide` for the split and `crossfleet_control.core.policy.decide` for the
  sizes (with the endpoint's instances as the want, as the deployed rebalancer does), with capacity health from
  the same breakers.
- `serving-gpu-only`: every request to the GPUs, which scale by target tracking on ALBRequestCountPerTarget.
- `serving-target-tracking`: the configured starting split, fixed; each pool scales by target tracking on
  ALBRequestCountPerTarget.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

from crossfleet.sim.autoscaling import TargetTracker
from crossfleet.sim.controllers import IDLE_CYCLE_CALLS, CrossfleetPolicy, apply_tracker
from crossfleet.sim.engine import JobRecord, Pool, Simulation
from crossfleet.sim.scenario import ServingScenario
from crossfleet.sim.stats import percentile
from crossfleet_control.core import policy, serving
from crossfleet_control.core.policy_types import ControllerMemory, Observation, PolicySettings
from crossfleet_control.core.serving import ServingObservation, ServingSettings, TargetTelemetry

SERVING_POLICIES = ("serving-crossfleet", "serving-gpu-only", "serving-target-tracking")
TARGET_UTILIZATION = 0.7  # of a target's request capacity, for every controller alike


def _gpu_share(job_id: str, gpu_weight: int) -> str:
    """The load balancer's weighted choice, made deterministic per request id."""
    return "gpu" if zlib.crc32(job_id.encode()) % 100 < gpu_weight else "cpu"


def _route(record: JobRecord, gpu_weight: int, short_limit: int | None = None) -> str:
    """The listener's rules. With a size-class limit (serving-crossfleet's endpoint), a request's
    `x-crossfleet-size` header is what its client derives from the prompt length: only `short` requests reach the
    weighted rule, every other request the GPU target group alone. Without one (the baselines), one weighted rule
    takes every request."""
    if record.job.placement == "cpu_only":
        return "cpu"
    if record.job.placement == "gpu_only":
        return "gpu"
    if short_limit is not None and serving.size_class(record.job.input_tokens, short_limit) != serving.SHORT:
        return "gpu"
    return _gpu_share(record.job.id, gpu_weight)


class CrossfleetServing(CrossfleetPolicy):
    name = "serving-crossfleet"

    def __init__(self, settings: PolicySettings, scenario: ServingScenario, period_seconds: float) -> None:
        super().__init__(settings)
        self.serving = ServingSettings(latency_slo_p99_seconds=scenario.latency_slo_p99_seconds,
                                       max_weight_step=scenario.max_weight_step, target_utilization=TARGET_UTILIZATION,
                                       period_seconds=period_seconds, ttft_slo_seconds=scenario.ttft_slo_seconds,
                                       tpot_slo_seconds=scenario.tpot_slo_seconds,
                                       forecast_window_seconds=scenario.forecast_window_seconds)
        self.short_limit: int | None = None
        self.initial = scenario.initial_gpu_weight
        self.gpu_weight: dict[str, int] = {}
        self.routed: dict[tuple[str, str], int] = {}
        self.outstanding: dict[tuple[str, str], list[JobRecord]] = {}
        self.weight_history: list[tuple[float, str, int]] = []

    def bind(self, sim: Simulation) -> None:
        """Before the first request: the size-class limit the clients label with (deployed, a setting they share
        with the controller), from the Graviton pool's service model."""
        cpu = next(iter(sim.pools.values()))["cpu"]
        self.short_limit = serving.short_prompt_limit(cpu.spec.profile, self.serving)

    def route(self, record: JobRecord) -> str:
        pool = _route(record, self.gpu_weight.get(record.region, self.initial), self.short_limit)
        key = (record.region, pool)
        self.routed[key] = self.routed.get(key, 0) + 1
        self.outstanding.setdefault(key, []).append(record)
        return pool

    def _target_telemetry(self, now: float, region: str, pools: dict[str, Pool]) -> dict[str, TargetTelemetry]:
        out = {}
        for name, pool in pools.items():
            # As the load balancer reports it: requests that arrived this period, response times of those that
            # completed this period (a request still waiting shows up when it completes).
            waiting = self.outstanding.get((region, name), [])
            done = [r for r in waiting if r.finish is not None and r.finish <= now]
            self.outstanding[(region, name)] = [r for r in waiting if r.finish is None or r.finish > now]
            latencies = [r.finish - r.arrived for r in done if r.finish is not None]
            in_service = pool.telemetry(now).in_service or 0
            requests = self.routed.pop((region, name), 0)
            out[name] = TargetTelemetry(requests=float(requests), p50_seconds=percentile(latencies, 0.5),
                                        p99_seconds=percentile(latencies, 0.99), healthy_hosts=float(in_service))
        return out

    def control(self, now: float, region: str, pools: dict[str, Pool], sim: Simulation) -> None:
        self.now = now
        self._signal(now, region, pools)
        specs = {name: pool.spec for name, pool in pools.items()}
        memory = self.memory.get(region, ControllerMemory())
        current = self.gpu_weight.get(region, self.initial)
        decision = serving.decide(ServingObservation(current, self._target_telemetry(now, region, pools),
                                                     self.health[region], now=now), specs, self.serving,
                                  memory.serving)
        self.gpu_weight[region] = decision.gpu_weight if decision.gpu_weight is not None else current
        if decision.changed:
            self.weight_history.append((now, region, self.gpu_weight[region]))
        # As deployed: SQS holds no real-time requests, so the pools are sized by the endpoint's instances alone.
        telemetry = {name: replace(pool.telemetry(now), visible=0, in_flight=0, oldest_age_seconds=None,
                                   sent_recently=None)
                     for name, pool in pools.items()}
        observation = Observation(now=now, pools=telemetry, health=self.health[region], region=region,
                                  configured_regions=tuple(sim.pools), serving_instances=decision.instances)
        sizes = policy.decide(observation, specs, self.settings, memory)
        self.memory[region] = replace(sizes.memory, serving=decision.memory)
        for name, pool_decision in sizes.pools.items():
            if pool_decision.desired is not None and pool_decision.desired != pools[name].desired:
                sim.set_desired(pools[name], pool_decision.desired, now)
        # The idle cycle, the rule and metrics reads, a rule change.
        sim.api_calls += IDLE_CYCLE_CALLS + 2 + int(decision.changed)


class RequestCountTracking:
    """AWS target tracking on ALBRequestCountPerTarget per pool (`autoscaling.TargetTracker`), with a fixed split.

    The target is `target_utilization` of a target's request capacity per period (the same 70% for every
    controller by default; the knob a frontier sweeps)."""

    def __init__(self, name: str, gpu_weight: int, target_utilization: float = TARGET_UTILIZATION) -> None:
        self.name = name
        self.gpu_weight = gpu_weight
        self.target_utilization = target_utilization
        self.requests: dict[tuple[str, str], int] = {}
        self.trackers: dict[str, TargetTracker] = {}

    def route(self, record: JobRecord) -> str:
        pool = _route(record, self.gpu_weight)
        self.requests[(record.region, pool)] = self.requests.get((record.region, pool), 0) + 1
        return pool

    def control(self, now: float, region: str, pools: dict[str, Pool], sim: Simulation) -> None:
        period = sim.scenario.control_period_seconds
        for name, pool in pools.items():
            count = self.requests.pop((region, name), 0)
            per_target = pool.profile.jobs_per_second(pool.spec.mean_job_seconds) * self.target_utilization * period
            tracker = self.trackers.setdefault(pool.key, TargetTracker(per_target))
            # Target tracking runs inside AWS: no controller API calls to count.
            apply_tracker(sim, pool, tracker, count, now)


def make_serving_controller(name: str, settings: PolicySettings, scenario: ServingScenario, period_seconds: float,
                            *, target_utilization: float | None = None) -> CrossfleetServing | RequestCountTracking:
    utilization = TARGET_UTILIZATION if target_utilization is None else target_utilization
    if name == "serving-crossfleet":
        return CrossfleetServing(settings, scenario, period_seconds)
    if name == "serving-gpu-only":
        return RequestCountTracking(name, 100, utilization)
    if name == "serving-target-tracking":
        return RequestCountTracking(name, scenario.initial_gpu_weight, utilization)
    raise ValueError(f"unknown serving policy {name!r}; serving policies: {', '.join(SERVING_POLICIES)}")
