"""The rebalancer policy's inputs and outputs: plain frozen dataclasses, no AWS types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crossfleet_control.core.capacity_health import PoolHealth, RegionSummary
from crossfleet_control.core.jobs import Job
from crossfleet_control.core.service_model import InstanceProfile

TELEMETRY_FIELDS = ("visible", "in_flight", "desired", "in_service")


@dataclass(frozen=True)
class PoolTelemetry:
    """What the controller could read about one pool this cycle. None means unknown, never zero."""

    visible: int | None
    in_flight: int | None
    oldest_age_seconds: float | None
    desired: int | None
    in_service: int | None
    pending: int | None = 0
    failed_launches: int | None = 0  # unsuccessful launch activities in the recent window
    launches: int | None = 0  # successful launch activities in the recent window (the group's own replacements too)
    # Jobs sent to the pool's queue in its busiest recent minute (CloudWatch NumberOfMessagesSent; None: unknown).
    # Bursts arrive and drain between two cycles, so the queue seen at a cycle misses them; this does not.
    sent_recently: int | None = None

    def missing(self) -> tuple[str, ...]:
        return tuple(name for name in TELEMETRY_FIELDS if getattr(self, name) is None)


@dataclass(frozen=True)
class PoolSpec:
    """Static facts about a pool from the deployment's config."""

    name: str
    min_size: int
    max_size: int
    profile: InstanceProfile
    # Mean wall-clock seconds of a job on this pool's primary type, for sizing from queue counts alone.
    mean_job_seconds: float
    # Every type the group may launch (its capacity health is the health of these).
    instance_types: tuple[str, ...] = ()
    # The configured On-Demand share above base: below 100 the pool uses Spot, and falls back when Spot is short.
    on_demand_percentage: int = 100
    # The deployment's prices for this pool's primary type ($/hour per instance; None: the pinned price table's).
    on_demand_price_per_hour: float | None = None
    spot_price_per_hour: float | None = None


@dataclass(frozen=True)
class PolicySettings:
    target_wait_seconds: float = 120.0
    # Share of a fleet's slots the running jobs should fill, the rest kept as room for arrivals; 0 (the default)
    # sizes on the queue and the running jobs alone and leaves room for arrivals to the forecast floor.
    target_utilization: float = 0.0
    scale_in_delay_seconds: float = 600.0
    max_scale_up_step: int = 10
    max_scale_in_step: int = 2
    # Scale-up steps proportional to the gap: a pool short of `gap` instances adds at least this share of the gap
    # in one cycle (1: all of it), and never less than `max_scale_up_step` when the gap is that large.
    scale_up_gain: float = 1.0
    # Warm start (`forecast`): the floor is `forecast_share` of the largest want seen in the last
    # `forecast_window_seconds` (0 switches it off).
    forecast_window_seconds: float = 1800.0
    forecast_share: float = 1.0
    # GPU pools also feed the forecast the instances that would work through the busiest recent minute's jobs
    # within this many seconds (`policy.burst_want`; 0: off). 40 s leaves a third of a 60 s inference deadline
    # for the job itself.
    forecast_burst_seconds: float = 40.0
    move_budget: int = 200
    # A job moved this often stays where it is: bounds ping-pong between pools.
    max_moves_per_job: int = 2
    # Another region's capacity summary older than this is unknown (and unknown is never a failover target).
    stale_peer_seconds: float = 300.0
    # Runaway guard (failure case 18): a pool whose group launched this many instances in the recent window
    # (`PoolTelemetry.launches`) while fewer are in service or pending than it asked for is launching instances
    # that never become usable: it is held at what it has for `runaway_hold_seconds`.
    max_launches_per_window: int = 10
    runaway_hold_seconds: float = 1800.0


@dataclass(frozen=True)
class Override:
    """An operator's instruction for one pool, read from the state table each cycle."""

    frozen: bool = False
    pinned_desired: int | None = None
    note: str = ""


