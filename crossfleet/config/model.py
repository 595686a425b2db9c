"""crossfleet's configuration: one typed, immutable model, validated where it is created.

`parse_config(raw)` turns the JSON mapping from `cdk.json` (or a file named with `-c config=PATH`) into an
`AppConfig`, or raises `ConfigError` naming the key, the value and what is allowed. Every default
synthesizes. The reference of keys lives in docs/configuration.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.errors import ConfigError
from crossfleet.config.offerings import InstanceTypeInfo, offerings

# Compute stays in US commercial regions (the kit's scope, and what the offerings table covers).
US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")

# Explicit AZs so that synth never needs an AZ lookup (and so credentials). AZ names map to different
# physical zones per account: set `availability_zones` per region for a real deployment.
DEFAULT_AZS = {
    "us-east-1": ("us-east-1a", "us-east-1b", "us-east-1c"),
    "us-east-2": ("us-east-2a", "us-east-2b", "us-east-2c"),
    "us-west-1": ("us-west-1a", "us-west-1b"),
    "us-west-2": ("us-west-2a", "us-west-2b", "us-west-2c"),
}

ACCELERATOR_KINDS = ("nvidia", "neuron")
# Public SSM parameters, resolved by CloudFormation at deploy time (no lookup at synth).
AL2023_ARM64_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
ACCELERATOR_AMI_PARAMETERS = {
    "nvidia": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
    "neuron": "/aws/service/neuron/dlami/multi-framework/amazon-linux-2023/latest/image_id",
}
ACCELERATOR_DEFAULT_TYPES = {
    "nvidia": (("p5.48xlarge",), ("p5en.48xlarge", "g6e.12xlarge")),
    "neuron": (("inf2.48xlarge",), ("inf2.24xlarge", "trn1.32xlarge")),
}

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,19}$")


@dataclass(frozen=True)
class NetworkConfig:
    cidr: str
    nat_gateways: int
    interface_endpoints: bool
    flow_log_retention_days: int


@dataclass(frozen=True)
class GravitonFleetConfig:
    instance_types: tuple[str, ...]
    fallback_instance_types: tuple[str, ...]
    min_size: int
    max_size: int
    on_demand_base_capacity: int
    on_demand_percentage_above_base: int
    root_volume_gib: int

    @property
    def all_instance_types(self) -> tuple[str, ...]:
        return self.instance_types + self.fallback_instance_types


@dataclass(frozen=True)
class AcceleratorClusterConfig:
    kind: str
    instance_types: tuple[str, ...]
    fallback_instance_types: tuple[str, ...]
    min_size: int
    max_size: int
    placement_group: bool
    efa: bool
    spot: bool
    capacity_reservation_id: str | None
    capacity_block_id: str | None
    root_volume_gib: int

    @property
    def all_instance_types(self) -> tuple[str, ...]:
        return self.instance_types + self.fallback_instance_types

    @property
    def ami_parameter(self) -> str:
        return ACCELERATOR_AMI_PARAMETERS[self.kind]

    @property
    def reservation_id(self) -> str | None:
        return self.capacity_block_id or self.capacity_reservation_id


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

    def policy_fields(self) -> dict[str, float | int]:
        """The policy's settings (crossfleet_control.policy_types.PolicySettings), for the Lambda and simulator."""
        return {"target_wait_seconds": float(self.target_wait_seconds),
                "scale_in_delay_seconds": float(self.scale_in_delay_minutes * 60),
                "max_scale_up_step": self.max_scale_up_step, "max_scale_in_step": self.max_scale_in_step,
                "move_budget": self.move_budget_per_cycle}


@dataclass(frozen=True)
class WorkerConfig:
    """The worker agent on every fleet instance: how it runs jobs and how patient it is."""

    cpu_runner: dict[str, Any]
    gpu_runner: dict[str, Any]
    cpu_concurrency: int
    gpu_concurrency: int
    max_attempts: int
    heartbeat_seconds: int
    # How long the termination lifecycle hook holds a scaling-in instance so its jobs can finish.
    drain_seconds: int


@dataclass(frozen=True)
class MonitoringConfig:
    alarm_emails: tuple[str, ...]
    oldest_job_alarm_seconds: int  # a queued job older than this pages
    shortage_alarm_minutes: int  # failed launches for this many minutes in a row page


@dataclass(frozen=True)
class RegionConfig:
    region: str
    availability_zones: tuple[str, ...]
    graviton_fleet: GravitonFleetConfig
    accelerator_cluster: AcceleratorClusterConfig


