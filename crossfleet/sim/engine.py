"""The simulation engine: pools of instances serving FIFO queues, stepped one control period at a time.

Between control steps each pool is an exact multi-slot FIFO queue: an instance runs up to `streams` jobs at
once, and a job's run time depends on how many share its instance when it starts (batch effects from the
service model). At each step boundary: events fire (capacity limits, Spot interruptions, price changes),
groups launch or drain toward their desired size (boot time billed, graceful drain), and the controller under
test observes and acts. Controllers see only what the Lambda would see: queue depth, in-flight jobs, group
sizes and recent launch failures.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from crossfleet.config.offerings import offerings
from crossfleet.sim.scenario import Event, PoolScenario, Scenario
from crossfleet.sim.workload import Arrival
from crossfleet_control.core.jobs import Job
from crossfleet_control.core.policy_types import PoolSpec, PoolTelemetry
from crossfleet_control.core.service_model import InstanceProfile
from crossfleet_control.core.settings import pool_spec

LAUNCH_FAILURE_WINDOW = 900.0  # seconds of failed launches the controller is shown, as the Lambda reads them


class JobRecord:
    __slots__ = ("arrived", "attempts", "enqueued", "finish", "job", "pools_run", "region", "regions_run", "start")

    def __init__(self, job: Job, region: str, arrived: float) -> None:
        self.job = job
        self.region = region
        self.arrived = arrived
        self.enqueued = arrived
        self.start: float | None = None
        self.finish: float | None = None
        self.attempts = 0
        self.pools_run: list[str] = []
        self.regions_run: list[str] = []


class Instance:
    __slots__ = ("draining", "launched_at", "ready_at", "running", "terminated_at")

    def __init__(self, launched_at: float, boot_seconds: float) -> None:
        self.launched_at = launched_at
        self.ready_at = launched_at + boot_seconds
        self.terminated_at: float | None = None
        self.draining = False
        self.running: list[tuple[float, int, JobRecord]] = []  # heap of (finish, tiebreak, record)

    @property
    def gone(self) -> bool:
        return self.draining or self.terminated_at is not None

    def active_at(self, moment: float) -> int:
        while self.running and self.running[0][0] <= moment:
            heapq.heappop(self.running)
        return len(self.running)


@dataclass
class Pool:
    region: str
    name: str
    config: PoolScenario
    profile: InstanceProfile
    spec: PoolSpec
    instances: list[Instance] = field(default_factory=list)
    queue: deque[JobRecord] = field(default_factory=deque)
    slots: list[tuple[float, int]] = field(default_factory=list)  # heap of (free_at, instance index)
    desired: int = 0
    failed_launches: list[float] = field(default_factory=list)
    launched: list[float] = field(default_factory=list)  # successful launch times (the capacity signals' successes)
    price_factor: float = 1.0
    cost_usd: float = 0.0
    instance_seconds: float = 0.0
    _tiebreak: int = 0

    @property
    def key(self) -> str:
        return f"{self.region}/{self.name}"

    @property
    def price_per_hour(self) -> float:
        blended = (self.profile.on_demand_per_hour * (1 - self.config.spot_fraction)
                   + self.profile.spot_per_hour * self.config.spot_fraction)
        return blended * self.price_factor

    def live(self) -> list[Instance]:
        return [i for i in self.instances if not i.gone]

    def launch(self, now: float) -> None:
        self.instances.append(Instance(now, self.profile.boot_seconds))
        self.launched.append(now)
        index = len(self.instances) - 1
        for _ in range(self.profile.streams):
            heapq.heappush(self.slots, (self.instances[index].ready_at, index))

    def dispatch(self, until: float, on_start: Callable[[JobRecord], None] | None = None) -> None:
        """Start queued jobs, oldest first, on the earliest free slots before `until`."""
        queue, slots, instances, profile = self.queue, self.slots, self.instances, self.profile
        while queue and slots:
            free_at, index = slots[0]
            instance = instances[index]
            if instance.gone:
                heapq.heappop(slots)
                continue
            record = queue[0]
            start = max(free_at, record.enqueued)
            if start >= until:
                break
            heapq.heappop(slots)
            queue.popleft()
            active = instance.active_at(start) + 1
            finish = start + profile.job_seconds_at(record.job, active)
            record.start, record.finish = start, finish
            record.pools_run.append(self.name)
            record.regions_run.append(self.region)
            self._tiebreak += 1
            heapq.heappush(instance.running, (finish, self._tiebreak, record))
            heapq.heappush(slots, (finish, index))
            if on_start:
                on_start(record)

    def in_flight(self, now: float) -> int:
        return sum(i.active_at(now) for i in self.instances if i.terminated_at is None)

    def telemetry(self, now: float) -> PoolTelemetry:
        live = self.live()
        recent = sum(1 for t in self.failed_launches if t > now - LAUNCH_FAILURE_WINDOW)
        return PoolTelemetry(
            visible=len(self.queue), in_flight=self.in_flight(now),
            oldest_age_seconds=(now - self.queue[0].enqueued) if self.queue else 0.0, desired=self.desired,
            in_service=sum(1 for i in live if i.ready_at <= now), pending=sum(1 for i in live if i.ready_at > now),
            failed_launches=recent)


class Controller(Protocol):
    name: str

    def route(self, record: JobRecord) -> str | tuple[str, str]: ...  # a pool here, or (region, pool)

    def control(self, now: float, region: str, pools: dict[str, Pool], sim: Simulation) -> None: ...


@dataclass
class StepSample:
    at: float
    desired: dict[str, int]
    in_service: dict[str, int]
    queued: dict[str, int]
    cost_usd: float
    completed: int
    on_time: int


class Simulation:
    def __init__(self, scenario: Scenario, arrivals: list[Arrival], controller: Controller,
                 progress: bool = False) -> None:
        self.scenario = scenario
        self.arrivals = arrivals
        self.controller = controller
        self.progress = progress
        self.pools: dict[str, dict[str, Pool]] = {}
        table = offerings()
        for region, pools in scenario.regions.items():
            self.pools[region] = {}
            for name, config in pools.items():
                info = table[config.instance_type]
                spec = pool_spec(name, config.instance_type, vcpus=info.vcpus, accelerators=info.accelerator_count,
                                 min_size=config.min_size, max_size=config.max_size)
                pool = Pool(region=region, name=name, config=config, profile=spec.profile, spec=spec)
                for _ in range(config.start):
                    pool.launch(-pool.profile.boot_seconds)  # warm at t=0
                pool.desired = config.start
                self.pools[region][name] = pool
        self.records: list[JobRecord] = []
        self.samples: list[StepSample] = []
        self.moves = 0
        self.api_calls = 0
        self.cycles = 0
        self.requeued = 0
        self.cost_usd = 0.0
        self.energy_kwh = 0.0
        self._finishes: list[tuple[float, int, JobRecord]] = []  # for the running completion counts
        self._completed = 0
        self._on_time = 0

    # -- actions controllers use -------------------------------------------------------------------------
    def set_desired(self, pool: Pool, desired: int, now: float) -> None:
        desired = max(pool.spec.min_size, min(pool.spec.max_size, desired))
        pool.desired = desired
        live = pool.live()
        surplus = len(live) - desired
        if surplus > 0:
            # Cancel instances still booting first, then drain the least busy.
            live.sort(key=lambda i: (i.ready_at <= now, i.active_at(now)))
            for instance in live[:surplus]:
                instance.draining = True
                if instance.ready_at > now or instance.active_at(now) == 0:
                    instance.terminated_at = now
        self._reconcile(pool, now)

    def move_many(self, records: list[JobRecord], source: Pool, destination: Pool, now: float) -> None:
        """Send-then-delete, as the Lambda does: the job joins the destination's queue as a moved copy."""
        moving = {id(r) for r in records}
        source.queue = deque(r for r in source.queue if id(r) not in moving)
        for record in records:
            record.job = record.job.moved()
            record.enqueued = now
            destination.queue.append(record)
        self.moves += len(records)

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self) -> Simulation:
        period = self.scenario.control_period_seconds
        steps = math.ceil(self.scenario.horizon_seconds / period)
        index = 0
        for step in range(steps):
            t1 = (step + 1) * period
            while index < len(self.arrivals) and self.arrivals[index].at < t1:
                arrival = self.arrivals[index]
                record = JobRecord(arrival.job, arrival.region, arrival.at)
                self.records.append(record)
                destination = self.controller.route(record)
                region, name = destination if isinstance(destination, tuple) else (arrival.region, destination)
                self.pools[region][name].queue.append(record)
                index += 1
            for pools in self.pools.values():
                for pool in pools.values():
                    pool.dispatch(t1, on_start=self._started)
            self._bill_step(t1 - period, t1)
            self._events(t1)
            for region, pools in self.pools.items():
                for pool in pools.values():
                    self._finish_drains(pool, t1)
                    self._reconcile(pool, t1)
                self.controller.control(t1, region, pools, self)
            self.cycles += 1
            self._sample(t1)
            if self.progress and step % max(1, steps // 20) == 0:
                done = (step + 1) / steps
                print(f"\r  {self.controller.name:<16} [{'#' * int(done * 20):<20}] {done:4.0%}", end="",
                      file=sys.stderr, flush=True)
        if self.progress:
            print(f"\r  {self.controller.name:<16} [{'#' * 20}] 100%", file=sys.stderr)
        return self

    def _bill_step(self, t0: float, t1: float) -> None:
        for pools in self.pools.values():
            for pool in pools.values():
                for instance in pool.instances:
                    start = max(t0, instance.launched_at)
                    stop = t1 if instance.terminated_at is None else min(t1, instance.terminated_at)
                    if stop > start:
                        seconds = stop - start
                        pool.instance_seconds += seconds
                        cost = seconds * pool.price_per_hour / 3600
                        pool.cost_usd += cost
                        self.cost_usd += cost
                        self.energy_kwh += seconds * pool.profile.watts / 3.6e6

    def _finish_drains(self, pool: Pool, now: float) -> None:
        for instance in pool.instances:
            if instance.draining and instance.terminated_at is None and instance.active_at(now) == 0:
                last = max((r.finish or now for _, _, r in instance.running), default=now)
                instance.terminated_at = min(last, now)

    def _reconcile(self, pool: Pool, now: float) -> None:
        """What an Auto Scaling group does: launch toward desired, failing above a capacity limit."""
        cap = self._capacity_cap(pool, now)
        while len(pool.live()) < pool.desired:
            if cap is not None and len(pool.live()) >= cap:
                pool.failed_launches.append(now)
                break
            pool.launch(now)

    def _capacity_cap(self, pool: Pool, now: float) -> int | None:
        caps = [e.max_instances for e in self._active(pool, now, "capacity") if e.max_instances is not None]
        return min(caps) if caps else None

    def _active(self, pool: Pool, now: float, kind: str) -> list[Event]:
        return [e for e in self.scenario.events
                if e.type == kind and e.region == pool.region and e.pool == pool.name and e.start <= now < e.end]

    def _events(self, now: float) -> None:
        period = self.scenario.control_period_seconds
        for region, pools in self.pools.items():
            for pool in pools.values():
                factor = 1.0
                for event in self._active(pool, now, "price"):
                    factor *= event.factor
                pool.price_factor = factor
                for event in self.scenario.events:
                    if event.region != region or event.pool != pool.name or not now - period < event.start <= now:
                        continue
                    if event.type == "spot_interruption":
                        live = [i for i in pool.live() if i.ready_at <= now]
                        self._reclaim(pool, live[: round(len(live) * event.fraction)], now)
                    elif event.type == "capacity" and event.reclaim and event.max_instances is not None:
                        live = pool.live()
                        self._reclaim(pool, live[event.max_instances:], now)

    def _reclaim(self, pool: Pool, instances: list[Instance], now: float) -> None:
        """Instances taken away: their running jobs go back to the front of the queue (the worker's requeue)."""
        for instance in instances:
            instance.terminated_at = now
            instance.draining = True
            for finish, _, record in sorted(instance.running, key=lambda entry: entry[0], reverse=True):
                if finish > now:
                    record.start = record.finish = None
                    record.attempts += 1
                    record.enqueued = now
                    pool.queue.appendleft(record)
                    self.requeued += 1
            instance.running.clear()

    def _started(self, record: JobRecord) -> None:
        assert record.finish is not None
        heapq.heappush(self._finishes, (record.finish, id(record), record))

    def _sample(self, now: float) -> None:
        while self._finishes and self._finishes[0][0] <= now:
            finish, _, record = heapq.heappop(self._finishes)
            if record.finish == finish:  # not interrupted and restarted since
                self._completed += 1
                self._on_time += finish - record.arrived <= record.job.deadline_seconds
        completed, on_time = self._completed, self._on_time
        self.samples.append(StepSample(
            at=now,
            desired={p.key: p.desired for pools in self.pools.values() for p in pools.values()},
            in_service={p.key: sum(1 for i in p.live() if i.ready_at <= now)
                        for pools in self.pools.values() for p in pools.values()},
            queued={p.key: len(p.queue) for pools in self.pools.values() for p in pools.values()},
            cost_usd=self.cost_usd, completed=completed, on_time=on_time))
