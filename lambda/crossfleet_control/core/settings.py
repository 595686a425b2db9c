"""The rebalancer's typed settings, parsed once at cold start from the CROSSFLEET_SETTINGS variable.

The CDK construct writes this JSON from the validated config, so the Lambda never reads config files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crossfleet_control.core.jobs import Job
from crossfleet_control.core.policy_types import PolicySettings, PoolSpec
from crossfleet_control.core.service_model import profile_for
from crossfleet_control.core.serving import ServingSettings

# Median request of the Azure LLM code trace (Splitwise, ISCA'24): sizes fleets from queue counts alone.
REFERENCE_JOB = Job(id="reference", job_class="inference", placement="either", preference="gpu", input_tokens=1469,
                    output_tokens=13, cpu_seconds=None, gpu_seconds=None, deadline_seconds=60.0, priority=5,
                    submitted_at=0.0)


@dataclass(frozen=True)
class PoolSettings:
    group_name: str
    queue_url: str
    dead_letter_url: str
    instance_type: str
    vcpus: int
    accelerators: int
    min_size: int
    max_size: int
    # Every type the group may launch, and its configured On-Demand share above base (100: no Spot).
    instance_types: tuple[str, ...] = ()
    on_demand_percentage: int = 100
    # The pool's warm lane (GPU pool with accelerator_cluster.warm_pool): an On-Demand one-type group with a warm
    # pool, filled first above the main group's minimum (crossfleet_control.aws.fleets). Counted in max_size.
    warm_lane_group: str | None = None
    warm_lane_max: int = 0
    # Price overrides from the deployment's config ($/hour per instance; None: the pinned price table).
    on_demand_price_per_hour: float | None = None
    spot_price_per_hour: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance_types", tuple(self.instance_types) or (self.instance_type,))

    def spec(self, name: str) -> PoolSpec:
        return pool_spec(name, self.instance_type, vcpus=self.vcpus, accelerators=self.accelerators,
                         min_size=self.min_size, max_size=self.max_size, instance_types=self.instance_types,
                         on_demand_percentage=self.on_demand_percentage,
                         on_demand_price_per_hour=self.on_demand_price_per_hour,
                         spot_price_per_hour=self.spot_price_per_hour)


@dataclass(frozen=True)
class PeerRegion:
    """Another configured region: where failed-over GPU work goes, and where its capacity summary is read."""

    gpu_queue_url: str
    table_name: str


def pool_spec(name: str, instance_type: str, *, vcpus: int, accelerators: int, min_size: int,
              max_size: int, instance_types: tuple[str, ...] = (), on_demand_percentage: int = 100,
              on_demand_price_per_hour: float | None = None, spot_price_per_hour: float | None = None) -> PoolSpec:
    """The policy's view of a pool; the Lambda and the simulator both build it here."""
    profile = profile_for(instance_type, vcpus=vcpus, accelerators=accelerators)
    return PoolSpec(name=name, min_size=min_size, max_size=max_size, profile=profile,
                    mean_job_seconds=profile.job_seconds(REFERENCE_JOB),
                    instance_types=tuple(instance_types) or (instance_type,),
                    on_demand_percentage=on_demand_percentage,
                    on_demand_price_per_hour=on_demand_price_per_hour, spot_price_per_hour=spot_price_per_hour)


@dataclass(frozen=True)
class EndpointTargets:
    """One pool's target group: its ARN (to set weights) and full name (its CloudWatch dimension)."""

    arn: str
    full_name: str


@dataclass(frozen=True)
class EndpointSettings:
    """The region's real-time endpoint, when it has one."""

    rule_arn: str
    load_balancer_full_name: str
    target_groups: Mapping[str, EndpointTargets]
    serving: ServingSettings

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EndpointSettings:
        return cls(rule_arn=raw["rule_arn"], load_balancer_full_name=raw["load_balancer_full_name"],
                   target_groups={p: EndpointTargets(**t) for p, t in raw["target_groups"].items()},
                   serving=ServingSettings(**raw.get("serving", {})))


@dataclass(frozen=True)
class Settings:
    deployment: str
    region: str
    mode: str  # "observe" records decisions and changes nothing; "enforce" acts
    table_name: str
    schedule_seconds: int
    lease_seconds: int
    decision_ttl_seconds: int
    pools: Mapping[str, PoolSettings]
    policy: PolicySettings
    peers: Mapping[str, PeerRegion] = field(default_factory=dict)
    # The work queues' redrive threshold: sampling counts as a receive, so it must never use the last one.
    max_receive_count: int = 5
    endpoint: EndpointSettings | None = None

    @property
    def configured_regions(self) -> tuple[str, ...]:
        return (self.region, *self.peers)

    def specs(self) -> dict[str, PoolSpec]:
        return {name: pool.spec(name) for name, pool in self.pools.items()}

    @classmethod
    def from_json(cls, text: str) -> Settings:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            deployment=raw["deployment"], region=raw["region"], mode=raw["mode"], table_name=raw["table_name"],
            schedule_seconds=int(raw["schedule_seconds"]), lease_seconds=int(raw["lease_seconds"]),
            decision_ttl_seconds=int(raw["decision_ttl_seconds"]),
            pools={name: PoolSettings(**{**pool, "instance_types": tuple(pool.get("instance_types", ()))})
                   for name, pool in raw["pools"].items()},
            policy=PolicySettings(**raw["policy"]),
            peers={name: PeerRegion(**peer) for name, peer in raw.get("peers", {}).items()},
            max_receive_count=int(raw.get("max_receive_count", 5)),
            endpoint=EndpointSettings.from_dict(raw["endpoint"]) if raw.get("endpoint") else None,
        )


@dataclass
class RouterSettings:
    deployment: str
    region: str
    table_name: str
    queue_urls: dict[str, str]
    rejects_url: str
    # Payload references must point under this bucket's payloads/ prefix (jobs.payload_uri_problem).
    results_bucket: str = ""
    # Failover: the other configured regions' GPU queues (nothing else is ever a destination).
    peer_gpu_queue_urls: dict[str, str] = field(default_factory=dict)
    pool_instance_types: dict[str, list[str]] = field(default_factory=dict)
    stale_peer_seconds: float = 300.0

    @classmethod
    def from_json(cls, text: str) -> RouterSettings:
        return cls(**json.loads(text))