@dataclass(frozen=True)
class AppConfig:
    name: str
    stage: str
    account: str | None
    regions: tuple[RegionConfig, ...]
    network: NetworkConfig
    queues: QueueConfig
    state: StateConfig
    rebalancer: RebalancerConfig
    worker: WorkerConfig
    monitoring: MonitoringConfig

    @property
    def prefix(self) -> str:
        """Prefix of every stack and tag value, so dev and prod can share an account and region."""
        return f"{self.name}-{self.stage}"

    def stack_name(self, region: str) -> str:
        return f"{self.prefix}-{region}"


_TOP_KEYS = ("name", "stage", "account", "regions", "network", "graviton_fleet", "accelerator_cluster",
             "queues", "state", "rebalancer", "worker", "monitoring")
_REGION_KEYS = ("region", "availability_zones", "graviton_fleet", "accelerator_cluster")
_GRAVITON_KEYS = ("instance_types", "fallback_instance_types", "min_size", "max_size",
                  "on_demand_base_capacity", "on_demand_percentage_above_base", "root_volume_gib")
_ACCEL_KEYS = ("kind", "instance_types", "fallback_instance_types", "min_size", "max_size", "placement_group",
               "efa", "spot", "capacity_reservation_id", "capacity_block_id", "root_volume_gib")


def parse_config(raw: Mapping[str, Any] | None) -> AppConfig:
    top = p.section(raw or {}, "", _TOP_KEYS)
    name = _name(top, "name", "crossfleet")
    stage = _name(top, "stage", "dev")
    account = top.get("account")
    if account is not None and not (isinstance(account, str) and re.fullmatch(r"\d{12}", account)):
        raise ConfigError("account", account, "a 12-digit AWS account id as a string, or null")

    network = _network(top.get("network"))
    graviton_defaults = p.section(top.get("graviton_fleet"), "graviton_fleet", _GRAVITON_KEYS)
    accel_defaults = p.section(top.get("accelerator_cluster"), "accelerator_cluster", _ACCEL_KEYS)

    raw_regions = top.get("regions", ["us-east-1", "us-east-2", "us-west-2"])
    if not isinstance(raw_regions, list):
        raise ConfigError("regions", raw_regions, "a list of US regions or region objects")
    if not raw_regions:
        raise ConfigError("regions", raw_regions, f"at least one of {', '.join(US_REGIONS)}")
    regions: list[RegionConfig] = []
    for index, entry in enumerate(raw_regions):
        region = _region(entry, f"regions[{index}]", graviton_defaults, accel_defaults)
        if any(r.region == region.region for r in regions):
            raise ConfigError(f"regions[{index}]", region.region, "each region once (it is listed twice)")
        regions.append(region)

    return AppConfig(
        name=name, stage=stage, account=account, regions=tuple(regions), network=network,
        queues=_queues(top.get("queues")), state=_state(top.get("state")),
        rebalancer=parse_rebalancer(top.get("rebalancer")),
        worker=_worker(top.get("worker")),
        monitoring=_monitoring(top.get("monitoring")),
    )


def _name(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ConfigError(key, value, "2-20 characters: lowercase letters, digits and '-', starting with a letter")
    return value


def _network(raw: Any) -> NetworkConfig:
    path = "network"
    s = p.section(raw, path, ("cidr", "nat_gateways", "interface_endpoints", "flow_log_retention_days"))
    cidr = s.get("cidr", "10.40.0.0/16")
    match = re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})/(\d{1,2})", str(cidr))
    if not isinstance(cidr, str) or not match or not 16 <= int(match.group(5)) <= 20 or any(
            int(octet) > 255 for octet in match.groups()[:4]):
        raise ConfigError(p.join(path, "cidr"), cidr, "an IPv4 CIDR block from /16 to /20, e.g. 10.40.0.0/16")
    retention = p.integer(s, path, "flow_log_retention_days", 30, minimum=1)
    allowed_retention = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 3653)
    if retention not in allowed_retention:
        raise ConfigError(p.join(path, "flow_log_retention_days"), retention,
                          f"a CloudWatch Logs retention: one of {', '.join(map(str, allowed_retention))}")
    return NetworkConfig(
        cidr=cidr,
        nat_gateways=p.integer(s, path, "nat_gateways", 1, minimum=0, maximum=3),
        interface_endpoints=p.boolean(s, path, "interface_endpoints", True),
        flow_log_retention_days=retention,
    )


