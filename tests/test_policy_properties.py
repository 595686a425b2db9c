"""Properties of the pure rebalancer policy, over generated observations (hypothesis)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from crossfleet_control.core import policy
from crossfleet_control.core.policy_types import (
    ControllerMemory,
    Observation,
    Override,
    PolicySettings,
    PoolMemory,
    PoolSpec,
    PoolTelemetry,
    QueuedJob,
)
from crossfleet_control.core.service_model import profile_for
from crossfleet_control.core.settings import REFERENCE_JOB
from tests.jobfactory import make_job

NOW = 1_700_000_000.0
SETTINGS = PolicySettings(target_wait_seconds=120, scale_in_delay_seconds=600, max_scale_up_step=10,
                          max_scale_in_step=2, move_budget=200)


def _spec(name: str, instance_type: str, vcpus: int, accelerators: int, min_size: int, max_size: int) -> PoolSpec:
    profile = profile_for(instance_type, vcpus=vcpus, accelerators=accelerators)
    return PoolSpec(name=name, min_size=min_size, max_size=max_size, profile=profile,
                    mean_job_seconds=profile.job_seconds(REFERENCE_JOB))


SPECS = {"cpu": _spec("cpu", "m9g.16xlarge", 64, 0, 1, 20), "gpu": _spec("gpu", "g6e.xlarge", 4, 1, 0, 8)}

maybe_count = st.one_of(st.none(), st.integers(0, 20_000))
telemetry_strategy = st.builds(
    PoolTelemetry, visible=maybe_count, in_flight=maybe_count,
    oldest_age_seconds=st.one_of(st.none(), st.floats(0, 3600)),
    desired=st.one_of(st.none(), st.integers(0, 40)), in_service=st.one_of(st.none(), st.integers(0, 40)),
    pending=st.integers(0, 5), failed_launches=st.integers(0, 3))
memory_strategy = st.builds(PoolMemory, low_since=st.one_of(st.none(), st.floats(NOW - 3600, NOW)))
override_strategy = st.builds(Override, frozen=st.booleans(), pinned_desired=st.one_of(st.none(), st.integers(-5, 50)))
placements = st.sampled_from(["cpu_only", "gpu_only", "either"])


@st.composite
def candidates_strategy(draw):
    jobs = []
    for index in range(draw(st.integers(0, 30))):
        placement = draw(placements)
        pool = {"cpu_only": "cpu", "gpu_only": "gpu"}.get(placement) or draw(st.sampled_from(["cpu", "gpu"]))
        jobs.append(QueuedJob(pool=pool, job=make_job(
            id=f"cand-{index}", placement=placement, preference=pool,
            deadline_seconds=draw(st.floats(1, 3600)), submitted_at=NOW - draw(st.floats(0, 600)),
            moves=draw(st.integers(0, 3)))))
    return jobs


@st.composite
def observations(draw):
    pools = {name: draw(telemetry_strategy) for name in SPECS}
    overrides = {name: draw(override_strategy) for name in SPECS if draw(st.booleans())}
    return Observation(now=NOW, pools=pools, overrides=overrides)


@settings(max_examples=300, deadline=None)
@given(observations(), st.builds(ControllerMemory, pools=st.fixed_dictionaries(
    {"cpu": memory_strategy, "gpu": memory_strategy})), candidates_strategy())
def test_desired_within_bounds_and_step_limits_and_moves_are_legal(observation, memory, candidates):
    decision = policy.decide(observation, SPECS, SETTINGS, memory, candidates)
    for name, spec in SPECS.items():
        pool_decision = decision.pools[name]
        telemetry = observation.pools[name]
        if pool_decision.desired is None:
            assert telemetry.desired is None
            continue
        if telemetry.missing():
            assert pool_decision.desired == telemetry.desired and pool_decision.held
            continue
        assert spec.min_size <= pool_decision.desired <= spec.max_size
        base = policy.clamp(telemetry.desired, spec.min_size, spec.max_size)
        # Steps proportional to the gap: never past what the pool wants, and never more than the fixed step
        # beyond it; never below the scale-in step.
        assert base - SETTINGS.max_scale_in_step <= pool_decision.desired
        assert pool_decision.desired <= max(base + SETTINGS.max_scale_up_step, pool_decision.wanted or base)
        if observation.override(name).frozen:
            assert pool_decision.desired == base
    by_id = {c.job.id: c for c in candidates}
    moved_ids = [m.job_id for m in decision.moves]
    assert len(moved_ids) == len(set(moved_ids)), "a job moves at most once per cycle"
    assert len(moved_ids) <= SETTINGS.move_budget
    for move in decision.moves:
        candidate = by_id[move.job_id]  # conserved: only sampled jobs move
        assert candidate.pool == move.source != move.destination
        assert candidate.job.placement == "either", "cpu_only never to GPU, gpu_only never to CPU"
        assert candidate.job.moves < SETTINGS.max_moves_per_job
        for pool in (move.source, move.destination):
            assert not observation.pools[pool].missing(), "no moves out of (or into) an unknown side"
            assert not observation.override(pool).frozen


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(SPECS)), telemetry_strategy, memory_strategy,
       st.sampled_from(("visible", "in_flight", "in_service")))
def test_missing_telemetry_never_scales_in(pool, telemetry, memory, missing_field):
    # The blanked field is drawn, not derived from a constant: every telemetry field the policy sizes from is
    # exercised (the field `desired` is what it holds at, so it is kept known here).
    telemetry = replace(telemetry, **{missing_field: None}, desired=telemetry.desired or 5)
    decision, _ = policy.size_pool(SPECS[pool], telemetry, Observation(NOW, {pool: telemetry}), memory, SETTINGS)
    assert decision.held and decision.desired == telemetry.desired
    assert "telemetry unknown" in decision.reason


def _run_plant(pool: str, backlog_at: list[int], start_desired: int,
               settings_: PolicySettings = SETTINGS) -> list[int]:
    """Cycle the policy against a plant whose instances come up one cycle after being asked for."""
    spec = SPECS[pool]
    desired, memory, history = start_desired, PoolMemory(), []
    for minute, backlog in enumerate(backlog_at):
        telemetry = PoolTelemetry(visible=backlog, in_flight=0, oldest_age_seconds=0.0, desired=desired,
                                  in_service=desired, pending=0)
        observation = Observation(now=NOW + 60 * minute, pools={pool: telemetry})
        decision, memory = policy.size_pool(spec, telemetry, observation, memory, settings_)
        desired = decision.desired
        history.append(desired)
    return history


def _direction_changes(history: list[int]) -> int:
    steps = [b - a for a, b in itertools.pairwise(history) if b != a]
    return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


@given(st.integers(0, 2000), st.sampled_from(list(SPECS)))
@settings(max_examples=60, deadline=None)
def test_no_oscillation_on_steady_load(backlog, pool):
    history = _run_plant(pool, [backlog] * 60, start_desired=SPECS[pool].min_size)
    assert _direction_changes(history) == 0
    assert len(set(history[-30:])) == 1, "settles on one size"


def _max_direction_changes(cycles: int, delay_cycles: int) -> int:
    """The proven bound. A step down needs the want below the size for `delay_cycles` cycles after the last step
    up, so an up is followed by a down at least delay + 1 cycles later, and the next up can come one cycle after
    that: every up-down-up turn spans at least delay + 2 cycles and holds two direction changes. Over `cycles`
    cycles (cycles - 1 transitions) that is at most 2 * floor((cycles - 1) / (delay + 2)) + 1 changes. (An
    earlier version of this test guessed cycles // delay = 6 for an hour; hypothesis found 7 with a spike every
    12 minutes, which the rule allows.) The adversarial case below reaches the bound exactly."""
    return 2 * ((cycles - 1) // (delay_cycles + 2)) + 1


def _cycles_below_before_each_down(history: list[int]) -> list[int]:
    """For every step down, the cycles the want can have been below the size: since the cycle after the last step
    up (whose cycle still wanted more), or since the first cycle."""
    gaps, below_since = [], 0
    for t, (a, b) in enumerate(itertools.pairwise(history), start=1):
        if b > a:
            below_since = t + 1
        elif b < a:
            gaps.append(t - below_since)
    return gaps


@given(st.lists(st.floats(0.7, 1.3), min_size=60, max_size=60), st.integers(50, 1500))
@settings(max_examples=60, deadline=None)
def test_noisy_load_changes_direction_a_bounded_number_of_times_per_hour(noise, level):
    history = _run_plant("gpu", [int(level * n) for n in noise], start_desired=2)
    delay_cycles = int(SETTINGS.scale_in_delay_seconds // 60)
    assert all(gap >= delay_cycles for gap in _cycles_below_before_each_down(history)), history
    assert _direction_changes(history) <= _max_direction_changes(len(history), delay_cycles)


def test_the_direction_change_bound_is_reached_by_a_spike_every_delay_plus_two_minutes():
    """The bound is tight, not a guess: a spike just after each scale-in makes the pool turn at every chance."""
    delay_cycles = int(SETTINGS.scale_in_delay_seconds // 60)
    spikes = set(range(delay_cycles + 1, 60, delay_cycles + 2))
    # Levels from the service model, not fixed counts: a quiet minute wants one instance, a spike just over one.
    spec = SPECS["gpu"]
    per_instance = spec.profile.streams * SETTINGS.target_wait_seconds / spec.mean_job_seconds
    quiet, spike = int(0.8 * per_instance), int(per_instance) + 1
    load = [spike if minute in spikes else quiet for minute in range(60)]
    # Without the forecast floor the scale-in delay alone bounds flapping, and this load reaches the bound...
    history = _run_plant("gpu", load, start_desired=2, settings_=replace(SETTINGS, forecast_share=0.0))
    assert _direction_changes(history) == _max_direction_changes(60, delay_cycles), history
    # ...with it, the pool keeps what the last spike needed while spikes keep coming: from the first spike on it
    # holds one size (before it, with no history, the quiet minutes scale it in once).
    history = _run_plant("gpu", load, start_desired=2)
    assert _direction_changes(history) <= 1 and len(set(history[min(spikes):])) == 1, history


@given(st.integers(0, 8), st.integers(1, 20_000))
@settings(max_examples=100, deadline=None)
def test_backlog_spike_scales_up_within_one_cycle(current, extra):
    spec = SPECS["gpu"]
    # A spike: more work than the current fleet clears within the target wait.
    per_instance = spec.profile.streams * SETTINGS.target_wait_seconds / spec.mean_job_seconds
    spike = int(per_instance * current) + extra
    telemetry = PoolTelemetry(visible=spike, in_flight=0, oldest_age_seconds=0.0, desired=current,
                              in_service=current)
    decision, _ = policy.size_pool(spec, telemetry, Observation(NOW, {"gpu": telemetry}), PoolMemory(), SETTINGS)
    if current < spec.max_size:
        assert decision.desired > current, decision.reason
    else:
        assert decision.desired == spec.max_size


@given(st.integers(1, 40), st.sampled_from(list(SPECS)))
@settings(max_examples=60, deadline=None)
def test_idle_pool_scales_to_min_after_the_delay(start, pool):
    spec = SPECS[pool]
    start = max(start, spec.min_size)
    history = _run_plant(pool, [0] * 60, start_desired=start)
    delay_cycles = int(SETTINGS.scale_in_delay_seconds // 60)
    assert all(d == policy.clamp(start, spec.min_size, spec.max_size) for d in history[:delay_cycles]), \
        "nothing scales in before the delay"
    assert history[-1] == spec.min_size


def test_gpu_backlog_with_idle_cpu_moves_either_jobs_to_cpu_only():
    """A worked case: GPUs saturated and unable to grow; Graviton idle; tight deadlines."""
    gpu = PoolTelemetry(visible=400, in_flight=256, oldest_age_seconds=90, desired=8, in_service=8)
    cpu = PoolTelemetry(visible=0, in_flight=0, oldest_age_seconds=0, desired=10, in_service=10)
    observation = Observation(NOW, {"cpu": cpu, "gpu": gpu})
    jobs = [QueuedJob("gpu", make_job(id=f"e{i}", placement="either", deadline_seconds=60, submitted_at=NOW))
            for i in range(5)]
    jobs += [QueuedJob("gpu", make_job(id=f"g{i}", placement="gpu_only", deadline_seconds=60, submitted_at=NOW))
             for i in range(5)]
    requests = policy.plan_sampling(observation, SPECS, SETTINGS)
    assert [r.pool for r in requests] == ["gpu"]
    decision = policy.decide(observation, SPECS, SETTINGS, ControllerMemory(), jobs)
    assert {m.job_id for m in decision.moves} == {f"e{i}" for i in range(5)}
    assert all(m.destination == "cpu" for m in decision.moves)
    assert decision.pools["gpu"].desired == 8, "already at max"


def test_idle_gpu_takes_waiting_cpu_work():
    cpu = PoolTelemetry(visible=300, in_flight=40, oldest_age_seconds=200, desired=10, in_service=10)
    gpu = PoolTelemetry(visible=0, in_flight=0, oldest_age_seconds=0, desired=2, in_service=2)
    observation = Observation(NOW, {"cpu": cpu, "gpu": gpu})
    jobs = [QueuedJob("cpu", make_job(id=f"c{i}", placement="either", preference="cpu", deadline_seconds=3600,
                                      submitted_at=NOW)) for i in range(100)]
    decision = policy.decide(observation, SPECS, SETTINGS, ControllerMemory(), jobs)
    # The GPU's idle slots (2 instances x 32 streams; all 64 free, as the sizer keeps no occupancy margin by
    # default) are already paid: they take the first 64 for nothing more; its running capacity then serves the
    # rest well before their deadline for a fraction of a Graviton slot's cost (placement by marginal cost), so
    # they move too, as "cheaper".
    reasons = [m.reason for m in decision.moves]
    free = int(64 * policy.fill_share(SETTINGS))
    assert reasons[:free] == ["idle_capacity"] * free
    assert set(reasons[free:]) <= {"cheaper"} and len(reasons) == 100
