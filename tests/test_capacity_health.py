"""Capacity health: the breaker per offering, the signals that drive it, and what the policy does with it."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from moto import mock_aws

from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core import policy
from crossfleet_control.core.capacity_health import (
    CLOSED,
    DEGRADED,
    HALF_OPEN,
    HEALTHY,
    OPEN,
    PROBING,
    SHORT,
    Breaker,
    Offering,
    PoolHealth,
    RegionSummary,
    Signal,
    admit_fraction,
    admits,
    apply,
    classify_launch_failure,
    current,
    failover_target,
    pool_health,
)
from crossfleet_control.core.capacity_signals import (
    LAUNCH_SUCCESSFUL,
    LAUNCH_UNSUCCESSFUL,
    REBALANCE,
    SPOT_WARNING,
    EventSettings,
    InstanceFacts,
    interpret,
)
from crossfleet_control.core.policy_types import Observation, PolicySettings, PoolTelemetry, QueuedJob
from crossfleet_control.core.settings import pool_spec
from crossfleet_control.orchestration.capacity_events import CapacityEvents
from tests.aws_region import build_region
from tests.jobfactory import make_job

GPU = Offering("us-east-1", "gpu", "p5.48xlarge", "on-demand")
ICE = ("We currently do not have sufficient p5.48xlarge capacity in the Availability Zone you requested "
       "(us-east-1a). Our system will be working on provisioning additional capacity. Launching EC2 instance failed.")


def fail(breaker: Breaker, at: float, kind: str = "insufficient_capacity", **extra) -> Breaker:
    return apply(breaker, Signal(breaker.offering, kind, at, "test", **extra))


def succeed(breaker: Breaker, at: float) -> Breaker:
    return apply(breaker, Signal(breaker.offering, "success", at, "launched"))


# -- the breaker ------------------------------------------------------------------------------------------------

def test_breaker_opens_backs_off_half_opens_and_closes():
    b = fail(Breaker(GPU), 1000.0)
    assert b.state == OPEN and b.open_until == 1180.0, "insufficient capacity opens at once, for 3 minutes"
    assert admit_fraction(b, 1100.0) == 0.0
    assert current(b, 1180.0).state == HALF_OPEN
    assert admit_fraction(b, 1200.0) == pytest.approx(0.25), "half-open admits a trickle"
    reopened = fail(b, 1200.0)
    assert reopened.state == OPEN and reopened.open_until == 1200.0 + 360.0, "backoff doubles on a reopen"
    third = fail(fail(reopened, 1560.0), 1560.0 + 720.0)
    assert third.opens == 4 and third.open_until - third.score_at == pytest.approx(1440.0)
    capped = fail(third, third.open_until + 1)
    assert capped.open_until - capped.score_at == 1800.0, "capped at 30 minutes"

    half = current(reopened, 1560.0)
    once = succeed(half, 1570.0)
    assert once.state == HALF_OPEN, "one success is not enough"
    closed = succeed(once, 1580.0)
    assert closed.state == CLOSED and closed.closed_at == 1580.0
    assert admit_fraction(closed, 1580.0) == pytest.approx(0.5)
    assert admit_fraction(closed, 1880.0) == pytest.approx(0.75)
    assert admit_fraction(closed, 2180.0) == 1.0, "work returns gradually over ten minutes"
    assert current(closed, 1580.0 + 1800.0).opens == 0, "a long healthy spell resets the backoff"


def test_half_open_closes_after_a_quiet_spell_without_probes():
    b = current(fail(Breaker(GPU), 0.0), 200.0)
    assert b.state == HALF_OPEN
    assert current(b, 180.0 + 599.0).state == HALF_OPEN
    assert current(b, 180.0 + 600.0).state == CLOSED


def test_weak_signals_open_only_when_they_pile_up_and_decay():
    spot = Offering("us-east-1", "cpu", "m9g.16xlarge", "spot")
    b = Breaker(spot)
    for t in (0.0, 10.0, 20.0):
        b = apply(b, Signal(spot, "rebalance_recommendation", t, "rec"))
    assert b.state == CLOSED, "three recommendations are a warning, not a shortage"
    for t in (30.0, 40.0):
        b = apply(b, Signal(spot, "rebalance_recommendation", t, "rec"))
    assert b.state == OPEN, "five in under a minute are a storm"
    slow = Breaker(spot)
    for t in (0.0, 1200.0, 2400.0, 3600.0):
        slow = apply(slow, Signal(spot, "spot_interruption", t, "notice"))
    assert slow.state == CLOSED, "interruptions twenty minutes apart decay before they add up"


def test_quota_waits_longer_and_a_block_end_holds_until_the_block_ends():
    quota = fail(Breaker(GPU), 0.0, "quota_exceeded")
    assert quota.open_until == 900.0
    block = fail(Breaker(replace(GPU, market="reserved")), 0.0, "block_ending", until=2400.0)
    assert block.open_until == 2400.0


def test_late_signals_do_not_run_time_backwards():
    b = fail(Breaker(GPU), 1000.0)
    late = apply(b, Signal(GPU, "launch_failed", 900.0, "late"))
    assert late.score_at == 1000.0 and late.open_until == b.open_until


@pytest.mark.parametrize(("message", "expected"), [
    (ICE, ("insufficient_capacity", "p5.48xlarge", "on-demand")),
    ("Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that "
     "matches your request. Launching EC2 instance failed.", ("insufficient_capacity", None, "spot")),
    ("You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that "
     "the specified instance type belongs to. Launching EC2 instance failed.", ("quota_exceeded", None, "on-demand")),
    ("Could not launch Spot Instances. MaxSpotInstanceCountExceeded - Max spot instance count exceeded.",
     ("quota_exceeded", None, "spot")),
    ("Insufficient capacity in capacity reservation cr-0123 for g6e.xlarge. Launching EC2 instance failed.",
     ("reservation_unavailable", "g6e.xlarge", "reserved")),
    ("The subnet ID 'subnet-1' does not exist. Launching EC2 instance failed.", ("launch_failed", None, "on-demand")),
])
def test_launch_failure_messages_are_classified(message: str, expected: tuple):
    assert classify_launch_failure(message) == expected


# -- a pool's health -------------------------------------------------------------------------------------------

def test_pool_health_from_its_breakers():
    types = ("p5.48xlarge", "p5en.48xlarge")
    first = fail(Breaker(GPU), 0.0)
    second = fail(Breaker(replace(GPU, instance_type="p5en.48xlarge")), 0.0)
    assert pool_health([], types, 10.0) == PoolHealth(HEALTHY, 1.0, False, "healthy")
    assert pool_health([first], types, 10.0).status == DEGRADED, "the group can still launch the other type"
    assert pool_health([first, second], types, 10.0).status == SHORT
    assert pool_health([first, second], types, 200.0).status == PROBING
    foreign = fail(Breaker(replace(GPU, instance_type="g6e.xlarge")), 0.0)
    assert pool_health([foreign], types, 10.0).status == HEALTHY, "a type the group never launches does not count"
    spot = apply(Breaker(replace(GPU, market="spot")), Signal(replace(GPU, market="spot"), "insufficient_capacity",
                                                              0.0, "spot"))
    health = pool_health([spot], types, 10.0)
    assert health.status == HEALTHY and health.spot_short, "Spot short is a market switch, not a shortage"


def test_admitted_share_is_decided_by_job_id_and_roughly_the_fraction():
    ids = [f"job-{i}" for i in range(2000)]
    share = sum(admits(i, 0.25) for i in ids) / len(ids)
    assert 0.2 < share < 0.3
    assert [admits(i, 0.25) for i in ids] == [admits(i, 0.25) for i in ids]
    assert all(admits(i, 1.0) for i in ids) and not any(admits(i, 0.0) for i in ids)


def summary(region: str, status: str = HEALTHY, *, at: float = 1000.0, admit: float = 1.0, desired: int = 2,
            max_size: int = 8, queued: int = 0, wait: float = 0.0) -> RegionSummary:
    return RegionSummary(region, status, admit, in_service=desired, desired=desired, max_size=max_size,
                         queued=queued, updated_at=at, wait_seconds=wait, target_wait_seconds=120.0)


def test_failover_target_is_the_healthiest_configured_region_and_never_another():
    peers = {"us-west-2": summary("us-west-2", DEGRADED), "us-east-2": summary("us-east-2"),
             "eu-west-1": summary("eu-west-1")}
    assert failover_target(peers, ("us-west-2", "us-east-2"), 1010.0, 300)[0] == "us-east-2"
    assert failover_target(peers, ("us-west-2",), 1010.0, 300)[0] == "us-west-2"
    assert failover_target(peers, (), 1010.0, 300)[0] is None, "eu-west-1 is not configured"
    stale = {"us-east-2": summary("us-east-2", at=0.0)}
    assert failover_target(stale, ("us-east-2",), 1010.0, 300)[0] is None, "unknown is never healthy"
    short = {"us-east-2": summary("us-east-2", SHORT)}
    assert failover_target(short, ("us-east-2",), 1010.0, 300)[0] is None, "the failover target is short too"
    full = {"us-east-2": summary("us-east-2", desired=8, queued=2000, wait=600.0)}
    assert failover_target(full, ("us-east-2",), 1010.0, 300)[0] is None, "at its maximum and past its target wait"
    busy_but_keeping_up = {"us-east-2": summary("us-east-2", desired=8, queued=20, wait=30.0)}
    assert failover_target(busy_but_keeping_up, ("us-east-2",), 1010.0, 300)[0] == "us-east-2"
    both = {"us-east-2": summary("us-east-2", wait=90.0), "us-west-2": summary("us-west-2", wait=10.0)}
    assert failover_target(both, ("us-east-2", "us-west-2"), 1010.0, 300)[0] == "us-west-2", "the shorter wait"


# -- the policy on a shortage ----------------------------------------------------------------------------------

SPECS = {"cpu": pool_spec("cpu", "m9g.16xlarge", vcpus=64, accelerators=0, min_size=1, max_size=20,
                          on_demand_percentage=0),
         "gpu": pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=8)}
SETTINGS = PolicySettings(target_wait_seconds=120)
HEALTHY_POOL = PoolHealth()
NOW = 1000.0


def observation(gpu_health: PoolHealth, *, peers=None, gpu_in_service=0, gpu_desired=3, gpu_visible=6,
                cpu_health: PoolHealth = HEALTHY_POOL, spot_share: int | None = 0) -> Observation:
    return Observation(
        now=NOW, region="us-east-1", configured_regions=("us-east-1", "us-west-2"),
        pools={"cpu": PoolTelemetry(visible=0, in_flight=0, oldest_age_seconds=0, desired=2, in_service=2),
               "gpu": PoolTelemetry(visible=gpu_visible, in_flight=0, oldest_age_seconds=30, desired=gpu_desired,
                                    in_service=gpu_in_service, pending=0, failed_launches=0)},
        health={"gpu": gpu_health, "cpu": cpu_health},
        peers=peers if peers is not None else {"us-west-2": summary("us-west-2", at=NOW)},
        on_demand_percentage={"cpu": spot_share, "gpu": None})


SHORT_GPU = PoolHealth(SHORT, 0.0, False, "every type open: insufficient capacity")


def test_on_a_shortage_either_work_moves_to_cpu_and_gpu_only_work_fails_over():
    either = make_job(id="either-1", placement="either", deadline_seconds=600, submitted_at=NOW)
    tight = make_job(id="either-tight", placement="either", deadline_seconds=3, submitted_at=NOW)
    gpu_only = make_job(id="gpu-only-1", placement="gpu_only", submitted_at=NOW)
    pinned = make_job(id="gpu-pinned", placement="gpu_only", region="us-east-1", submitted_at=NOW)
    obs = observation(SHORT_GPU)
    requests = policy.plan_sampling(obs, SPECS, SETTINGS)
    assert [r.pool for r in requests] == ["gpu"]
    decision = policy.decide(obs, SPECS, SETTINGS, policy.ControllerMemory(),
                             [QueuedJob("gpu", j) for j in (either, tight, gpu_only, pinned)])
    moves = {m.job_id: m for m in decision.moves}
    assert (moves["either-1"].destination, moves["either-1"].destination_region) == ("cpu", None)
    assert moves["either-1"].reason == "deadline"
    assert moves["gpu-only-1"].destination_region == "us-west-2" and moves["gpu-only-1"].reason == "failover"
    assert moves["either-tight"].destination_region == "us-west-2", "misses on CPU: a GPU elsewhere"
    assert "gpu-pinned" not in moves, "a region pin is never broken"
    assert "short" in moves["gpu-only-1"].detail


def test_no_failover_when_no_other_configured_region_is_healthy():
    gpu_only = make_job(id="gpu-only-2", placement="gpu_only", submitted_at=NOW)
    for peers in ({}, {"us-west-2": summary("us-west-2", SHORT, at=NOW)},
                  {"us-east-2": summary("us-east-2", at=NOW)}):
        obs = observation(SHORT_GPU, peers=peers)
        decision = policy.decide(obs, SPECS, SETTINGS, policy.ControllerMemory(), [QueuedJob("gpu", gpu_only)])
        assert decision.moves == ()


def test_a_short_pool_stops_launching_but_keeps_what_it_has():
    decision = policy.decide(observation(SHORT_GPU, gpu_in_service=1, gpu_desired=4), SPECS, SETTINGS,
                             policy.ControllerMemory())
    gpu = decision.pools["gpu"]
    assert gpu.desired == 1 and "capacity short" in gpu.reason, "no launches into a region that said no"
    idle = policy.decide(observation(SHORT_GPU, gpu_in_service=2, gpu_desired=2, gpu_visible=0), SPECS, SETTINGS,
                         policy.ControllerMemory())
    assert idle.pools["gpu"].desired == 2, "never scale in the primary during a failover"


def test_capacity_comes_back_one_instance_then_by_the_admitted_share():
    probing = PoolHealth(PROBING, 0.25, False, "half-open, probing")
    decision = policy.decide(observation(probing, gpu_desired=0, gpu_visible=5000), SPECS, SETTINGS,
                             policy.ControllerMemory())
    assert decision.pools["gpu"].desired == 1
    ramp = PoolHealth(HEALTHY, 0.5, False, "recovering: admitting 50%")
    decision = policy.decide(observation(ramp, gpu_desired=0, gpu_visible=5000), SPECS, SETTINGS,
                             policy.ControllerMemory())
    healthy = policy.decide(observation(PoolHealth(), gpu_desired=0, gpu_visible=5000), SPECS, SETTINGS,
                            policy.ControllerMemory())
    # A recovering pool adds its admitted share of the step a healthy pool would take (proportional to the gap).
    assert decision.pools["gpu"].desired == healthy.pools["gpu"].desired // 2 > 1


def test_spot_falls_back_to_on_demand_and_returns_when_it_recovers():
    spot_short = PoolHealth(HEALTHY, 1.0, True, "healthy; Spot short")
    decision = policy.decide(observation(PoolHealth(), cpu_health=spot_short), SPECS, SETTINGS,
                             policy.ControllerMemory())
    assert decision.markets["cpu"].desired == 100 and decision.markets["cpu"].changes
    assert "gpu" not in decision.markets, "a group with no Spot configured has nothing to fall back from"
    back = policy.decide(observation(PoolHealth(), spot_share=100), SPECS, SETTINGS, policy.ControllerMemory())
    assert back.markets["cpu"].desired == 0 and back.markets["cpu"].changes


# -- the capacity-events Lambda --------------------------------------------------------------------------------

EVENT_SETTINGS = EventSettings(deployment="crossfleet-test", region="us-east-1", table_name="crossfleet-test-state",
                               groups={"cpu": "crossfleet-test-us-east-1-cpu", "gpu": "crossfleet-test-us-east-1-gpu"},
                               capacity_block_id="cr-0block", block_instance_type="p5.48xlarge")


def launch_event(group: str, message: str = ICE, kind: str = LAUNCH_UNSUCCESSFUL, instance: str = "",
                 at: float = 0.0) -> dict:
    """An Auto Scaling launch event as EventBridge delivers it, stamped at `at` on the caller's clock."""
    stamp = datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"detail-type": kind, "source": "aws.autoscaling", "region": "us-east-1", "time": stamp,
            "detail": {"AutoScalingGroupName": group, "StatusMessage": message, "StatusCode": "Failed",
                       "EC2InstanceId": instance}}