def _region(entry: Any, path: str, graviton_defaults: Mapping[str, Any],
            accel_defaults: Mapping[str, Any]) -> RegionConfig:
    if isinstance(entry, str):
        entry = {"region": entry}
    s = p.section(entry, path, _REGION_KEYS)
    region = s.get("region")
    if region not in US_REGIONS:
        raise ConfigError(p.join(path, "region"), region,
                          f"a US region: one of {', '.join(US_REGIONS)} (crossfleet keeps compute in US regions)")
    azs = p.string_list(s, path, "availability_zones", DEFAULT_AZS[region])
    for i, az in enumerate(azs):
        if not re.fullmatch(re.escape(region) + r"[a-z]", az):
            raise ConfigError(p.join(p.join(path, "availability_zones"), i), az,
                              f"an availability zone of {region}, e.g. {region}a")
    # A region may override any fleet key; the rest comes from the top-level section.
    graviton_raw = {**graviton_defaults, **p.section(s.get("graviton_fleet"), p.join(path, "graviton_fleet"),
                                                      _GRAVITON_KEYS)}
    accel_raw = {**accel_defaults, **p.section(s.get("accelerator_cluster"), p.join(path, "accelerator_cluster"),
                                                _ACCEL_KEYS)}
    return RegionConfig(
        region=region,
        availability_zones=azs,
        graviton_fleet=_graviton(graviton_raw, p.join(path, "graviton_fleet"), region),
        accelerator_cluster=_accelerator(accel_raw, p.join(path, "accelerator_cluster"), region),
    )


def _sizes(s: Mapping[str, Any], path: str, default_min: int, default_max: int) -> tuple[int, int]:
    min_size = p.integer(s, path, "min_size", default_min, minimum=0, maximum=1000)
    max_size = p.integer(s, path, "max_size", default_max, minimum=0, maximum=1000)
    if min_size > max_size:
        raise ConfigError(p.join(path, "min_size"), min_size, f"at most max_size ({max_size})")
    return min_size, max_size


def _check_offered(types: tuple[str, ...], path: str, key: str, region: str, *, want: str) -> None:
    """Every listed type, fallbacks included, must exist, be offered in `region` and suit the pool."""
    table = offerings()
    for i, name in enumerate(types):
        where = p.join(p.join(path, key), i)
        info = table.get(name)
        if info is None:
            raise ConfigError(where, name, f"an instance type in crossfleet's offerings table ({_examples(want)})")
        problem = _unsuitable(info, want)
        if problem:
            raise ConfigError(where, name, f"{problem}; allowed: {_examples(want)}")
        if region not in info.regions:
            offered_in = ", ".join(info.regions) or "no US region"
            raise ConfigError(where, name, f"a type offered in {region} ({name} is offered in {offered_in})")


def _unsuitable(info: InstanceTypeInfo, want: str) -> str | None:
    if want == "graviton":
        if info.arch != "arm64":
            return f"{info.name} is {info.arch}, the Graviton fleet takes arm64 types"
        if info.accelerator != "none":
            return f"{info.name} has {info.accelerator} accelerators, the Graviton fleet takes CPU-only types"
        return None
    if info.accelerator == "none":
        return f"{info.name} has no accelerator, the accelerator cluster of kind '{want}' takes {want} types"
    if info.accelerator != want:
        return f"{info.name} has {info.accelerator} accelerators, the cluster's kind is '{want}'"
    if info.arch != "x86_64":
        # The DLAMI and Neuron AMI parameters crossfleet uses are x86_64 images.
        return f"{info.name} is {info.arch}, the {want} AMI crossfleet uses is x86_64"
    return None


def _examples(want: str) -> str:
    return {
        "graviton": "arm64 CPU types such as m9g.4xlarge, c9g.4xlarge, r9g.4xlarge, m8g.4xlarge, c8g.4xlarge",
        "nvidia": "NVIDIA GPU types such as p5.48xlarge, p5en.48xlarge, g6e.12xlarge, g6.xlarge",
        "neuron": "AWS Neuron types such as inf2.48xlarge, inf2.24xlarge, trn1.32xlarge",
    }[want]


