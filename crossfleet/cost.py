"""What a configured deployment costs per hour before it is deployed: idle, at a typical load, at every maximum.

Instances are priced from the project's pinned price table (`instance_profiles.json`, the service model the
controllers and simulator use); the fixed network and endpoint charges from AWS's pricing pages, cited below.
Per-request charges (Lambda, SQS, DynamoDB on demand, CloudWatch, data processed per GB) depend on traffic and
are not included: the report says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from crossfleet.config.fleets import AcceleratorClusterConfig, GravitonFleetConfig
from crossfleet.config.model import AppConfig, RegionConfig
from crossfleet.config.offerings import offerings
from crossfleet_control.core.service_model import profile_for

# The price table's date and scope (shared/reference/numbers.md: AWS-generated price map committed in
# aws/karpenter-provider-aws, generated 2026-07-20, us-east-1; us-east-2 and us-west-2 match for sampled types).
PRICE_TABLE = ("instance_profiles.json: On-Demand us-east-1, AWS price map of 2026-07-20; Spot = On-Demand x the "
               "table's spot_price_factor (an estimate inside cited discount ranges)")
# us-west-1 costs about 25% more (SkyPilot catalog, numbers.md); the table has no per-region prices, so the
# estimate is not raised there: it says so instead.
DEARER_REGIONS = {"us-west-1": "us-west-1 instance prices run about 25% above this table's (not applied)"}

# Fixed hourly charges per region (us-east-1/us-east-2 rates on AWS's pricing pages).
NAT_GATEWAY_HOUR = 0.045  # Amazon VPC pricing: "NAT Gateway ... $0.045 per hour" (US East example)
PUBLIC_IPV4_HOUR = 0.005  # Amazon VPC pricing: public IPv4 address, $0.005 per IP per hour (the NAT's Elastic IP)
INTERFACE_ENDPOINT_AZ_HOUR = 0.01  # AWS PrivateLink pricing: interface endpoint, per AZ per hour (us-east-1)
ALB_HOUR = 0.0225  # Elastic Load Balancing pricing: Application Load Balancer-hour (us-east-1), LCUs extra
NOT_INCLUDED = ("per-request and per-GB charges (Lambda, SQS, DynamoDB on demand, CloudWatch metrics and logs, "
                "NAT and endpoint data processing, ALB LCUs), EBS volumes, Capacity Block reservation fees")


@dataclass(frozen=True)
class PoolCost:
    instance_type: str
    on_demand_hour: float
    spot_hour: float
    min_size: int
    typical_size: int
    max_size: int
    on_demand_base: int
    on_demand_percentage_above_base: int

    def at(self, size: int) -> float:
        """Hourly cost of `size` instances: the On-Demand base first, then the configured On-Demand share."""
        base = min(size, self.on_demand_base)
        above = size - base
        on_demand_above = above * self.on_demand_percentage_above_base / 100
        return (base + on_demand_above) * self.on_demand_hour + (above - on_demand_above) * self.spot_hour


@dataclass(frozen=True)
class RegionCost:
    region: str
    cpu: PoolCost
    gpu: PoolCost
    fixed_hour: float
    fixed_items: dict[str, float]
    note: str

    @property
    def idle(self) -> float:
        return self.fixed_hour + self.cpu.at(self.cpu.min_size) + self.gpu.at(self.gpu.min_size)

    @property
    def typical(self) -> float:
        return self.fixed_hour + self.cpu.at(self.cpu.typical_size) + self.gpu.at(self.gpu.typical_size)

    @property
    def maximum(self) -> float:
        return self.fixed_hour + self.cpu.at(self.cpu.max_size) + self.gpu.at(self.gpu.max_size)


def _pool(fleet: GravitonFleetConfig | AcceleratorClusterConfig, typical: int | None, *, base: int,
          percentage: int) -> PoolCost:
    instance_type = fleet.instance_types[0]  # the first choice is what the group launches while it can
    info = offerings()[instance_type]
    profile = profile_for(instance_type, vcpus=info.vcpus, accelerators=info.accelerator_count)
    middle = (fleet.min_size + fleet.max_size + 1) // 2
    size = middle if typical is None else max(fleet.min_size, min(fleet.max_size, typical))
    return PoolCost(instance_type, profile.on_demand_per_hour, profile.spot_per_hour, fleet.min_size, size,
                    fleet.max_size, base, percentage)


def region_cost(config: AppConfig, region: RegionConfig, *, typical_cpu: int | None = None,
                typical_gpu: int | None = None) -> RegionCost:
    graviton, accelerator = region.graviton_fleet, region.accelerator_cluster
    cpu = _pool(graviton, typical_cpu, base=graviton.on_demand_base_capacity,
                percentage=graviton.on_demand_percentage_above_base)
    # GPUs are On-Demand unless `spot` is set (a reservation or block is On-Demand-priced capacity).
    gpu = _pool(accelerator, typical_gpu, base=0, percentage=0 if accelerator.spot else 100)
    network = config.network
    fixed = {
        "nat_gateways": network.nat_gateways * (NAT_GATEWAY_HOUR + PUBLIC_IPV4_HOUR),
        "interface_endpoints": (INTERFACE_ENDPOINTS * len(region.availability_zones) * INTERFACE_ENDPOINT_AZ_HOUR
                                if network.interface_endpoints else 0.0),
        "load_balancer": ALB_HOUR if config.realtime.enabled else 0.0,
    }
    return RegionCost(region.region, cpu, gpu, sum(fixed.values()), fixed, DEARER_REGIONS.get(region.region, ""))


# The network construct's interface endpoints (stacks/constructs/network.py INTERFACE_ENDPOINTS); a test keeps
# the two counts equal, so the estimate follows the template.
INTERFACE_ENDPOINTS = 7


def estimate(config: AppConfig, *, typical_cpu: int | None = None, typical_gpu: int | None = None
             ) -> list[RegionCost]:
    return [region_cost(config, r, typical_cpu=typical_cpu, typical_gpu=typical_gpu) for r in config.regions]


def as_json(costs: list[RegionCost]) -> dict[str, object]:
    return {
        "price_table": PRICE_TABLE, "not_included": NOT_INCLUDED,
        "regions": [{"region": c.region, "idle_usd_per_hour": round(c.idle, 2),
                     "typical_usd_per_hour": round(c.typical, 2), "max_usd_per_hour": round(c.maximum, 2),
                     "fixed": {k: round(v, 4) for k, v in c.fixed_items.items()},
                     "cpu": asdict(c.cpu), "gpu": asdict(c.gpu), "note": c.note} for c in costs],
        "total": {"idle_usd_per_hour": round(sum(c.idle for c in costs), 2),
                  "typical_usd_per_hour": round(sum(c.typical for c in costs), 2),
                  "max_usd_per_hour": round(sum(c.maximum for c in costs), 2)},
    }


def table(costs: list[RegionCost]) -> str:
    """A Markdown table (the README's "What it costs" is this output for the default config)."""
    lines = ["| region | idle $/h | typical $/h | at every maximum $/h | what makes the idle cost |",
             "|---|---:|---:|---:|---|"]
    for c in costs:
        idle_parts = [f"{c.cpu.min_size} x {c.cpu.instance_type}"] if c.cpu.min_size else []
        idle_parts += [f"{c.gpu.min_size} x {c.gpu.instance_type}"] if c.gpu.min_size else []
        idle_parts += [f"{name.replace('_', ' ')} ${value:.2f}" for name, value in c.fixed_items.items() if value]
        typical = f"{c.typical:,.2f} ({c.cpu.typical_size} cpu, {c.gpu.typical_size} gpu)"
        maximum = (f"{c.maximum:,.2f} ({c.cpu.max_size} x {c.cpu.instance_type}, "
                   f"{c.gpu.max_size} x {c.gpu.instance_type})")
        lines.append(f"| {c.region} | {c.idle:,.2f} | {typical} | {maximum} | {', '.join(idle_parts)} "
                     f"{('(' + c.note + ')') if c.note else ''}|")
    lines.append(f"| **total** | **{sum(c.idle for c in costs):,.2f}** | **{sum(c.typical for c in costs):,.2f}** | "
                 f"**{sum(c.maximum for c in costs):,.2f}** | |")
    lines += ["", f"Prices: {PRICE_TABLE}. Typical load: each pool halfway from its minimum to its maximum unless "
              "given (`--typical-cpu N`, `--typical-gpu N`). Not included: " + NOT_INCLUDED + "."]
    return "\n".join(lines)
