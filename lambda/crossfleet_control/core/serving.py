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

Size classes. A long prompt takes seconds of Graviton prefill (450 prompt tokens/s per m9g.16xlarge, shared by its
streams), so only prompts Graviton can prefill within the TTFT limit may go there. The load balancer sees only
paths, headers and weights, so the client labels each request with `x-crossfleet-size: short` when its prompt
has at most `short_prompt_limit` tokens; the weighted rule matches only that label, and every other request
(long or unlabelled) goes to the GPU target group alone. The split above is therefore a split of short requests.

Sizing for TTFT. An instance's request capacity is the rate it serves while few enough requests share it that a
long prompt (`long_prompt_tokens`) still prefills within the TTFT limit (the service model shares an instance's
prefill among the requests it runs). The GPU pool is sized on a recent-peak envelope of its request rate (the
highest rate over `forecast_window_seconds`, kept in the controller's memory), so capacity bought for one burst
is held for the next instead of being bought again after a scale-in; the size follows the gap between the
envelope and capacity at once (no fixed step here; the pool sizer's own step limit still applies).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crossfleet_control.core.capacity_health import PoolHealth
from crossfleet_control.core.jobs import Job
from crossfleet_control.core.policy_types import PoolSpec, ServingMemory
from crossfleet_control.core.service_model import InstanceProfile

POOLS = ("cpu", "gpu")
SPLIT_GRID = tuple(range(0, 101, 5))
MIN_CHANGE = 5  # smaller changes are noise in a one-minute p99

# The request header the client sets and the listener rules match (README "Real-time inference endpoint").
SIZE_HEADER = "x-crossfleet-size"
SHORT = "short"  # prompt within `short_prompt_limit` tokens: may go to either pool, by the weighted rule
LONG = "long"  # any other prompt (and any unlabelled request): GPU target group only
# Share of the TTFT limit a short prompt's prefill may use on a Graviton instance with every stream busy; the
# rest is left for waiting at the load balancer and in the server's queue [E: no measured queueing delay for
# llama-server behind an ALB; replace with a measured TTFT distribution].
CPU_PREFILL_BUDGET = 0.8


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
    # The response-time p99 the feedback rules compare each target group's TargetResponseTime p99 with. None:
    # the p99 the TTFT and TPOT limits map to (`response_slo_seconds`).
    latency_slo_p99_seconds: float | None = None
    max_weight_step: int = 20
    calm_cycles: int = 3
    comfort: float = 0.75  # "comfortably inside the SLO": p99 below this share of it
    target_utilization: float = 0.7
    period_seconds: float = 60.0
    ttft_slo_seconds: float = 2.0  # time to first token (MLPerf Inference server limit for Llama-3.1-8B)
    tpot_slo_seconds: float = 0.1  # time per later output token (same source)
    # Prompt and output sizes the capacities are computed for: the Azure LLM code trace (2023, CC-BY 4.0,
    # /work/shared/traces): mean prompt 2,048 tokens, mean output 28, prompt p99 7,436, output p99 252.
    mean_prompt_tokens: int = 2048
    mean_output_tokens: int = 28
    long_prompt_tokens: int = 7436
    long_output_tokens: int = 252
    # Short prompts (at most `short_prompt_limit`): their mean size, and their share of requests, used only
    # while every short request goes to the GPUs (the target groups' counts cannot tell them apart then). Same
    # trace, at the default limit of 179 tokens (measured at 180): 12.2% of requests, mean prompt 90 tokens.
    short_mean_prompt_tokens: int = 90
    short_share: float = 0.122
    short_prompt_max_tokens: int | None = None  # None: what the Graviton pool prefills within the TTFT limit
    forecast_window_seconds: float = 900.0  # how long the recent-peak envelope holds a burst's rate

    def response_slo_seconds(self) -> float:
        """The response-time p99 the feedback rules keep: set, or the TTFT limit plus a p99-long answer at the
        TPOT limit (what a request that meets both limits can take end to end)."""
        if self.latency_slo_p99_seconds is not None:
            return self.latency_slo_p99_seconds
        return self.ttft_slo_seconds + self.tpot_slo_seconds * self.long_output_tokens


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
    now: float = 0.0  # epoch seconds: the forecast's clock


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


def short_prompt_limit(cpu: InstanceProfile, settings: ServingSettings) -> int:
    """The longest prompt (tokens) labelled short: one a Graviton instance prefills within the TTFT limit while
    all its streams share its prefill, with `CPU_PREFILL_BUDGET` of the limit. m9g.16xlarge: 450 tok/s / 4
    streams x 2 s x 0.8 = 179 tokens (449.92 tok/s on m9g.16xlarge)."""
    if settings.short_prompt_max_tokens is not None:
        return settings.short_prompt_max_tokens
    per_stream = cpu.prefill_tokens_per_second / cpu.streams
    return max(0, math.floor(per_stream * settings.ttft_slo_seconds * CPU_PREFILL_BUDGET))


def size_class(prompt_tokens: int, limit: int) -> str:
    """The `x-crossfleet-size` value a client sets for a prompt of `prompt_tokens` tokens."""
    return SHORT if prompt_tokens <= limit else LONG


def ttft_concurrency(profile: InstanceProfile, settings: ServingSettings, prompt_tokens: int) -> int:
    """Requests one model replica may share while a prompt of `prompt_tokens` still prefills within the TTFT
    limit (the service model shares a replica's prefill evenly among the requests it runs): at least one, at
    most the replica's streams. g6e.xlarge and a 7,436-token prompt: 8,532 x 2 / 7,436 -> 2."""
    per_replica = profile.prefill_tokens_per_second / profile.replicas
    streams = max(1, profile.streams // profile.replicas)
    fits = math.floor(per_replica * settings.ttft_slo_seconds / max(1, prompt_tokens))
    return max(1, min(streams, fits))


def requests_per_second_per_instance(spec: PoolSpec, settings: ServingSettings, *, short: bool | None = None) -> float:
    """Requests per second one instance serves within the TTFT limit, at the target utilization.

    Graviton serves short prompts only, on all its streams (the limit was chosen for that). A GPU runs at most
    `ttft_concurrency` requests per replica (so the long prompt still prefills in time): mean-size requests, or
    short ones (`short=True`, the weighted rule's share). `short` defaults to the Graviton pool's class."""
    profile = spec.profile
    short = spec.name == "cpu" if short is None else short
    active = profile.streams if spec.name == "cpu" else \
        ttft_concurrency(profile, settings, settings.long_prompt_tokens) * profile.replicas
    prompt = settings.short_mean_prompt_tokens if short else settings.mean_prompt_tokens
    seconds = profile.job_seconds_at(_sized_job(prompt, settings.mean_output_tokens), active)
    return active / seconds * settings.target_utilization if seconds > 0 else float("inf")


def _sized_job(prompt_tokens: int, output_tokens: int) -> Job:
    return Job(id="serving-reference", job_class="inference", placement="either", preference="gpu",
               input_tokens=prompt_tokens, output_tokens=output_tokens, cpu_seconds=None, gpu_seconds=None,
               deadline_seconds=60.0, priority=5, submitted_at=0.0)


def instances_for(rate: float, share: float, spec: PoolSpec, settings: ServingSettings) -> int:
    """Instances for `share` of `rate` requests per second of the pool's own class (short on Graviton, mean-size
    on GPUs)."""
    if share <= 0 or rate <= 0:
        return 0
    return max(1, math.ceil(rate * share / requests_per_second_per_instance(spec, settings) - 1e-9))


def instances_for_demand(pool: str, demand: Demand, gpu_weight: int, spec: PoolSpec,
                         settings: ServingSettings) -> int:
    """Instances pool `pool` needs for its part of `demand` at a GPU share of `gpu_weight` percent of short
    requests: Graviton its short share; GPUs every long request plus their short share."""
    if pool == "cpu":
        return instances_for(demand.of("cpu", gpu_weight), 1.0, spec, settings)
    work = (demand.long / requests_per_second_per_instance(spec, settings, short=False)
            + demand.short * gpu_weight / 100 / requests_per_second_per_instance(spec, settings, short=True))
    return max(1, math.ceil(work - 1e-9)) if work > 0 else 0


@dataclass(frozen=True)
class Demand:
    """Request rates (per second) by size class: short (either pool, by weight) and long (GPUs only)."""

    short: float
    long: float

    def of(self, pool: str, gpu_weight: int) -> float:
        """The rate pool `pool` receives at a GPU share of `gpu_weight` percent of the short requests."""
        if pool == "cpu":
            return self.short * (100 - gpu_weight) / 100
        return self.long + self.short * gpu_weight / 100


def demand_from(requests: Mapping[str, float], gpu_weight: int, settings: ServingSettings,
                short_fraction: float | None = None) -> Demand:
    """Short and long rates from the target groups' request counts: the Graviton group receives only short
    requests, at (100 - weight)% of them. With every short request on GPUs the counts cannot tell the classes
    apart: the last known short fraction is used (`short_fraction`, else the configured `short_share`)."""
    period = settings.period_seconds
    cpu, gpu = requests.get("cpu", 0.0) / period, requests.get("gpu", 0.0) / period
    if gpu_weight < 100:
        short = cpu * 100 / (100 - gpu_weight)
        return Demand(short=short, long=max(0.0, gpu - short * gpu_weight / 100))
    short = (cpu + gpu) * (settings.short_share if short_fraction is None else short_fraction)
    return Demand(short=short, long=max(0.0, cpu + gpu - short))


def envelope(history: Sequence[Sequence[float]], now: float, current: Demand, window_seconds: float,
             max_rows: int = 120) -> tuple[Demand, tuple[tuple[float, float, float], ...]]:
    """The recent-peak envelope: the highest total rate within `window_seconds` (the current one included), in
    the window's requests-weighted mix of classes (a quiet period's mix is noise, and a peak of each class taken
    from different periods would count traffic twice when the split moved), and the history to keep (rows inside
    the window, at most `max_rows`, the newest). `history` holds (time, short, long) rows; rows from the state
    table come back as lists."""
    kept = [(float(t), float(s), float(lg)) for t, s, lg in history if 0 <= now - float(t) < window_seconds]
    rows = (*kept[-max(0, max_rows - 1):], (now, current.short, current.long)) if max_rows > 1 else \
        ((now, current.short, current.long),)
    total = max(r[1] + r[2] for r in rows)
    seen = sum(r[1] + r[2] for r in rows)
    fraction = sum(r[1] for r in rows) / seen if seen > 0 else 0.0
    return Demand(short=total * fraction, long=total * (1 - fraction)), rows


def last_short_fraction(history: Sequence[Sequence[float]]) -> float | None:
    """The short share of the newest remembered period with traffic (None: no such period)."""
    for _, short, long in reversed(history):
        if short + long > 0:
            return float(short) / (float(short) + float(long))
    return None


def cheapest_split(demand: Demand | float, specs: Mapping[str, PoolSpec], settings: ServingSettings) -> int:
    """The GPU share of short requests whose instances cost least at this demand (ties go to the GPU side: lower
    latency). A bare rate is read as all-short demand.

    A pool never runs below its minimum size, so those instances are paid for whatever the split: at a trickle the
    Graviton pool's always-on instances serve for free while any GPU share keeps a GPU instance up."""
    rates = demand if isinstance(demand, Demand) else Demand(short=demand, long=0.0)

    def cost(g: int) -> tuple[float, int]:
        dollars = sum(max(instances_for_demand(pool, rates, g, specs[pool], settings), specs[pool].min_size)
                      * specs[pool].profile.on_demand_per_hour for pool in POOLS)
        return dollars, -g
    return min(SPLIT_GRID, key=cost)


def decide(observation: ServingObservation, specs: Mapping[str, PoolSpec], settings: ServingSettings,
           memory: ServingMemory) -> ServingDecision:
    current, now = observation.gpu_weight, observation.now
    telemetry = observation.telemetry
    if current is None or any(not telemetry.get(p, TargetTelemetry(None, None, None, None)).known()
                              for p in POOLS):
        return ServingDecision(current, current, {}, "hold: endpoint telemetry or weights unknown", memory)
    healthy = {p: (telemetry[p].healthy_hosts or 0) > 0 for p in POOLS}
    demand = demand_from({p: telemetry[p].requests or 0.0 for p in POOLS}, current, settings,
                         last_short_fraction(memory.recent))
    rows = max(2, math.ceil(settings.forecast_window_seconds / settings.period_seconds) + 1)
    peak, history = envelope(memory.recent, now, demand, settings.forecast_window_seconds, rows)
    rate = demand.short  # the weighted rule splits short requests only
    slo = settings.response_slo_seconds()
    forecast = (f"forecast {peak.short + peak.long:.1f} req/s (peak of the last "
                f"{settings.forecast_window_seconds:.0f}s; now {demand.short + demand.long:.1f})")

    def result(weight: int, reason: str, new_memory: ServingMemory | None = None,
               aim: int | None = None) -> ServingDecision:
        # Size each side for the most traffic it has, gets, or is headed for, at the recent peak's rate: capacity
        # arrives before traffic does and stays for the next burst.
        splits = [g for g in (weight, current, aim) if g is not None]
        most = {"cpu": min(splits), "gpu": max(splits)}
        instances = {p: instances_for_demand(p, peak, most[p], specs[p], settings) for p in POOLS}
        share = {"cpu": 100 - weight, "gpu": weight}
        for pool in POOLS:
            p99 = telemetry[pool].p99_seconds
            receives = share[pool] > 0 or pool == "gpu"  # the GPU group always takes the long requests
            if receives and p99 is not None and p99 > slo:
                instances[pool] += max(1, math.ceil(instances[pool] * 0.25))  # over the SLO: more room now
        kept = new_memory or ServingMemory()
        floor = ", ".join(f"{p} {instances[p]}" for p in POOLS)
        return ServingDecision(current, weight, instances, f"{reason}; {forecast} -> floor {floor}",
                               ServingMemory(pending_cost_target=kept.pending_cost_target, calm=kept.calm,
                                             recent=history))

    gpu_health = observation.health.get("gpu", PoolHealth())
    # A probing or recovering GPU pool takes the share of traffic its breakers admit, as the router does for jobs.
    gpu_cap = 0 if gpu_health.short else int(gpu_health.admit * 100) // 5 * 5
    p99 = {p: telemetry[p].p99_seconds for p in POOLS}
    # Over the SLO only on fresh evidence: a p99 from requests that completed this period after the traffic
    # stopped arriving (a burst that is over) would shift weights for a load that is gone, and then back.
    over = {p: (p99[p] or 0.0) > slo and (telemetry[p].requests or 0) > 0 for p in POOLS}

    def cheapest() -> int:
        return cheapest_split(peak, specs, settings)

    # 1. Never send traffic to a side with no healthy targets, but size it for the share it should have, so it
    # comes up (then rule 4 hands it traffic in bounded steps).
    if not healthy["cpu"] and not healthy["gpu"]:
        return result(current, "hold: neither pool has a healthy target", aim=cheapest())
    if not healthy["gpu"]:
        # Probing, this asks for the one probe instance that tells whether GPUs are back; short, for none.
        aim = min(cheapest(), gpu_cap)
        if over["cpu"]:
            aim = max(aim, min(settings.max_weight_step, gpu_cap))
        return result(0, "all short requests to Graviton: the GPU target group has no healthy hosts", aim=aim)
    if not healthy["cpu"]:
        aim = cheapest()
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
        # Never more short traffic than the receiving side's healthy hosts carry at the target utilization (on
        # the GPU side, after the long requests it serves anyway).
        if delta > 0:
            spare = (telemetry["gpu"].healthy_hosts or 0.0) - demand.long / requests_per_second_per_instance(
                specs["gpu"], settings, short=False)
            room = max(0.0, spare) * requests_per_second_per_instance(specs["gpu"], settings, short=True)
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
    target = min(cheapest(), gpu_cap)
    if abs(target - current) < MIN_CHANGE:
        return result(current, f"steady at {current}% GPU: the cheapest split for {rate:.1f} short req/s")
    # The side that would take the traffic must be comfortably inside the SLO (it was sized for it first).
    receiver = "gpu" if target > current else "cpu"
    receiver_p99 = p99[receiver]
    comfortable = receiver_p99 is None or receiver_p99 <= slo * settings.comfort
    same = memory.pending_cost_target is not None and (memory.pending_cost_target > current) == (target > current)
    calm = memory.calm + 1 if (same and comfortable) else (1 if comfortable else 0)
    if calm < settings.calm_cycles:
        return result(current, f"hold at {current}% GPU: {target}% is cheaper for {rate:.1f} short req/s, waiting "
                               f"{settings.calm_cycles - calm} more calm cycle(s)",
                      ServingMemory(pending_cost_target=target, calm=calm), aim=target)
    weight = step_toward(target)
    side = "GPUs" if target > current else "Graviton"
    return result(weight, f"toward {side}: {target}% GPU is the cheapest split for {rate:.1f} short req/s",
                  ServingMemory(pending_cost_target=target, calm=calm), aim=target)


def _share_within(capacity_per_second: float, rate: float) -> int:
    """The largest share (in steps of 5) of `rate` that `capacity_per_second` can carry."""
    if rate <= 0 or capacity_per_second >= rate:
        return 100
    return max(0, int(capacity_per_second / rate * 100) // 5 * 5)