@dataclass(frozen=True)
class PoolMemory:
    # When the wanted size first fell below the current one (the scale-in delay runs from here).
    low_since: float | None = None
    # The runaway guard holds the pool until then (failure case 18).
    runaway_until: float | None = None
    # The recent-peak envelope of this pool's want (`forecast`): (seconds, instances) pairs, newest last.
    peaks: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class ServingMemory:
    """The real-time split's hysteresis: the cheaper split it has been waiting on, and for how many cycles."""

    pending_cost_target: int | None = None
    calm: int = 0
    # The endpoint's recent request rates, (time, short req/s, long req/s) per cycle within the forecast window:
    # the recent-peak envelope the GPU pool is held at (core/serving.py).
    recent: tuple[tuple[float, float, float], ...] = ()


@dataclass(frozen=True)
class ControllerMemory:
    pools: Mapping[str, PoolMemory] = field(default_factory=dict)
    serving: ServingMemory = field(default_factory=ServingMemory)

    def of(self, pool: str) -> PoolMemory:
        return self.pools.get(pool, PoolMemory())


@dataclass(frozen=True)
class Observation:
    now: float
    pools: Mapping[str, PoolTelemetry]
    overrides: Mapping[str, Override] = field(default_factory=dict)
    # Capacity health of this region's pools (from their breakers); absent means healthy.
    health: Mapping[str, PoolHealth] = field(default_factory=dict)
    # Other configured regions' GPU summaries, for failover; `configured_regions` bounds where work may go.
    peers: Mapping[str, RegionSummary] = field(default_factory=dict)
    region: str = ""
    configured_regions: tuple[str, ...] = ()
    # The On-Demand share each group runs with now (None: unknown or not a mixed-instances group).
    on_demand_percentage: Mapping[str, int | None] = field(default_factory=dict)
    # Instances each pool needs for the real-time endpoint's share of requests, on top of its queued work.
    serving_instances: Mapping[str, int] = field(default_factory=dict)
    # Each pool's current effective $/hour per instance when the caller knows it (the simulator's prices over
    # time); absent: the pool's configured prices at its On-Demand share (`marginal_cost.pool_price_per_hour`).
    prices: Mapping[str, float] = field(default_factory=dict)
    # Each Spot pool's current Spot price, $/hour per instance of its primary type (DescribeSpotPriceHistory;
    # the simulator's prices over time); absent: unknown, and the market choice ignores price.
    spot_prices: Mapping[str, float] = field(default_factory=dict)

    def override(self, pool: str) -> Override:
        return self.overrides.get(pool, Override())

    def health_of(self, pool: str) -> PoolHealth:
        return self.health.get(pool, PoolHealth())


@dataclass(frozen=True)
class QueuedJob:
    """A job sampled from a pool's queue as a move candidate."""

    pool: str
    job: Job


@dataclass(frozen=True)
class SampleRequest:
    pool: str
    count: int
    reason: str


@dataclass(frozen=True)
class PoolDecision:
    pool: str
    current: int | None
    desired: int | None  # None: leave the group alone
    wanted: int | None  # what the backlog asks for, before step limits and delays
    reason: str
    held: bool = False
    runaway: bool = False  # held by the runaway guard: instances launch but do not become usable

    @property
    def changes_capacity(self) -> bool:
        return self.desired is not None and self.current is not None and self.desired != self.current


@dataclass(frozen=True)
class Move:
    job_id: str
    source: str
    destination: str
    reason: str  # a short code, used as a metric dimension
    detail: str  # the numbers behind it, for the decision log
    destination_region: str | None = None  # set for a failover to another configured region's pool


@dataclass(frozen=True)
class MarketDecision:
    """Spot -> On-Demand fallback for one pool: the On-Demand share above base it should run with."""

    pool: str
    current: int | None
    desired: int
    reason: str

    @property
    def changes(self) -> bool:
        return self.current is not None and self.current != self.desired


@dataclass(frozen=True)
class Decision:
    pools: Mapping[str, PoolDecision]
    moves: tuple[Move, ...]
    memory: ControllerMemory
    notes: tuple[str, ...] = ()
    markets: Mapping[str, MarketDecision] = field(default_factory=dict)