def test_events_become_signals_for_this_deployment_only():
    ours = interpret(launch_event("crossfleet-test-us-east-1-gpu"), EVENT_SETTINGS, None, 0.0)
    assert [(s.offering.pool, s.offering.instance_type, s.kind) for s in ours] == [
        ("gpu", "p5.48xlarge", "insufficient_capacity")]
    assert interpret(launch_event("someone-elses-group"), EVENT_SETTINGS, None, 0.0) == []
    notice = {"detail-type": SPOT_WARNING, "source": "aws.ec2", "detail": {"instance-id": "i-1"}}
    mine = InstanceFacts("m9g.16xlarge", "spot", "crossfleet-test-us-east-1-cpu")
    assert [(s.offering.market, s.kind) for s in interpret(notice, EVENT_SETTINGS, mine, 0.0)] == [
        ("spot", "spot_interruption")]
    theirs = InstanceFacts("m9g.16xlarge", "spot", "other-group")
    assert interpret(notice, EVENT_SETTINGS, theirs, 0.0) == []
    assert interpret({**notice, "detail-type": REBALANCE}, EVENT_SETTINGS, mine, 0.0)[0].kind == \
        "rebalance_recommendation"
    block = {"detail-type": "Capacity Block Expiration Warning", "source": "aws.ec2",
             "detail": {"capacity-reservation-id": "cr-0block", "end-date": "2026-11-23T11:00:00Z"}}
    (signal,) = interpret(block, EVENT_SETTINGS, None, 0.0)
    assert signal.kind == "block_ending" and signal.offering.market == "reserved" and signal.until is not None
    other_block = {**block, "detail": {"capacity-reservation-id": "cr-other"}}
    assert interpret(other_block, EVENT_SETTINGS, None, 0.0) == []