def _graviton(s: Mapping[str, Any], path: str, region: str) -> GravitonFleetConfig:
    # 16xlarge: CPU LLM decode is memory-bandwidth bound, so a whole socket's bandwidth per instance.
    types = p.string_list(s, path, "instance_types", ("m9g.16xlarge", "c9g.16xlarge", "r9g.16xlarge"))
    fallbacks = p.string_list(s, path, "fallback_instance_types", ("m8g.16xlarge", "c8g.16xlarge"),
                              allow_empty=True)
    _check_offered(types, path, "instance_types", region, want="graviton")
    _check_offered(fallbacks, path, "fallback_instance_types", region, want="graviton")
    _no_overlap(types, fallbacks, path)
    min_size, max_size = _sizes(s, path, 1, 20)
    base = p.integer(s, path, "on_demand_base_capacity", 1, minimum=0, maximum=1000)
    if base > max_size:
        raise ConfigError(p.join(path, "on_demand_base_capacity"), base, f"at most max_size ({max_size})")
    return GravitonFleetConfig(
        instance_types=types, fallback_instance_types=fallbacks, min_size=min_size, max_size=max_size,
        on_demand_base_capacity=base,
        on_demand_percentage_above_base=p.integer(s, path, "on_demand_percentage_above_base", 0, maximum=100),
        root_volume_gib=p.integer(s, path, "root_volume_gib", 50, minimum=20, maximum=16384),
    )


def _accelerator(s: Mapping[str, Any], path: str, region: str) -> AcceleratorClusterConfig:
    kind = p.choice(s, path, "kind", "nvidia", ACCELERATOR_KINDS)
    default_types, default_fallbacks = ACCELERATOR_DEFAULT_TYPES[kind]
    types = p.string_list(s, path, "instance_types", default_types)
    fallbacks = p.string_list(s, path, "fallback_instance_types", default_fallbacks, allow_empty=True)
    _check_offered(types, path, "instance_types", region, want=kind)
    _check_offered(fallbacks, path, "fallback_instance_types", region, want=kind)
    _no_overlap(types, fallbacks, path)
    min_size, max_size = _sizes(s, path, 0, 4)
    reservation = p.optional_string(s, path, "capacity_reservation_id", prefix="cr-",
                                    what="an On-Demand Capacity Reservation id (cr-...) or null")
    block = p.optional_string(s, path, "capacity_block_id", prefix="cr-",
                              what="a Capacity Block for ML reservation id (cr-...) or null")
    if reservation and block:
        raise ConfigError(p.join(path, "capacity_block_id"), block,
                          "null when capacity_reservation_id is set (target one reservation)")
    spot = p.boolean(s, path, "spot", False)
    if spot and (reservation or block):
        raise ConfigError(p.join(path, "spot"), spot, "false when targeting a capacity reservation or block")
    if (reservation or block) and fallbacks:
        # A reservation is for one instance type; fallbacks could silently launch unreserved capacity.
        raise ConfigError(p.join(path, "fallback_instance_types"), list(fallbacks),
                          "an empty list when targeting a capacity reservation or block")
    if (reservation or block) and len(types) != 1:
        raise ConfigError(p.join(path, "instance_types"), list(types),
                          "exactly one type (the reservation's) when targeting a capacity reservation or block")
    return AcceleratorClusterConfig(
        kind=kind, instance_types=types, fallback_instance_types=fallbacks, min_size=min_size,
        max_size=max_size, placement_group=p.boolean(s, path, "placement_group", True),
        efa=p.boolean(s, path, "efa", False), spot=spot, capacity_reservation_id=reservation,
        capacity_block_id=block,
        root_volume_gib=p.integer(s, path, "root_volume_gib", 200, minimum=75, maximum=16384),
    )


def _no_overlap(types: tuple[str, ...], fallbacks: tuple[str, ...], path: str) -> None:
    for i, name in enumerate(fallbacks):
        if name in types:
            raise ConfigError(p.join(p.join(path, "fallback_instance_types"), i), name,
                              "a type not already in instance_types")


def _queues(raw: Any) -> QueueConfig:
    path = "queues"
    s = p.section(raw, path, ("visibility_timeout_seconds", "max_receive_count", "retention_days"))
    return QueueConfig(
        visibility_timeout_seconds=p.integer(s, path, "visibility_timeout_seconds", 900, minimum=30,
                                             maximum=43200),
        max_receive_count=p.integer(s, path, "max_receive_count", 5, minimum=1, maximum=1000),
        retention_days=p.integer(s, path, "retention_days", 14, minimum=1, maximum=14),
    )


def _state(raw: Any) -> StateConfig:
    s = p.section(raw, "state", ("retain_on_delete",))
    return StateConfig(retain_on_delete=p.boolean(s, "state", "retain_on_delete", True))


