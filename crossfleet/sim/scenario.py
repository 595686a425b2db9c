"""Scenario files: regions and pools, workload, capacity/price/Spot events. Documented in docs/simulator.md."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.control import RebalancerConfig, parse_rebalancer
from crossfleet.config.errors import ConfigError
from crossfleet.config.model import US_REGIONS
from crossfleet.config.offerings import offerings
from crossfleet_control.core.jobs import JOB_CLASSES, PLACEMENTS

POOLS = ("cpu", "gpu")
# The Azure code trace as the dataset names it, and as the shipped scenarios (and ../shared/traces) name it.
TRACE_NAMES = ("azure_llm_inference_2023_code.csv", "AzureLLMInferenceTrace_code.csv")
EVENT_TYPES = ("capacity", "spot_interruption", "price")
PRICE_MARKETS = ("all", "spot", "on_demand")  # which of a pool's prices a price event multiplies


@dataclass(frozen=True)
class PoolScenario:
    instance_type: str
    min_size: int
    max_size: int
    start: int
    spot_fraction: float  # share of instance-hours billed at the Spot price
    warm_pool: WarmPoolScenario | None = None  # the GPU pool's warm lane (accelerator_cluster.warm_pool)


# A start from the warm pool: EC2 starts a stopped instance "near 5 s" with a warm pool (depot.dev, in
# reference/numbers.md "Provisioning delays") [B], then vLLM serves after 82 s with the weights already on the
# volume (Tensorfuse "reducing GPU cold start", the same figure the GPU profiles' boot uses) [B]: 87 s [D]. A GPU
# still loads its model into GPU memory after a stop (reference/numbers.md). The profiles' cold boot (110 s)
# already assumes weights on the volume, so the simulator credits the warm pool only with the EC2 launch it
# saves (28 s -> 5 s), not with the image pull and weight download a really fresh instance also needs.
WARM_START_SECONDS = 87.0
# Stopped warm-pool instances cost their EBS root volume only (EC2 Auto Scaling User Guide, "Warm pools": "you
# pay only for the volumes that you use"). gp3 storage is $0.08 per GB-month in us-east-1 (Amazon EBS pricing
# page, aws.amazon.com/ebs/pricing; its Example 1 bills gp3 per second over a 30-day month) [A; the rate is the
# published us-east-1 one, not re-read from a stored copy: the stored EU-sovereign copy shows EUR 0.09394 for the
# same example]. 200 GiB is accelerator_cluster.root_volume_gib's default.
GP3_USD_PER_GB_MONTH = 0.08
WARM_VOLUME_GIB = 200


@dataclass(frozen=True)
class WarmPoolScenario:
    size: int  # stopped, prepared instances kept (MinSize)
    max_prepared: int  # the lane's most in-service instances (its MaxSize); warm starts stop there
    start_seconds: float = WARM_START_SECONDS
    volume_gib: int = WARM_VOLUME_GIB

    @property
    def stopped_usd_per_second(self) -> float:
        return GP3_USD_PER_GB_MONTH * self.volume_gib / (30 * 86400)


@dataclass(frozen=True)
class TraceWorkload:
    path: str
    rate_scale: float  # 10 means ten times the trace's request rate
    placement: str
    preference: str
    deadline_seconds: float
    regions: tuple[str, ...]  # requests go round-robin to these regions


@dataclass(frozen=True)
class SyntheticStream:
    job_class: str
    placement: str
    preference: str
    rate_per_second: float
    deadline_seconds: float
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    cpu_seconds: tuple[float, float] | None
    gpu_seconds: tuple[float, float] | None
    regions: tuple[str, ...]
    start_seconds: float = 0.0  # the stream runs from here...
    end_seconds: float | None = None  # ...to here (default: the whole run)


@dataclass(frozen=True)
class Event:
    type: str
    region: str
    pool: str
    start: float
    end: float
    max_instances: int | None = None  # capacity: launches above this fail; reclaim removes the excess
    reclaim: bool = False
    fraction: float = 0.0  # spot_interruption: share of the pool's instances reclaimed at `start`
    factor: float = 1.0  # price: multiplies the pool's price from `start` to `end`
    market: str = "all"  # price: "spot" or "on_demand" multiplies that market's price only


@dataclass(frozen=True)
class ServingScenario:
    # The deployment's response-time p99 for serving-crossfleet's feedback rules; None: the p99 its TTFT and
    # TPOT limits map to (core/serving.py ServingSettings.response_slo_seconds).
    latency_slo_p99_seconds: float | None
    initial_gpu_weight: int
    max_weight_step: int
    # How the benchmark measures serving: MLPerf Inference's server limits for Llama-3.1-8B (TTFT p99 2 s, TPOT
    # p99 100 ms; mlcommons/inference loadgen/mlperf.conf) [A], and a request not started within the ALB's
    # default 60 s idle timeout has failed (Elastic Load Balancing, "idle timeout", default 60 s) [A].
    ttft_slo_seconds: float = 2.0
    tpot_slo_seconds: float = 0.1
    request_timeout_seconds: float = 60.0
    forecast_window_seconds: float = 900.0  # serving-crossfleet: how long the recent-peak envelope holds a rate


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_seconds: float
    drain_seconds: float
    control_period_seconds: float
    seed: int
    regions: dict[str, dict[str, PoolScenario]]
    trace: TraceWorkload | None
    synthetic: tuple[SyntheticStream, ...]
    events: tuple[Event, ...]
    rebalancer: RebalancerConfig
    # Real-time serving: requests go through an endpoint split by weight instead of through queues.
    serving: ServingScenario | None = None

    @property
    def horizon_seconds(self) -> float:
        return self.duration_seconds + self.drain_seconds


def load_scenario(path: str | Path, *, trace_override: str | None = None) -> Scenario:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("scenario", str(path), "a path to an existing scenario JSON file") from None
    except json.JSONDecodeError as error:
        raise ConfigError("scenario", str(path), f"valid JSON ({error.msg} at line {error.lineno})") from None
    return parse_scenario(raw, base_dir=path.parent, trace_override=trace_override)


def parse_scenario(raw: Any, *, base_dir: Path = Path("."), trace_override: str | None = None) -> Scenario:
    top = p.section(raw, "", ("name", "description", "duration_seconds", "drain_seconds", "control_period_seconds",
                              "seed", "regions", "workload", "events", "rebalancer", "serving"))
    regions_raw = p.section(top.get("regions"), "regions", US_REGIONS)
    if not regions_raw:
        raise ConfigError("regions", top.get("regions"), f"at least one of {', '.join(US_REGIONS)}")
    regions = {name: {pool: _pool(pool_raw, f"regions.{name}.{pool}", name, pool)
                      for pool, pool_raw in p.section(entry, f"regions.{name}", POOLS).items()}
               for name, entry in regions_raw.items()}
    for name, pools in regions.items():
        if set(pools) != set(POOLS):
            raise ConfigError(f"regions.{name}", sorted(pools), "both pools: cpu and gpu")
    region_names = tuple(regions)
    workload = p.section(top.get("workload"), "workload", ("inference_trace", "synthetic"))
    trace = _trace(workload.get("inference_trace"), base_dir, region_names, trace_override)
    synthetic_raw = workload.get("synthetic", [])
    if not isinstance(synthetic_raw, list):
        raise ConfigError("workload.synthetic", synthetic_raw, "a list of stream objects")
    synthetic = tuple(_stream(s, f"workload.synthetic[{i}]", region_names) for i, s in enumerate(synthetic_raw))
    events_raw = top.get("events", [])
    if not isinstance(events_raw, list):
        raise ConfigError("events", events_raw, "a list of event objects")
    duration = _number(top, "", "duration_seconds", 3600, 60, 7 * 86400)
    return Scenario(
        name=str(top.get("name", "scenario")), description=str(top.get("description", "")),
        duration_seconds=duration, drain_seconds=_number(top, "", "drain_seconds", 1800, 0, 86400),
        control_period_seconds=_number(top, "", "control_period_seconds", 60, 10, 3600),
        seed=p.integer(top, "", "seed", 1), regions=regions, trace=trace, synthetic=synthetic,
        events=tuple(_event(e, f"events[{i}]", regions) for i, e in enumerate(events_raw)),
        # The same keys, defaults and checks as the deployment's `rebalancer` config section.
        rebalancer=parse_rebalancer(top.get("rebalancer")),
        serving=_serving(top["serving"]) if top.get("serving") is not None else None)


def _serving(raw: Any) -> ServingScenario:
    s = p.section(raw, "serving", ("latency_slo_p99_seconds", "initial_gpu_weight", "max_weight_step",
                                   "ttft_slo_seconds", "tpot_slo_seconds", "request_timeout_seconds",
                                   "forecast_window_seconds"))
    slo = _number(s, "serving", "latency_slo_p99_seconds", 0.05, 0.05, 3600) if "latency_slo_p99_seconds" in s else None
    return ServingScenario(latency_slo_p99_seconds=slo,
                           initial_gpu_weight=p.integer(s, "serving", "initial_gpu_weight", 50, maximum=100),
                           max_weight_step=p.integer(s, "serving", "max_weight_step", 20, minimum=1, maximum=100),
                           ttft_slo_seconds=_number(s, "serving", "ttft_slo_seconds", 2.0, 0.01, 3600),
                           tpot_slo_seconds=_number(s, "serving", "tpot_slo_seconds", 0.1, 0.001, 60),
                           request_timeout_seconds=_number(s, "serving", "request_timeout_seconds", 60, 0.1, 3600),
                           forecast_window_seconds=_number(s, "serving", "forecast_window_seconds", 900, 0, 86400))


def _number(raw: Any, path: str, key: str, default: float, low: float, high: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(p.join(path, key), value, f"a number from {low} to {high}")
    return float(value)


def _range(raw: Any, path: str, key: str, kind: type) -> tuple[Any, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value)
            or not 0 <= value[0] <= value[1]):
        raise ConfigError(p.join(path, key), value, "[low, high] with 0 <= low <= high")
    return kind(value[0]), kind(value[1])


def _pool(raw: Any, path: str, region: str, pool: str) -> PoolScenario:
    s = p.section(raw, path, ("instance_type", "min_size", "max_size", "start", "spot_fraction", "warm_pool"))
    instance_type = s.get("instance_type")
    info = offerings().get(instance_type) if isinstance(instance_type, str) else None
    if info is None or region not in info.regions or (info.accelerator == "none") == (pool == "gpu"):
        kind = "an accelerated" if pool == "gpu" else "a CPU-only"
        raise ConfigError(p.join(path, "instance_type"), instance_type, f"{kind} type offered in {region}")
    min_size = p.integer(s, path, "min_size", 0)
    max_size = p.integer(s, path, "max_size", 10)
    if min_size > max_size:
        raise ConfigError(p.join(path, "min_size"), min_size, f"at most max_size ({max_size})")
    start = p.integer(s, path, "start", min_size)
    if not min_size <= start <= max_size:
        raise ConfigError(p.join(path, "start"), start, f"from min_size ({min_size}) to max_size ({max_size})")
    spot_fraction = _number(s, path, "spot_fraction", 0.0, 0.0, 1.0)
    warm_pool = _warm_pool(s.get("warm_pool"), p.join(path, "warm_pool"), pool=pool, max_size=max_size,
                           spot_fraction=spot_fraction)
    return PoolScenario(instance_type=instance_type, min_size=min_size, max_size=max_size, start=start,
                        spot_fraction=spot_fraction, warm_pool=warm_pool)


def _warm_pool(raw: Any, path: str, *, pool: str, max_size: int, spot_fraction: float) -> WarmPoolScenario | None:
    """A pool's warm lane, with the deployment config's rules (crossfleet.config.fleets._warm_pool)."""
    if raw is None:
        return None
    s = p.section(raw, path, ("size", "max_prepared", "start_seconds", "volume_gib"))
    if pool != "gpu":
        raise ConfigError(path, dict(s), "only on the gpu pool (crossfleet deploys the warm lane for the GPU pool)")
    if spot_fraction > 0:
        # The lane is On-Demand (AWS refuses a warm pool on a group that launches Spot); the simulator bills a
        # pool at one blended price, so a Spot share would bill the lane's instances at Spot prices.
        raise ConfigError(path, dict(s), "null while spot_fraction is above 0 (the warm lane is On-Demand)")
    size = p.integer(s, path, "size", 1, minimum=1, maximum=max_size)
    max_prepared = p.integer(s, path, "max_prepared", size, minimum=size, maximum=max_size)
    return WarmPoolScenario(size=size, max_prepared=max_prepared,
                            start_seconds=_number(s, path, "start_seconds", WARM_START_SECONDS, 0, 3600),
                            volume_gib=p.integer(s, path, "volume_gib", WARM_VOLUME_GIB, minimum=1, maximum=16384))


def _regions(raw: Any, path: str, known: tuple[str, ...]) -> tuple[str, ...]:
    chosen = p.string_list(raw, path, "regions", known)
    for i, region in enumerate(chosen):
        if region not in known:
            raise ConfigError(p.join(p.join(path, "regions"), i), region, f"one of the scenario's regions: {known}")
    return chosen


def _trace(raw: Any, base_dir: Path, regions: tuple[str, ...], override: str | None) -> TraceWorkload | None:
    if raw is None and override is None:
        return None
    path = "workload.inference_trace"
    s = p.section(raw or {}, path, ("path", "rate_scale", "placement", "preference", "deadline_seconds", "regions"))
    trace_path = override or s.get("path")
    if not isinstance(trace_path, str):
        raise ConfigError(p.join(path, "path"), trace_path, "a path to an Azure LLM inference trace CSV")
    resolved = Path(trace_path) if Path(trace_path).is_absolute() or override else base_dir / trace_path
    if not resolved.exists():
        # The dataset's own file name and the name the shipped scenarios use are the same trace: accept either.
        for alias in TRACE_NAMES:
            if resolved.name in TRACE_NAMES and (resolved.parent / alias).exists():
                resolved = resolved.parent / alias
                break
    if not resolved.exists():
        raise ConfigError(p.join(path, "path"), str(resolved.resolve()),
                          f"an existing CSV with TIMESTAMP,ContextTokens,GeneratedTokens; a relative path is read "
                          f"from the scenario's folder ({base_dir.resolve()}); pass --trace PATH, or download "
                          f"data/AzureLLMInferenceTrace_code.csv from github.com/Azure/AzurePublicDataset")
    placement = p.choice(s, path, "placement", "either", PLACEMENTS)
    return TraceWorkload(path=str(resolved), rate_scale=_number(s, path, "rate_scale", 1.0, 0.01, 1000),
                         placement=placement, preference=p.choice(s, path, "preference", "gpu", POOLS),
                         deadline_seconds=_number(s, path, "deadline_seconds", 60, 1, 86400),
                         regions=_regions(s, path, regions))


def _stream(raw: Any, path: str, regions: tuple[str, ...]) -> SyntheticStream:
    s = p.section(raw, path, ("class", "placement", "preference", "rate_per_second", "deadline_seconds",
                              "input_tokens", "output_tokens", "cpu_seconds", "gpu_seconds", "regions",
                              "start_seconds", "end_seconds"))
    placement = p.choice(s, path, "placement", "either", PLACEMENTS)
    default_preference = "cpu" if placement == "cpu_only" else "gpu"
    return SyntheticStream(
        job_class=p.choice(s, path, "class", "agent", JOB_CLASSES), placement=placement,
        preference=p.choice(s, path, "preference", default_preference, POOLS),
        rate_per_second=_number(s, path, "rate_per_second", 1.0, 0.0, 10_000),
        deadline_seconds=_number(s, path, "deadline_seconds", 60, 1, 7 * 86400),
        input_tokens=_range(s, path, "input_tokens", int) or (0, 0),
        output_tokens=_range(s, path, "output_tokens", int) or (0, 0),
        cpu_seconds=_range(s, path, "cpu_seconds", float), gpu_seconds=_range(s, path, "gpu_seconds", float),
        regions=_regions(s, path, regions), start_seconds=_number(s, path, "start_seconds", 0, 0, 7 * 86400),
        end_seconds=_number(s, path, "end_seconds", 7 * 86400, 0, 7 * 86400))


def _event(raw: Any, path: str, regions: dict[str, Any]) -> Event:
    s = p.section(raw, path, ("type", "region", "pool", "start", "end", "max_instances", "reclaim", "fraction",
                              "factor", "market"))
    kind = p.choice(s, path, "type", "capacity", EVENT_TYPES)
    region = p.choice(s, path, "region", next(iter(regions)), tuple(regions))
    start = _number(s, path, "start", 0, 0, 7 * 86400)
    end = _number(s, path, "end", start, start, 7 * 86400)
    max_instances = s.get("max_instances")
    if kind == "capacity":
        max_instances = p.integer(s, path, "max_instances", 0)
    return Event(type=kind, region=region, pool=p.choice(s, path, "pool", "gpu", POOLS), start=start, end=end,
                 max_instances=max_instances, reclaim=p.boolean(s, path, "reclaim", True),
                 fraction=_number(s, path, "fraction", 0.0, 0.0, 1.0),
                 factor=_number(s, path, "factor", 1.0, 0.01, 100.0),
                 market=p.choice(s, path, "market", "all", PRICE_MARKETS))
