"""The simulation engine: pools of instances serving FIFO queues, stepped one control period at a time.

Between control steps each pool is an exact event-driven FIFO queue served by continuous batching: an
instance runs up to `streams` jobs at once and shares its capacity among them, so a job slows down the moment
another joins its instance and speeds up when one leaves (see `Rates`); no instance ever serves above its
cited capacity. At each step boundary: events fire (capacity limits, Spot interruptions, price changes),
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
from crossfleet.sim.stats import no_cyclic_gc
from crossfleet.sim.workload import Arrival
from crossfleet_control.core.jobs import Job
from crossfleet_control.core.policy_types import PoolSpec, PoolTelemetry
from crossfleet_control.core.service_model import InstanceProfile
from crossfleet_control.core.settings import pool_spec

MIN_BILLED_SECONDS = 60.0
# The rebalancer reads messages sent to each queue (NumberOfMessagesSent) from CloudWatch, where SQS publishes
# one-minute datapoints: the newest minute is not published yet when the controller runs [A: Available CloudWatch
# metrics for Amazon SQS]. The simulator counts sends per wall-clock minute, whatever the control period, and
# shows the controller the busiest of the 5 complete minutes before the newest one.
SENT_MINUTE_SECONDS = 60.0
SENT_LAG_MINUTES = 1
SENT_WINDOW_MINUTES = 5
LAUNCH_FAILURE_WINDOW = 900.0  # seconds of failed launches the controller is shown, as the Lambda reads them


class JobRecord:
    __slots__ = ("arrived", "attempts", "enqueued", "failed", "finish", "first_token", "host", "job", "pools_run",
                 "region", "regions_run", "start")

    def __init__(self, job: Job, region: str, arrived: float) -> None:
        self.job = job
        self.region = region
        self.arrived = arrived
        self.enqueued = arrived
        self.start: float | None = None
        self.first_token: float | None = None  # prompt processed: the first output token (TTFT)
        self.finish: float | None = None
        self.failed = False  # a real-time request not started within its timeout
        self.host: tuple[str, int] | None = None  # (pool key, instance index) it last ran on
        self.attempts = 0
        self.pools_run: list[str] = []
        self.regions_run: list[str] = []


class Rates:
    """One pool's service under continuous batching (see crossfleet/sim/README in docs/simulator.md).

    With k jobs on an instance of R model replicas, each replica batches k/R of them. Every job gets an equal
    share of its replica: a prefilling job processes prompt tokens at prefill/R/(k/R) tokens/s, a decoding job
    emits tokens at the per-stream decode rate for batch k/R, which falls from the cited batch-1 rate to the
    cited full-batch rate as a power law. So the instance's total throughput never exceeds its cited capacity
    (prefill: the whole instance's prefill rate; decode: its full-batch rate), and a job that joins slows the
    others down at once. Jobs with explicit seconds (agent steps, fine-tunes) hold one stream for their time.
    """

    __slots__ = ("batch1", "beta", "prefill", "replicas", "streams", "table")

    def __init__(self, profile: InstanceProfile) -> None:
        self.replicas = profile.replicas
        self.streams = profile.streams
        self.prefill = profile.prefill_tokens_per_second / profile.replicas
        per_replica = profile.streams / profile.replicas
        full = profile.decode_tokens_per_second / profile.streams
        self.batch1 = profile.decode_tokens_per_second_batch1 or full
        # Computed once per pool (the old engine took this log for every job it started).
        self.beta = (math.log(self.batch1 / full) / math.log(per_replica)
                     if per_replica > 1 and self.batch1 > full else 0.0)
        # k never exceeds `streams`, so every rate the instance can run at is tabled once per pool (the power
        # law was evaluated for every event: millions of pow calls at 40x). Same expression, same floats.
        self.table = [self._speeds(k) for k in range(self.streams + 1)]

    def _speeds(self, k: int) -> tuple[float, float]:
        batch = max(1.0, k / self.replicas)
        return self.prefill / batch, self.batch1 * batch ** -self.beta

    def speeds(self, k: int) -> tuple[float, float]:
        """(prompt tokens/s, output tokens/s) of each job while k jobs share the instance."""
        return self.table[k] if k <= self.streams else self._speeds(k)


_EPS = 1e-7  # tokens: float slack when a phase's virtual finish is reached


class Instance:
    """One instance serving its jobs by continuous batching, tracked with two virtual clocks.

    `vp` counts prompt tokens each prefilling job has received since launch and `vd` output tokens each
    decoding job has received: every job in a phase gets the same rate, so a job's phase ends when the clock
    passes the value it joined at plus its tokens. Between events the job count is constant and both clocks
    advance linearly, so the simulation is exact (no time steps).
    """

    __slots__ = ("decode", "draining", "fixed", "index", "k", "last", "launched_at", "prefill", "rates",
                 "ready_at", "spot_share", "terminated_at", "vd", "version", "vp")

    def __init__(self, index: int, launched_at: float, boot_seconds: float, rates: Rates) -> None:
        self.index = index
        self.launched_at = launched_at
        self.ready_at = launched_at + boot_seconds
        self.terminated_at: float | None = None
        self.draining = False
        self.rates = rates
        self.last = self.ready_at
        self.vp = 0.0
        self.spot_share = 0.0  # billed at the Spot price for this share of its hours (its market at launch)
        self.vd = 0.0
        self.k = 0
        self.version = 0
        self.prefill: list[tuple[float, int, JobRecord]] = []  # heap of (vp at prompt end, tiebreak, record)
        self.decode: list[tuple[float, int, JobRecord]] = []  # heap of (vd at last token, tiebreak, record)
        self.fixed: list[tuple[float, int, JobRecord]] = []  # heap of (finish time, tiebreak, record)

    @property
    def gone(self) -> bool:
        return self.draining or self.terminated_at is not None

    def active_at(self, moment: float) -> int:
        return self.k

    def advance(self, now: float) -> None:
        if now > self.last:
            if self.k:
                prefill, decode = self.rates.table[self.k]
                self.vp += (now - self.last) * prefill
                self.vd += (now - self.last) * decode
            self.last = now

    def next_event(self) -> float:
        # Called for every start and every event (over a million times at 40x): plain comparisons instead of
        # min()/max() calls, the same arithmetic and so the same floats.
        if not self.k:
            return math.inf
        prefill, decode = self.rates.table[self.k]
        t = self.fixed[0][0] if self.fixed else math.inf
        if self.prefill:
            left = self.prefill[0][0] - self.vp
            at = self.last + (left if left > 0.0 else 0.0) / prefill
            if at < t:
                t = at
        if self.decode:
            left = self.decode[0][0] - self.vd
            at = self.last + (left if left > 0.0 else 0.0) / decode
            if at < t:
                t = at
        return t

    def running(self) -> list[JobRecord]:
        return [entry[2] for heap in (self.prefill, self.decode, self.fixed) for entry in heap]


@dataclass
class Pool:
    region: str
    name: str
    config: PoolScenario
    profile: InstanceProfile
    spec: PoolSpec
    instances: list[Instance] = field(default_factory=list)
    queue: deque[JobRecord] = field(default_factory=deque)
    desired: int = 0
    failed_launches: list[float] = field(default_factory=list)
    launched: list[float] = field(default_factory=list)  # successful launch times (the capacity signals' successes)
    price_factor: float = 1.0
    # The On-Demand share above base the controller set (crossfleet's market choice); None: as configured.
    # Running instances keep the market they launched in and only new launches follow it (AWS replaces them
    # gradually, new before old: the simulator understates what a switch saves and the launches it causes).
    market_on_demand: int | None = None
    # Price events on one market only (a Spot price spike leaves On-Demand alone): multiply that market's price.
    spot_price_factor: float = 1.0
    on_demand_price_factor: float = 1.0
    cost_usd: float = 0.0
    instance_seconds: float = 0.0
    request_timeout_seconds: float | None = None  # real-time: a request not started by then has failed
    clock: float = 0.0  # the pool has been played forward to here
    _tiebreak: int = 0
    # The warm lane (config.warm_pool): when each stopped, prepared instance is ready to start (a replacement is
    # prepared while the one taken serves), the lane's live instances, and the preparation runs not yet billed.
    warm_stock: list[float] = field(default_factory=list)
    lane: set[int] = field(default_factory=set)
    warm_starts: int = 0
    unbilled_preparation_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.rates = Rates(self.profile)
        self.events: list[tuple[float, int, int]] = []  # heap of (time, instance index, instance version)
        self.free: list[tuple[int, int]] = []  # heap of (jobs running, instance index); stale entries skipped
        self.billing: list[Instance] = []  # instances still billed
        self.on_finish: Callable[[JobRecord], None] | None = None
        self.timed_out: list[JobRecord] = []
        # Jobs sent to this pool's queue (routed, moved or failed over) per minute, by minute index.
        self.sent_minutes: dict[int, int] = {}

    def count_sent(self, at: float, jobs: int = 1) -> None:
        minute = int(at // SENT_MINUTE_SECONDS)
        self.sent_minutes[minute] = self.sent_minutes.get(minute, 0) + jobs

    def sent_recently(self, now: float) -> int:
        """The busiest published minute: minutes before the newest complete one, within the window."""
        newest_published = int(now // SENT_MINUTE_SECONDS) - 1 - SENT_LAG_MINUTES
        oldest = newest_published - SENT_WINDOW_MINUTES + 1
        for minute in [m for m in self.sent_minutes if m < oldest]:
            del self.sent_minutes[minute]
        return max((n for m, n in self.sent_minutes.items() if m <= newest_published), default=0)

    @property
    def key(self) -> str:
        return f"{self.region}/{self.name}"

    @property
    def price_per_hour(self) -> float:
        """What a new launch costs per hour now (its market share at today's prices)."""
        return self.price_at(self.spot_share())

    def spot_share(self) -> float:
        if self.market_on_demand is None:
            return self.config.spot_fraction
        return min(self.config.spot_fraction, (100 - self.market_on_demand) / 100)

    def price_at(self, spot_share: float) -> float:
        blended = (self.profile.on_demand_per_hour * self.on_demand_price_factor * (1 - spot_share)
                   + self.profile.spot_per_hour * self.spot_price_factor * spot_share)
        return blended * self.price_factor

    def live(self) -> list[Instance]:
        return [i for i in self.billing if not i.gone]

    def launch(self, now: float) -> None:
        boot = self.profile.boot_seconds
        index = len(self.instances)
        if self._warm_start_ready(now):
            # A stopped instance of the warm pool starts; Auto Scaling prepares a replacement into the pool (a
            # first boot, billed as a running instance) so the pool keeps its size (MinSize).
            warm = self.config.warm_pool
            assert warm is not None
            self.warm_stock.remove(min(self.warm_stock))
            self.warm_stock.append(now + boot)
            self.unbilled_preparation_seconds += max(boot, MIN_BILLED_SECONDS)
            self.lane.add(index)
            self.warm_starts += 1
            boot = warm.start_seconds
        instance = Instance(index, now, boot, self.rates)
        instance.spot_share = 0.0 if index in self.lane else self.spot_share()
        self.instances.append(instance)
        self.billing.append(instance)
        self.launched.append(now)
        heapq.heappush(self.events, (instance.ready_at, instance.index, instance.version))

    def _warm_start_ready(self, now: float) -> bool:
        """The rebalancer fills the lane first: a launch is a warm start while the lane has room and the pool
        has a prepared instance (crossfleet_control.aws.fleets.WarmLane)."""
        warm = self.config.warm_pool
        if warm is None or not self.warm_stock or min(self.warm_stock) > now:
            return False
        in_lane = sum(1 for i in self.lane if not self.instances[i].gone)
        return in_lane < warm.max_prepared

    # -- continuous batching ------------------------------------------------------------------------------
    def _reschedule(self, instance: Instance) -> None:
        instance.version += 1
        at = instance.next_event()
        if at < math.inf:
            heapq.heappush(self.events, (at, instance.index, instance.version))
        if not instance.draining and instance.terminated_at is None and instance.k < self.rates.streams:
            heapq.heappush(self.free, (instance.k, instance.index))

    def _free_instance(self, now: float) -> Instance | None:
        """The least busy instance in service with a free stream (a worker long-polling the queue)."""
        free, instances = self.free, self.instances
        while free:
            k, index = free[0]
            instance = instances[index]
            if instance.gone or instance.k != k or k >= self.rates.streams or instance.ready_at > now:
                heapq.heappop(free)
                continue
            return instance
        return None

    def _start(self, record: JobRecord, instance: Instance, now: float) -> None:
        instance.advance(now)
        job = record.job
        record.start = now
        record.first_token = None
        record.host = (self.key, instance.index)
        record.pools_run.append(self.name)
        record.regions_run.append(self.region)
        self._tiebreak += 1
        explicit = job.gpu_seconds if self.profile.is_accelerated else job.cpu_seconds
        if explicit is not None:
            heapq.heappush(instance.fixed, (now + explicit, self._tiebreak, record))
        elif job.input_tokens > 0:
            heapq.heappush(instance.prefill, (instance.vp + job.input_tokens, self._tiebreak, record))
        else:
            record.first_token = now
            heapq.heappush(instance.decode, (instance.vd + job.output_tokens, self._tiebreak, record))
        instance.k += 1
        self._reschedule(instance)

    def _complete(self, record: JobRecord, now: float) -> None:
        record.finish = now
        if record.first_token is None:
            record.first_token = now
        if self.on_finish is not None:
            self.on_finish(record)

    def _event(self, instance: Instance, now: float) -> None:
        instance.advance(now)
        done = 0
        while instance.fixed and instance.fixed[0][0] <= now + 1e-9:
            self._complete(heapq.heappop(instance.fixed)[2], now)
            done += 1
        while instance.prefill and instance.prefill[0][0] <= instance.vp + _EPS:
            _, tiebreak, record = heapq.heappop(instance.prefill)
            record.first_token = now
            if record.job.output_tokens > 0:
                heapq.heappush(instance.decode, (instance.vd + record.job.output_tokens, tiebreak, record))
            else:
                self._complete(record, now)
                done += 1
        while instance.decode and instance.decode[0][0] <= instance.vd + _EPS:
            self._complete(heapq.heappop(instance.decode)[2], now)
            done += 1
        instance.k -= done
        if instance.draining and instance.terminated_at is None and instance.k == 0:
            instance.terminated_at = now
        self._reschedule(instance)

    def dispatch(self, until: float) -> None:
        """Play the pool forward to `until`: queued jobs start, oldest first, on the least busy free instance
        the moment a stream frees; running jobs progress at the rates their instance's batch allows."""
        queue, events, instances = self.queue, self.events, self.instances
        timeout = self.request_timeout_seconds
        while True:
            next_event = events[0][0] if events else math.inf
            if queue:
                record = queue[0]
                at = record.enqueued if record.enqueued > self.clock else self.clock
                if at < until and at <= next_event:
                    if timeout is not None and at - record.enqueued > timeout:
                        queue.popleft()
                        record.failed = True
                        self.timed_out.append(record)
                        continue
                    instance = self._free_instance(at)
                    if instance is not None:
                        queue.popleft()
                        self.clock = at
                        self._start(record, instance, at)
                        continue
            if next_event >= until:
                break
            at, index, version = heapq.heappop(events)
            instance = instances[index]
            if version != instance.version or instance.terminated_at is not None:
                continue
            self.clock = at
            self._event(instance, at)
        self.clock = until
        if timeout is not None:  # requests that waited past their timeout by now have failed
            while queue and until - queue[0].enqueued > timeout:
                record = queue.popleft()
                record.failed = True
                self.timed_out.append(record)

    def in_flight(self, now: float) -> int:
        return sum(i.k for i in self.billing if i.terminated_at is None)

    def telemetry(self, now: float) -> PoolTelemetry:
        live = self.live()
        recent = sum(1 for t in self.failed_launches if t > now - LAUNCH_FAILURE_WINDOW)
        return PoolTelemetry(
            visible=len(self.queue), in_flight=self.in_flight(now),
            oldest_age_seconds=(now - self.queue[0].enqueued) if self.queue else 0.0, desired=self.desired,
            in_service=sum(1 for i in live if i.ready_at <= now), pending=sum(1 for i in live if i.ready_at > now),
            failed_launches=recent, sent_recently=self.sent_recently(now))


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
                 progress: bool = False, request_timeout_seconds: float | None = None) -> None:
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
                                 min_size=config.min_size, max_size=config.max_size,
                                 on_demand_percentage=round(100 * (1 - config.spot_fraction)))
                pool = Pool(region=region, name=name, config=config, profile=spec.profile, spec=spec,
                            request_timeout_seconds=request_timeout_seconds)
                pool.on_finish = self._finished
                for _ in range(config.start):
                    pool.launch(-pool.profile.boot_seconds)  # warm at t=0
                if config.warm_pool is not None:
                    # Prepared before t=0, like the starting instances (whose boots are not billed either).
                    pool.warm_stock = [-math.inf] * config.warm_pool.size
                pool.desired = config.start
                self.pools[region][name] = pool
        self.all_pools = [pool for pools in self.pools.values() for pool in pools.values()]
        attach = getattr(controller, "attach", None)
        if attach is not None:  # a controller whose router reads the pools from the first arrival on
            attach(self)
        self.records: list[JobRecord] = []
        self.samples: list[StepSample] = []
        self.moves = 0
        self.market_changes = 0  # On-Demand share changes the controller made (Spot fallback, Spot price)
        self.api_calls = 0
        self.cycles = 0
        self.requeued = 0
        self.cost_usd = 0.0
        self.energy_kwh = 0.0
        self._completed = 0
        self._on_time = 0

    # -- actions controllers use -------------------------------------------------------------------------
    def set_desired(self, pool: Pool, desired: int, now: float) -> None:
        desired = max(pool.spec.min_size, min(pool.spec.max_size, desired))
        pool.desired = desired
        live = pool.live()
        surplus = len(live) - desired
        if surplus > 0:
            # Cancel instances still booting first, then drain the least busy; the main group before the warm
            # lane, as the rebalancer's split shrinks it (no lane: the same order as before).
            live.sort(key=lambda i: (i.ready_at <= now, i.index in pool.lane, i.k))
            for instance in live[:surplus]:
                instance.draining = True
                if instance.ready_at > now or instance.k == 0:
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
        destination.count_sent(now, len(records))
        self.moves += len(records)

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self) -> Simulation:
        with no_cyclic_gc():
            return self._run()

    def _run(self) -> Simulation:
        period = self.scenario.control_period_seconds
        steps = math.ceil(self.scenario.horizon_seconds / period)
        index = 0
        arrivals = self.arrivals
        route = self.controller.route
        for step in range(steps):
            t1 = (step + 1) * period
            while index < len(arrivals) and arrivals[index].at < t1:
                arrival = arrivals[index]
                record = JobRecord(arrival.job, arrival.region, arrival.at)
                self.records.append(record)
                destination = route(record)
                region, name = destination if isinstance(destination, tuple) else (arrival.region, destination)
                pool = self.pools[region][name]
                pool.queue.append(record)
                pool.count_sent(arrival.at)
                index += 1
            for pool in self.all_pools:
                pool.dispatch(t1)
            self._bill_step(t1 - period, t1)
            self._events(t1)
            for region, pools in self.pools.items():
                for pool in pools.values():
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
        for pool in self.all_pools:
            price, watts = pool.price_per_hour / 3600, pool.profile.watts / 3.6e6
            kept = []
            for instance in pool.billing:
                # Each instance at its own market's price (its share set at launch); the same float as the
                # pool's price whenever the market never changed.
                instance_price = pool.price_at(instance.spot_share) / 3600
                start = max(t0, instance.launched_at)
                stop = t1 if instance.terminated_at is None else min(t1, instance.terminated_at)
                if instance.terminated_at is not None and instance.terminated_at <= t1:
                    # EC2 bills Linux instances per second with a 60 s minimum [A: Amazon EC2 pricing].
                    stop = max(stop, min(t1, instance.launched_at + MIN_BILLED_SECONDS))
                if stop > start:
                    seconds = stop - start
                    pool.instance_seconds += seconds
                    pool.cost_usd += seconds * instance_price
                    self.cost_usd += seconds * instance_price
                    self.energy_kwh += seconds * watts
                if instance.terminated_at is None or instance.terminated_at > t1:
                    kept.append(instance)
            pool.billing = kept
            if pool.config.warm_pool is not None:
                # Stopped instances: their EBS root volumes only; preparations: a running instance's price.
                extra = (len(pool.warm_stock) * (t1 - t0) * pool.config.warm_pool.stopped_usd_per_second
                         + pool.unbilled_preparation_seconds * price)
                pool.instance_seconds += pool.unbilled_preparation_seconds
                pool.unbilled_preparation_seconds = 0.0
                pool.cost_usd += extra
                self.cost_usd += extra

    def _reconcile(self, pool: Pool, now: float) -> None:
        """What an Auto Scaling group does: launch toward desired, failing above a capacity limit."""
        cap = self._capacity_cap(pool, now)
        live = len(pool.live())
        while live < pool.desired:
            if cap is not None and live >= cap:
                pool.failed_launches.append(now)
                break
            pool.launch(now)
            live += 1

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
                factors = {"all": 1.0, "spot": 1.0, "on_demand": 1.0}
                for event in self._active(pool, now, "price"):
                    factors[event.market] *= event.factor
                pool.price_factor = factors["all"]
                pool.spot_price_factor, pool.on_demand_price_factor = factors["spot"], factors["on_demand"]
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
            instance.version += 1  # its pending events are void
            for record in sorted(instance.running(), key=lambda r: r.start or 0.0, reverse=True):
                record.start = record.finish = record.first_token = None
                record.attempts += 1
                record.enqueued = now
                pool.queue.appendleft(record)
                self.requeued += 1
            instance.prefill.clear()
            instance.decode.clear()
            instance.fixed.clear()
            instance.k = 0

    def _finished(self, record: JobRecord) -> None:
        assert record.finish is not None
        self._completed += 1
        self._on_time += record.finish - record.arrived <= record.job.deadline_seconds

    def _sample(self, now: float) -> None:
        self.samples.append(StepSample(
            at=now,
            desired={p.key: p.desired for p in self.all_pools},
            in_service={p.key: sum(1 for i in p.live() if i.ready_at <= now) for p in self.all_pools},
            queued={p.key: len(p.queue) for p in self.all_pools},
            cost_usd=self.cost_usd, completed=self._completed, on_time=self._on_time))
