"""The `graviton_fleet` and `accelerator_cluster` sections (top level, overridable per region): instance types
checked against the offerings table, sizes, markets and reservations.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.errors import ConfigError
from crossfleet.config.offerings import InstanceTypeInfo, offerings

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

# EC2 User Guide, "Monitor Capacity Blocks using EventBridge": the expiration warning comes 40 minutes before the
# block ends and its instances begin to terminate 10 minutes later (600 s). A block group's drain gets 480 s of
# them; the other 120 s are an estimate (not measured) for the event's delivery, the capacity-events Lambda's
# scale-in and the lifecycle completion. Trade-off: a job needing more than ~7.5 minutes to finish is requeued,
# not finished, when a block ends.
CAPACITY_BLOCK_DRAIN_SECONDS = 480

GRAVITON_KEYS = ("instance_types", "fallback_instance_types", "min_size", "max_size",
                 "on_demand_base_capacity", "on_demand_percentage_above_base", "root_volume_gib",
                 "spot_allocation_strategy", "on_demand_price_per_hour", "spot_price_per_hour")
# EC2 Auto Scaling API reference, "InstancesDistribution" (SpotAllocationStrategy): price-capacity-optimized (AWS's
# recommendation) picks the Spot pools least likely to be interrupted at the lowest price and ignores the
# overrides' order; capacity-optimized-prioritized honours the order on a best-effort basis, capacity first.
# Default price-capacity-optimized: cheaper, fewer interruptions; Graviton5-first then holds for On-Demand only
# (OnDemandAllocationStrategy prioritized). Choose capacity-optimized-prioritized where the order matters more.
SPOT_ALLOCATION_STRATEGIES = ("price-capacity-optimized", "capacity-optimized-prioritized")
ACCELERATOR_KEYS = ("kind", "instance_types", "fallback_instance_types", "min_size", "max_size", "placement_group",
                    "efa", "spot", "capacity_reservation_id", "capacity_block_id", "root_volume_gib",
                    "availability_zone", "warm_pool", "on_demand_price_per_hour",
                    "spot_price_per_hour")
WARM_POOL_KEYS = ("size", "max_prepared", "state", "instance_type")
# Warm pool states crossfleet deploys. AWS offers Stopped, Running and Hibernated (EC2 Auto Scaling API reference,
# "WarmPoolConfiguration"); Running costs as much as an in-service instance (raise min_size instead), and
# Hibernated needs a type with less than 150 GB of RAM in a hibernation-supported family (EC2 User Guide,
# "Hibernation prerequisites"), which the GPU types crossfleet sizes for (p5, g6e) are not.
WARM_POOL_STATES = ("Stopped",)


@dataclass(frozen=True)
class WarmPoolConfig:
    """The GPU pool's warm lane: an On-Demand, one-type Auto Scaling group beside the main GPU group, carrying an
    AWS::AutoScaling::WarmPool of stopped instances whose root volumes already hold the image and the weights.

    A separate group because AWS refuses a warm pool on a group with a mixed instances policy or one that launches
    Spot Instances (EC2 Auto Scaling User Guide, "Warm pools for Amazon EC2 Auto Scaling", Limitations; API
    reference, PutWarmPool), and the main group keeps its mixed-instances policy and its Spot option.
    """

    size: int  # WarmPool MinSize: stopped instances kept prepared however busy the lane is
    max_prepared: int  # the lane's MaxSize and the pool's MaxGroupPreparedCapacity (in service + warm)
    instance_type: str  # the lane's one type (a warm pool's group has no mixed instances policy)
    state: str = WARM_POOL_STATES[0]


# Price overrides: $/hour for one instance of the pool's first type, for the rebalancer's placement by marginal
# cost (a negotiated rate, a Savings Plan's effective rate, the Spot price you see). Unset: the pinned price table
# (lambda/crossfleet_control/core/data/instance_profiles.json). The bound is far above any listed EC2 price
# (p5en.48xlarge is about $63/hour), so a typo in cents or an extra digit is caught.
MAX_PRICE_PER_HOUR = 1000.0


@dataclass(frozen=True)
class GravitonFleetConfig:
    instance_types: tuple[str, ...]
    fallback_instance_types: tuple[str, ...]
    min_size: int
    max_size: int
    on_demand_base_capacity: int
    on_demand_percentage_above_base: int
    root_volume_gib: int
    spot_allocation_strategy: str = SPOT_ALLOCATION_STRATEGIES[0]
    on_demand_price_per_hour: float | None = None
    spot_price_per_hour: float | None = None

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
    availability_zone: str | None = None
    warm_pool: WarmPoolConfig | None = None
    on_demand_price_per_hour: float | None = None
    spot_price_per_hour: float | None = None
    # Derived, not a key: the AZs the group launches in. One when pinned (placement group, reservation, block or
    # availability_zone), else every configured AZ where the pinned table offers all of the group's types.
    zones: tuple[str, ...] = field(default=(), metadata={"derived": True})

    @property
    def all_instance_types(self) -> tuple[str, ...]:
        return self.instance_types + self.fallback_instance_types

    @property
    def ami_parameter(self) -> str:
        return ACCELERATOR_AMI_PARAMETERS[self.kind]

    @property
    def reservation_id(self) -> str | None:
        return self.capacity_block_id or self.capacity_reservation_id

    def drain_seconds(self, configured: int, *, load_balanced: bool = False) -> int:
        """The scale-in hook's timeout: the worker's configured drain, capped inside a Capacity Block's window.

        Behind the real-time endpoint Auto Scaling first waits for the target's deregistration, then the hook, so
        in a block the two share the window (half each)."""
        if not self.capacity_block_id:
            return configured
        budget = CAPACITY_BLOCK_DRAIN_SECONDS // 2 if load_balanced else CAPACITY_BLOCK_DRAIN_SECONDS
        return min(configured, budget)

    def stream_deregistration_seconds(self, stream_seconds: int) -> int:
        """The GPU target group's deregistration delay: as long as a stream may last, or in a block its half of
        the window (a longer stream is cut when the block ends anyway)."""
        return min(stream_seconds, CAPACITY_BLOCK_DRAIN_SECONDS // 2) if self.capacity_block_id else stream_seconds

    @property
    def group_instance_types(self) -> tuple[str, ...]:
        """The types the group can launch: a reservation or block pins the first one."""
        return self.instance_types[:1] if self.reservation_id else self.all_instance_types

    @property
    def efa_interfaces(self) -> int:
        """EFA interfaces in the launch template: one per network card of the group's smallest EFA type.

        One launch template serves every type of the group, and a launch asking for more interfaces than a type
        has cards fails, so the count is the minimum over the group's types (DescribeInstanceTypes EfaInfo
        MaximumEfaInterfaces). Trade-off: with p5en (16) as a fallback, p5.48xlarge (32) runs on half its EFA
        bandwidth; list one type to get all of its cards."""
        if not self.efa:
            return 0
        table = offerings()
        return min(table[name].efa_max_interfaces for name in self.group_instance_types)


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
            # A typo (g6e.xlarg) deserves the name it was meant to be, not just a list of examples.
            close = difflib.get_close_matches(str(name), list(table), n=1, cutoff=0.8)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(where, name,
                              f"{hint}an instance type in crossfleet's offerings table ({_examples(want)})")
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


def parse_graviton_fleet(s: Mapping[str, Any], path: str, region: str) -> GravitonFleetConfig:
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
        spot_allocation_strategy=p.choice(s, path, "spot_allocation_strategy", SPOT_ALLOCATION_STRATEGIES[0],
                                          SPOT_ALLOCATION_STRATEGIES),
        on_demand_price_per_hour=_price(s, path, "on_demand_price_per_hour"),
        spot_price_per_hour=_price(s, path, "spot_price_per_hour"),
    )


def _price(s: Mapping[str, Any], path: str, key: str) -> float | None:
    """An optional $/hour override: a number above 0 and at most MAX_PRICE_PER_HOUR, or null."""
    value = s.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_PRICE_PER_HOUR:
        raise ConfigError(p.join(path, key), value,
                          f"US dollars per instance-hour above 0 and at most {MAX_PRICE_PER_HOUR:.0f}, or null "
                          "(the pinned price table)")
    return float(value)


def parse_accelerator_cluster(s: Mapping[str, Any], path: str, region: str,
                              region_zones: tuple[str, ...] = ()) -> AcceleratorClusterConfig:
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
    efa = p.boolean(s, path, "efa", False)
    if efa:
        _check_efa(types, fallbacks, path, kind)
    group_types = types + fallbacks
    placement_group = _placement_group(s, path, efa=efa, block=block, group_types=group_types)
    zones = _group_zones(s, path, region, region_zones or (f"{region}a",), types, fallbacks,
                         pinned=placement_group or bool(reservation or block),
                         reservation=bool(reservation or block))
    warm_pool = _warm_pool(s.get("warm_pool"), p.join(path, "warm_pool"), types=group_types, max_size=max_size,
                           reservation=reservation, block=block)
    return AcceleratorClusterConfig(
        kind=kind, instance_types=types, fallback_instance_types=fallbacks, min_size=min_size,
        max_size=max_size, placement_group=placement_group,
        efa=efa, spot=spot, capacity_reservation_id=reservation,
        capacity_block_id=block,
        root_volume_gib=p.integer(s, path, "root_volume_gib", 200, minimum=75, maximum=16384),
        availability_zone=s.get("availability_zone"), warm_pool=warm_pool, zones=zones,
        on_demand_price_per_hour=_price(s, path, "on_demand_price_per_hour"),
        spot_price_per_hour=_price(s, path, "spot_price_per_hour"),
    )


def _warm_pool(raw: Any, path: str, *, types: tuple[str, ...], max_size: int, reservation: str | None,
               block: str | None) -> WarmPoolConfig | None:
    """The optional warm lane, refused in one line wherever AWS (or the economics of a reservation) would.

    The lane itself is always On-Demand with one type and no mixed instances policy, so the main group's `spot`
    and fallbacks do not touch it. What cannot work: a Capacity Block (its launch template's market type is
    capacity-block and its instances end with the block), an On-Demand Capacity Reservation (paid whether its
    slots run or not, and a stopped instance gives its slot back: keep them running with min_size instead).
    """
    if raw is None:
        return None
    s = p.section(raw, path, WARM_POOL_KEYS)
    if block:
        raise ConfigError(path, dict(s), "null with a capacity_block_id (a block's instances are launched with "
                                         "market type capacity-block and end with the block; run them with "
                                         "min_size instead)")
    if reservation:
        raise ConfigError(path, dict(s), "null with a capacity_reservation_id (the reservation is paid whether "
                                         "its instances run or not; run them with min_size instead)")
    size = p.integer(s, path, "size", 1, minimum=1, maximum=1000)
    max_prepared = p.integer(s, path, "max_prepared", size, minimum=1, maximum=1000)
    if max_prepared < size:
        raise ConfigError(p.join(path, "max_prepared"), max_prepared,
                          f"at least warm_pool.size ({size}): the lane's in-service plus warm instances")
    if max_prepared > max_size:
        raise ConfigError(p.join(path, "max_prepared"), max_prepared,
                          f"at most accelerator_cluster.max_size ({max_size}): the lane is part of the GPU pool")
    state = s.get("state", WARM_POOL_STATES[0])
    if state != WARM_POOL_STATES[0]:
        raise ConfigError(p.join(path, "state"), state,
                          "Stopped (Running costs as much as an in-service instance: raise min_size instead; "
                          "Hibernated needs a hibernation-supported type with less than 150 GB of RAM)")
    instance_type = s.get("instance_type", types[0])
    if instance_type not in types:
        raise ConfigError(p.join(path, "instance_type"), instance_type,
                          f"one of the group's types ({', '.join(types)}): the lane launches one of them only")
    return WarmPoolConfig(size=size, max_prepared=max_prepared, instance_type=instance_type, state=state)


def _placement_group(s: Mapping[str, Any], path: str, *, efa: bool, block: str | None,
                     group_types: tuple[str, ...]) -> bool:
    """A cluster placement group only where AWS's rules leave it useful.

    Default: on for a one-type EFA group (EFA's low-latency traffic is what a cluster placement group is for),
    off otherwise: crossfleet's jobs are single-instance, and a cluster placement group lives in one AZ and raises
    the chance of insufficient-capacity errors (EC2 User Guide, "Placement strategies for your placement groups",
    cluster). Trade-off: off spreads the group over AZs and types for obtainability; on packs a multi-node job
    onto one network spine.
    """
    where = p.join(path, "placement_group")
    wanted = p.boolean(s, path, "placement_group", efa and not block and len(group_types) == 1)
    if wanted and block:
        # EC2 API reference, "CapacityBlock": a block's instances are placed together in an EC2 UltraCluster.
        raise ConfigError(where, wanted, "false with a capacity block (EC2 places a block's instances together "
                                         "in an UltraCluster)")
    if wanted and len(group_types) > 1:
        # EC2 User Guide, "Placement strategies" (cluster): AWS recommends one instance type per cluster
        # placement group; a mixed group breaks that on every fallback launch.
        raise ConfigError(where, wanted, "false unless the group has one instance type (AWS recommends one type "
                                         f"per cluster placement group; this group has {', '.join(group_types)})")
    return wanted


def _group_zones(s: Mapping[str, Any], path: str, region: str, region_zones: tuple[str, ...],
                 types: tuple[str, ...], fallbacks: tuple[str, ...], *, pinned: bool,
                 reservation: bool) -> tuple[str, ...]:
    """The group's AZs, each offering every one of its types in the pinned table.

    A capacity reservation or block launches only in its own AZ (EC2 User Guide, "Launch instances using Capacity
    Blocks": "can't launch in a subnet in a different Availability Zone"), so its AZ must be named; a placement
    group is one AZ (the named one, else the first configured).
    """
    where = p.join(path, "availability_zone")
    named = s.get("availability_zone")
    if named is not None and named not in region_zones:
        raise ConfigError(where, named, f"one of the region's availability_zones ({', '.join(region_zones)})")
    if reservation and named is None:
        raise ConfigError(where, named, "the reservation's availability zone in your account, one of "
                                        f"{', '.join(region_zones)} (a reservation or block launches only there)")
    table = offerings()
    if pinned or named is not None:
        zone = named or region_zones[0]
        for key, names in (("instance_types", types), ("fallback_instance_types", fallbacks)):
            for i, name in enumerate(names):
                offered = table[name].zones_in(region)
                if offered and zone not in offered:
                    raise ConfigError(p.join(p.join(path, key), i), name,
                                      f"a type offered in the group's zone {zone} (the pinned table offers {name} "
                                      f"in {', '.join(offered)})")
        return (zone,)
    # A type with no per-AZ data in the table counts as offered everywhere (nothing to check it against).
    zones = tuple(z for z in region_zones
                  if all(not table[t].zones_in(region) or z in table[t].zones_in(region) for t in types + fallbacks))
    if not zones:
        raise ConfigError(p.join(path, "instance_types"), list(types + fallbacks),
                          f"types offered together in one of {', '.join(region_zones)} (per the pinned table)")
    return zones


def _check_efa(types: tuple[str, ...], fallbacks: tuple[str, ...], path: str, kind: str) -> None:
    """EFA only on types that have it: the EC2 User Guide's "Supported instance types" for EFA (inf2, for one,
    has none), read from DescribeInstanceTypes NetworkInfo.EfaSupported in the offerings table."""
    table = offerings()
    for key, names in (("instance_types", types), ("fallback_instance_types", fallbacks)):
        for i, name in enumerate(names):
            if table[name].efa_max_interfaces == 0:
                # Name the cluster kind's example types that do have EFA, so the fix is in the message.
                with_efa = [t for t in _examples(kind).split(" such as ")[1].split(", ")
                            if t in table and table[t].efa_max_interfaces > 0]
                raise ConfigError(p.join(p.join(path, key), i), name,
                                  f"a type with EFA while efa is true ({name} has no EFA; with EFA: "
                                  f"{', '.join(with_efa)})")


def _no_overlap(types: tuple[str, ...], fallbacks: tuple[str, ...], path: str) -> None:
    for i, name in enumerate(fallbacks):
        if name in types:
            raise ConfigError(p.join(p.join(path, "fallback_instance_types"), i), name,
                              "a type not already in instance_types")
