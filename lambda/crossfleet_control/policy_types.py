"""The rebalancer policy's inputs and outputs: plain frozen dataclasses, no AWS types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crossfleet_control.jobs import Job
from crossfleet_control.service_model import InstanceProfile

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


@dataclass(frozen=True)
class PolicySettings:
    target_wait_seconds: float = 120.0
    # Share of a fleet's slots the running jobs should fill: the rest is room for arrivals until the next cycle.
    target_utilization: float = 0.85
    scale_in_delay_seconds: float = 600.0
    max_scale_up_step: int = 10
    max_scale_in_step: int = 2
    move_budget: int = 200
    # A job moved this often stays where it is: bounds ping-pong between pools.
    max_moves_per_job: int = 2


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


@dataclass(frozen=True)
class ControllerMemory:
    pools: Mapping[str, PoolMemory] = field(default_factory=dict)

    def of(self, pool: str) -> PoolMemory:
        return self.pools.get(pool, PoolMemory())


@dataclass(frozen=True)
class Observation:
    now: float
    pools: Mapping[str, PoolTelemetry]
    overrides: Mapping[str, Override] = field(default_factory=dict)

    def override(self, pool: str) -> Override:
        return self.overrides.get(pool, Override())


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


@dataclass(frozen=True)
class Decision:
    pools: Mapping[str, PoolDecision]
    moves: tuple[Move, ...]
    memory: ControllerMemory
    notes: tuple[str, ...] = ()