def test_capacity_events_handler_records_breakers_and_drains_a_block_before_it_ends():
    with mock_aws():
        region = build_region("us-east-1", gpu_desired=2, cpu_desired=1)
        session = region.session
        settings = replace(EVENT_SETTINGS, table_name=region.settings.table_name,
                           groups={p: s.group_name for p, s in region.settings.pools.items()})
        store = HealthStore(session.client("dynamodb"), settings.table_name, "us-east-1")
        handler = CapacityEvents(settings, store, session.client("ec2"), session.client("autoscaling"),
                                 MetricsRecorder("crossfleet-test", "us-east-1", stream=io.StringIO()))
        result = handler.handle(launch_event(settings.groups["gpu"]), 0.0)
        assert result["breakers"] == {"offering#gpu#p5.48xlarge#on-demand": OPEN}

        # A Spot notice for one of our instances: its type and market come from EC2, its pool from the group tag.
        autoscaling = session.client("autoscaling")
        group = autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[settings.groups["cpu"]])["AutoScalingGroups"][0]
        instance_id = group["Instances"][0]["InstanceId"]
        for _ in range(2):
            result = handler.handle({"detail-type": SPOT_WARNING, "source": "aws.ec2", "region": "us-east-1",
                                     "detail": {"instance-id": instance_id}}, 10.0)
        (key, state), = result["breakers"].items()
        assert key.startswith("offering#cpu#") and state == OPEN, "two interruption notices open the Spot breaker"

        launched = launch_event(settings.groups["gpu"], kind=LAUNCH_SUCCESSFUL, instance=instance_id)
        assert handler.handle(launched, 20.0)["signals"] == ["success", "success"]

        block = {"detail-type": "Capacity Block Expiration Warning", "source": "aws.ec2", "region": "us-east-1",
                 "detail": {"capacity-reservation-id": "cr-0block", "end-date": "2026-11-23T11:00:00Z"}}
        result = handler.handle(block, 30.0)
        assert result["drained"] == 2, "every block instance leaves through the drain hook"
        gpu = autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[settings.groups["gpu"]])["AutoScalingGroups"][0]
        assert gpu["DesiredCapacity"] == 0, "scale-in with decrement: nothing relaunches into an ending block"
        breakers = {b.offering.sort_key: b for b in store.breakers()}
        assert breakers["offering#gpu#p5.48xlarge#reserved"].state == OPEN
        health = pool_health(breakers.values(), ("p5.48xlarge",), 40.0)
        assert health.short, "the block's group cannot launch its one type"