def parse_rebalancer(raw: Any, path: str = "rebalancer") -> RebalancerConfig:
    s = p.section(raw, path, ("mode", "schedule_minutes", "scale_in_delay_minutes", "max_scale_up_step",
                              "max_scale_in_step", "move_budget_per_cycle", "decision_ttl_days",
                              "target_wait_seconds"))
    return RebalancerConfig(
        mode=p.choice(s, path, "mode", "enforce", ("observe", "enforce")),
        schedule_minutes=p.integer(s, path, "schedule_minutes", 1, minimum=1, maximum=60),
        scale_in_delay_minutes=p.integer(s, path, "scale_in_delay_minutes", 10, minimum=0, maximum=1440),
        max_scale_up_step=p.integer(s, path, "max_scale_up_step", 10, minimum=1, maximum=1000),
        max_scale_in_step=p.integer(s, path, "max_scale_in_step", 2, minimum=1, maximum=1000),
        move_budget_per_cycle=p.integer(s, path, "move_budget_per_cycle", 200, minimum=0, maximum=5000),
        decision_ttl_days=p.integer(s, path, "decision_ttl_days", 14, minimum=1, maximum=365),
        target_wait_seconds=p.integer(s, path, "target_wait_seconds", 120, minimum=1, maximum=86400),
    )


# Local model servers: llama.cpp's server on the Graviton pool, vLLM on the GPU pool (OpenAI-style APIs).
DEFAULT_RUNNERS = {"cpu": {"kind": "http", "url": "http://127.0.0.1:8080/v1/completions"},
                   "gpu": {"kind": "http", "url": "http://127.0.0.1:8000/v1/completions"}}


def _runner(raw: Any, path: str, default: dict[str, Any]) -> dict[str, Any]:
    s = p.section(raw if raw is not None else default, path, ("kind", "url", "model", "argv", "timeout_seconds"))
    kind = p.choice(s, path, "kind", "http", ("http", "command"))
    runner: dict[str, Any] = {"kind": kind, "timeout_seconds": p.integer(s, path, "timeout_seconds", 600, minimum=1,
                                                                           maximum=86400)}
    if kind == "http":
        url = s.get("url", default.get("url"))
        if not isinstance(url, str) or not re.match(r"^http://(127\.0\.0\.1|localhost)(:\d+)?/", url):
            raise ConfigError(p.join(path, "url"), url, "a local model server URL, e.g. http://127.0.0.1:8000/v1/completions")
        runner["url"] = url
        if s.get("model") is not None:
            runner["model"] = str(s["model"])
    else:
        runner["argv"] = list(p.string_list(s, path, "argv", ()))
    return runner


def _worker(raw: Any) -> WorkerConfig:
    path = "worker"
    s = p.section(raw, path, ("cpu_runner", "gpu_runner", "cpu_concurrency", "gpu_concurrency", "max_attempts",
                              "heartbeat_seconds", "drain_seconds"))
    return WorkerConfig(
        cpu_runner=_runner(s.get("cpu_runner"), p.join(path, "cpu_runner"), DEFAULT_RUNNERS["cpu"]),
        gpu_runner=_runner(s.get("gpu_runner"), p.join(path, "gpu_runner"), DEFAULT_RUNNERS["gpu"]),
        cpu_concurrency=p.integer(s, path, "cpu_concurrency", 4, minimum=1, maximum=512),
        gpu_concurrency=p.integer(s, path, "gpu_concurrency", 32, minimum=1, maximum=2048),
        max_attempts=p.integer(s, path, "max_attempts", 3, minimum=1, maximum=100),
        heartbeat_seconds=p.integer(s, path, "heartbeat_seconds", 60, minimum=5, maximum=3600),
        drain_seconds=p.integer(s, path, "drain_seconds", 900, minimum=30, maximum=7200),
    )


def _monitoring(raw: Any) -> MonitoringConfig:
    path = "monitoring"
    s = p.section(raw, path, ("alarm_emails", "oldest_job_alarm_seconds", "shortage_alarm_minutes"))
    emails = p.string_list(s, path, "alarm_emails", (), allow_empty=True)
    for i, email in enumerate(emails):
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise ConfigError(p.join(p.join(path, "alarm_emails"), i), email, "an email address")
    return MonitoringConfig(
        alarm_emails=emails,
        oldest_job_alarm_seconds=p.integer(s, path, "oldest_job_alarm_seconds", 900, minimum=60, maximum=86400),
        shortage_alarm_minutes=p.integer(s, path, "shortage_alarm_minutes", 15, minimum=1, maximum=1440))
