"""The warm start: the forecast envelope, its floor in the policy, the burst signal, the failover share, and
proportional steps. Properties over generated histories, and the cases that show each mechanism does its job."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from crossfleet_control.core import forecast, policy
from crossfleet_control.core.capacity_health import HEALTHY, SHORT, RegionSummary
from crossfleet_control.core.policy_types import (
    Observation,
    Override,
    PolicySettings,
    PoolMemory,
    PoolTelemetry,
)
from crossfleet_control.core.settings import pool_spec

NOW = 1_700_000_000.0
SETTINGS = PolicySettings(target_wait_seconds=20, scale_in_delay_seconds=600, max_scale_up_step=10,
                          max_scale_in_step=2)
GPU = pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=48)
CPU = pool_spec("cpu", "m9g.16xlarge", vcpus=64, accelerators=0, min_size=1, max_size=60)

samples = st.lists(st.tuples(st.floats(NOW - 7200, NOW), st.integers(0, 500)), max_size=80)


def _envelope(history: list[tuple[float, int]], window: float) -> tuple[forecast.Sample, ...]:
    envelope: tuple[forecast.Sample, ...] = ()
    for at, want in sorted(history):
        envelope = forecast.record(envelope, at, want, window)
    return envelope


@given(samples, st.floats(60, 7200), st.floats(0, 3), st.integers(0, 1000))
@settings(max_examples=300, deadline=None)
def test_the_floor_never_exceeds_the_pools_maximum_and_never_goes_negative(history, window, share, max_size):
    envelope = _envelope(history, window)
    floor = forecast.floor(envelope, NOW, forecast.ForecastSettings(window, share), max_size)
    assert 0 <= floor <= max_size


@given(samples, st.floats(60, 7200))
@settings(max_examples=300, deadline=None)
def test_the_envelope_is_the_decayed_maximum_of_the_whole_history_and_stays_small(history, window):
    """The monotone envelope drops only samples that can never be the maximum again: its peak equals the peak of
    the whole history, at every later moment."""
    envelope = _envelope(history, window)
    assert len(envelope) <= forecast.MAX_SAMPLES
    assert all(a[1] > b[1] for a, b in itertools.pairwise(envelope)), "strictly decreasing wants"
    last = max((at for at, _ in history), default=NOW)
    for later in (last, last + window / 3, last + window / 2, last + window):
        everything = tuple(sorted(history))
        assert forecast.peak(envelope, later, window) == forecast.peak(everything, later, window)


def test_a_peak_weighs_less_as_it_ages_and_nothing_after_the_window():
    envelope = forecast.record((), NOW, 20, 1800)
    assert [forecast.peak(envelope, NOW + minutes * 60, 1800) for minutes in (0, 15, 27, 30, 45)] == [20, 10, 2, 0, 0]


def _telemetry(visible: int = 0, in_flight: int = 0, desired: int = 2, sent: int | None = None) -> PoolTelemetry:
    return PoolTelemetry(visible=visible, in_flight=in_flight, oldest_age_seconds=0.0, desired=desired,
                         in_service=desired, pending=0, sent_recently=sent)


@given(st.integers(0, 2000), st.integers(0, 48), st.integers(0, 48), samples)
@settings(max_examples=300, deadline=None)
def test_the_forecast_never_drives_a_pool_below_its_running_work(in_flight, desired, _unused, history):
    """Whatever the history says, the size never drops below the instances the running jobs occupy."""
    memory = PoolMemory(peaks=_envelope(history, SETTINGS.forecast_window_seconds), low_since=NOW - 3600)
    telemetry = _telemetry(in_flight=in_flight, desired=desired)
    decision, _ = policy.size_pool(GPU, telemetry, Observation(NOW, {"gpu": telemetry}), memory, SETTINGS)
    assert decision.desired is not None
    assert decision.desired >= min(GPU.max_size, math.ceil(in_flight / GPU.profile.streams))
    assert GPU.min_size <= decision.desired <= GPU.max_size


def test_a_pool_keeps_what_its_last_burst_needed_and_says_so():
    """The burst has drained; without the floor the pool would scale in before the next one."""
    memory = PoolMemory(peaks=((NOW - 60, 12),), low_since=NOW - 3600)
    telemetry = _telemetry(desired=12)
    decision, kept = policy.size_pool(GPU, telemetry, Observation(NOW, {"gpu": telemetry}), memory, SETTINGS)
    assert decision.desired == 12, decision.reason
    assert "forecast: recent peak want 12" in decision.reason and "floor 12" in decision.reason
    off, _ = policy.size_pool(GPU, telemetry, Observation(NOW, {"gpu": telemetry}), memory,
                              replace(SETTINGS, forecast_share=0.0))
    assert off.desired == 10, "without the floor it scales in (by the scale-in step)"
    assert kept.peaks[0] == (NOW - 60, 12), "the envelope is carried to the next cycle"


def test_a_burst_that_drained_between_cycles_still_raises_the_gpu_floor():
    """The queue is empty at the cycle, but CloudWatch saw 3,000 sends in a minute: the floor rises for the next."""
    telemetry = _telemetry(desired=2, sent=3000)
    decision, _ = policy.size_pool(GPU, telemetry, Observation(NOW, {"gpu": telemetry}), PoolMemory(), SETTINGS)
    expected = math.ceil(3000 * GPU.mean_job_seconds / SETTINGS.forecast_burst_seconds / GPU.profile.streams)
    assert decision.desired == expected > 2, decision.reason
    quiet = _telemetry(desired=2, sent=None)
    unknown, _ = policy.size_pool(GPU, quiet, Observation(NOW, {"gpu": quiet}), PoolMemory(), SETTINGS)
    assert unknown.desired == 2, "no datapoint: no burst signal (unknown is not zero, nor a burst)"
    cpu = _telemetry(desired=2, sent=3000)
    cpu_decision, _ = policy.size_pool(CPU, cpu, Observation(NOW, {"cpu": cpu}), PoolMemory(), SETTINGS)
    assert cpu_decision.desired == 2, "Graviton boots within a burst's deadline: sends do not size its floor"


def test_scale_up_steps_are_proportional_to_the_gap():
    # 40 instances' worth of queued work on a pool of 2.
    visible = int(40 * GPU.profile.streams * SETTINGS.target_wait_seconds / GPU.mean_job_seconds)
    telemetry = _telemetry(visible=visible, desired=2)
    decision, _ = policy.size_pool(GPU, telemetry, Observation(NOW, {"gpu": telemetry}), PoolMemory(), SETTINGS)
    assert decision.desired == decision.wanted == 40, decision.reason
    fixed, _ = policy.size_pool(GPU, telemetry, Observation(NOW, {"gpu": telemetry}), PoolMemory(),
                                replace(SETTINGS, scale_up_gain=0.0))
    assert fixed.desired == 12 and "step-limited" in fixed.reason


def test_the_floor_yields_to_operators_and_to_a_short_pool():
    memory = PoolMemory(peaks=((NOW - 60, 30),))
    telemetry = _telemetry(desired=2)
    frozen = Observation(NOW, {"gpu": telemetry}, overrides={"gpu": Override(frozen=True)})
    decision, kept = policy.size_pool(GPU, telemetry, frozen, memory, SETTINGS)
    assert decision.desired == 2 and kept.peaks == memory.peaks, "frozen: no change, history kept"
    pinned = Observation(NOW, {"gpu": telemetry}, overrides={"gpu": Override(pinned_desired=1)})
    decision, _ = policy.size_pool(GPU, telemetry, pinned, memory, SETTINGS)
    assert decision.desired == 1, "a pin is the operator's instruction: the forecast does not override it"
    from crossfleet_control.core.capacity_health import PoolHealth

    short = Observation(NOW, {"gpu": telemetry}, health={"gpu": PoolHealth(SHORT, 0.0, False, "no capacity")})
    decision, kept = policy.size_pool(GPU, telemetry, short, memory, SETTINGS)
    assert decision.desired == 2 and "capacity short" in decision.reason, "no launches into a region that said no"
    assert kept.peaks == memory.peaks, "the history survives the shortage"


def _summary(region: str, status: str, peak_want: int, updated_at: float = NOW) -> RegionSummary:
    return RegionSummary(region=region, status=status, admit=1.0 if status == HEALTHY else 0.0, in_service=0,
                         desired=0, max_size=48, queued=0, updated_at=updated_at, peak_want=peak_want)


def test_a_healthy_region_holds_its_share_of_a_short_peers_peak():
    regions = ("us-east-1", "us-east-2", "us-west-2")
    peers = {"us-east-1": _summary("us-east-1", SHORT, 30), "us-east-2": _summary("us-east-2", HEALTHY, 5)}
    floor, note = forecast.failover_floor(peers, "us-west-2", regions, NOW, 300, 1.0)
    assert floor == 15 and "us-east-1" in note, "split over the two regions that can take it"
    stale = {"us-east-1": _summary("us-east-1", SHORT, 30, updated_at=NOW - 600)}
    assert forecast.failover_floor(stale, "us-west-2", regions, NOW, 300, 1.0)[0] == 0, "stale is unknown"
    outside = {"eu-west-1": _summary("eu-west-1", SHORT, 30)}
    assert forecast.failover_floor(outside, "us-west-2", regions, NOW, 300, 1.0)[0] == 0, "only configured regions"
    healthy = {"us-east-1": _summary("us-east-1", HEALTHY, 30)}
    assert forecast.failover_floor(healthy, "us-west-2", regions, NOW, 300, 1.0)[0] == 0

    telemetry = _telemetry(desired=2)
    observation = Observation(NOW, {"gpu": telemetry}, peers=peers, region="us-west-2", configured_regions=regions)
    decision, _ = policy.size_pool(GPU, telemetry, observation, PoolMemory(), SETTINGS)
    assert decision.desired == 15 and "15 for us-east-1" in decision.reason, decision.reason


def test_the_region_summary_publishes_the_gpu_forecast():
    telemetry = _telemetry(desired=12)
    observation = Observation(NOW, {"gpu": telemetry}, region="us-east-1", configured_regions=("us-east-1",))
    memory = policy.ControllerMemory(pools={"gpu": PoolMemory(peaks=((NOW - 900, 12),))})
    decision = policy.decide(observation, {"gpu": GPU}, SETTINGS, memory)
    summary = policy.region_summary(observation, {"gpu": GPU}, SETTINGS, decision)
    assert summary is not None and summary.peak_want == 6, "12 at half the window's age"


def test_the_adapter_reads_sends_and_ages_in_one_documented_get_metric_data_call():
    """The request shape AWS documents for GetMetricData (MetricDataQueries with MetricStat; Id starting with a
    lowercase letter), checked by botocore's own model through the Stubber; the busiest minute's sends win."""
    import datetime

    import boto3
    from botocore.stub import Stubber

    from crossfleet_control.aws.queues import QueueMetrics

    client = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    errors: list[str] = []
    ages = QueueMetrics(client, {"cpu": "dep-cpu", "gpu": "dep-gpu"}, lambda where, error: errors.append(where))
    start = datetime.datetime.fromtimestamp(NOW - 300, tz=datetime.UTC)
    end = datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC)

    def query(kind: str, index: int, queue: str, metric: str, stat: str) -> dict:
        return {"Id": f"{kind}{index}", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": "AWS/SQS", "MetricName": metric,
                       "Dimensions": [{"Name": "QueueName", "Value": queue}]}, "Period": 60, "Stat": stat}}

    with Stubber(client) as stub:
        stub.add_response("get_metric_data", {"MetricDataResults": [
            {"Id": "age0", "Values": [12.0]}, {"Id": "age1", "Values": []},
            {"Id": "sent0", "Values": []}, {"Id": "sent1", "Values": [80.0, 2900.0, 150.0]}]}, {
            "MetricDataQueries": [query("age", 0, "dep-cpu", "ApproximateAgeOfOldestMessage", "Maximum"),
                                  query("age", 1, "dep-gpu", "ApproximateAgeOfOldestMessage", "Maximum"),
                                  query("sent", 0, "dep-cpu", "NumberOfMessagesSent", "Sum"),
                                  query("sent", 1, "dep-gpu", "NumberOfMessagesSent", "Sum")],
            "StartTime": start, "EndTime": end, "ScanBy": "TimestampDescending"})
        assert ages.read(NOW) == ({"cpu": 12.0, "gpu": None}, {"cpu": None, "gpu": 2900})
        stub.add_client_error("get_metric_data", "Throttling", http_status_code=400)
        assert ages.read(NOW) == ({"cpu": None, "gpu": None}, {"cpu": None, "gpu": None}), "unknown, not zero"
    assert errors == ["cloudwatch.get_metric_data"]


def test_saved_history_that_cannot_be_read_is_no_history():
    from crossfleet_control.aws.controller_state import _peaks

    assert _peaks([[NOW, 3], [NOW + 60, 2]]) == ((NOW, 3), (NOW + 60, 2))
    for bad in (None, "x", [[NOW]], [[NOW, "3"]], [[NOW, True]], [[float("nan"), 3]], [{"at": NOW}]):
        assert _peaks(bad) == (), bad


# The fields the first release's readers build their dataclasses from (commit 3bb986c): an item this release
# writes must not carry more inside them, or a rollback (or a peer region still on that release) stops reading.
V1_SERVING_FIELDS = {"pending_cost_target", "calm"}
V1_SUMMARY_FIELDS = {"region", "status", "admit", "in_service", "desired", "max_size", "queued", "updated_at",
                     "wait_seconds", "target_wait_seconds"}


def _state_table(name: str = "dep-state"):
    import boto3

    from crossfleet_control.core.table_schema import PARTITION_KEY, SORT_KEY

    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": PARTITION_KEY, "AttributeType": "S"},
                                              {"AttributeName": SORT_KEY, "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
                                   {"AttributeName": SORT_KEY, "KeyType": "RANGE"}])
    return client


def test_the_forecasts_round_trip_through_the_state_table_and_an_older_release_can_still_read_them():
    import json

    from moto import mock_aws

    from crossfleet_control.aws.controller_state import ControllerState
    from crossfleet_control.aws.health_store import HealthStore
    from crossfleet_control.core.policy_types import ControllerMemory, ServingMemory

    with mock_aws():
        client = _state_table()
        state = ControllerState(client, "dep-state", "us-east-1")
        memory = ControllerMemory(pools={"gpu": PoolMemory(low_since=NOW - 60, peaks=((NOW - 600, 9), (NOW, 4)))},
                                  serving=ServingMemory(pending_cost_target=40, calm=2,
                                                        recent=((NOW - 60, 1.5, 20.0), (NOW, 0.5, 3.0))))
        state.save_memory(memory, fence=1)
        loaded, _ = state.load_controls()
        assert loaded.of("gpu").peaks == ((NOW - 600, 9), (NOW, 4))
        assert loaded.serving == memory.serving
        item = client.get_item(TableName="dep-state", Key=state._key("memory"))["Item"]
        assert set(json.loads(item["data"]["S"])["serving"]) <= V1_SERVING_FIELDS

        store = HealthStore(client, "dep-state", "us-east-1")
        summary = _summary("us-east-1", SHORT, 17)
        store.publish(summary)
        assert store.summaries()["us-east-1"] == summary
        raw = client.scan(TableName="dep-state")["Items"]
        published = next(i for i in raw if "peak_want" in i)
        assert set(json.loads(published["data"]["S"])) <= V1_SUMMARY_FIELDS


def test_the_simulators_burst_signal_is_per_minute_whatever_the_control_period():
    """CloudWatch's NumberOfMessagesSent is a one-minute Sum: with a 5-minute control period the simulator must
    still show the busiest minute, not the busiest 5 minutes (which would size the floor about 5x too large)."""
    from crossfleet.sim.engine import Simulation
    from crossfleet.sim.scenario import parse_scenario
    from tests.test_simulator import small_scenario

    sim = Simulation(parse_scenario(small_scenario(control_period_seconds=300)), [], _NoController())
    pool = sim.pools["us-east-1"]["gpu"]
    for second in range(0, 300):  # 300 sends spread evenly over five minutes: 60 in each
        pool.count_sent(float(second))
    pool.count_sent(400.0, 90)  # a busier minute after them
    assert pool.sent_recently(360.0) == 60, "minute 5 (300-360) is the newest, not yet published"
    assert pool.sent_recently(540.0) == 90, "minute 6 (360-420) is published by 540 s"
    assert pool.sent_recently(900.0) == 0, "out of the 5-minute window"


class _NoController:
    name = "none"

    def route(self, record):  # pragma: no cover - no arrivals
        return "gpu"

    def control(self, now, region, pools, sim) -> None:
        return None


def test_the_spot_price_adapter_reads_the_cheapest_zone_in_the_documented_shape():
    import datetime

    import boto3
    from botocore.stub import Stubber

    from crossfleet_control.aws.spot_prices import SpotPrices

    client = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    errors: list[str] = []
    reader = SpotPrices(client, {"gpu": "g6e.xlarge"}, lambda where, error: errors.append(where))
    start = datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC)
    request = {"InstanceTypes": ["g6e.xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": start,
               "MaxResults": 100}
    with Stubber(client) as stub:
        stub.add_response("describe_spot_price_history", {"SpotPriceHistory": [
            {"AvailabilityZone": "us-east-1a", "InstanceType": "g6e.xlarge", "ProductDescription": "Linux/UNIX",
             "SpotPrice": "1.2500", "Timestamp": start},
            {"AvailabilityZone": "us-east-1b", "InstanceType": "g6e.xlarge", "ProductDescription": "Linux/UNIX",
             "SpotPrice": "0.9800", "Timestamp": start},
            {"AvailabilityZone": "us-east-1b", "InstanceType": "g6e.xlarge", "ProductDescription": "Windows",
             "SpotPrice": "0.1000", "Timestamp": start}]}, request)
        assert reader.current(NOW) == {"gpu": 0.98}
        stub.add_client_error("describe_spot_price_history", "RequestLimitExceeded", http_status_code=503)
        assert reader.current(NOW) == {}, "unreadable: unknown, never a guess"
    assert errors == ["ec2.describe_spot_price_history[gpu]"]


def test_spot_that_saves_nothing_is_left_until_it_saves_again():
    spot_gpu = pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=48,
                         on_demand_percentage=20)
    on_demand = spot_gpu.profile.on_demand_per_hour
    telemetry = _telemetry(desired=4)

    def market(spot: float | None, running: int) -> tuple[int, str]:
        observation = Observation(NOW, {"gpu": telemetry}, on_demand_percentage={"gpu": running},
                                  spot_prices={} if spot is None else {"gpu": spot})
        decision = policy.choose_markets(observation, {"gpu": spot_gpu})["gpu"]
        return decision.desired, decision.reason

    assert market(0.55 * on_demand, 20)[0] == 20
    desired, reason = market(1.6 * on_demand, 20)
    assert desired == 100 and "On-Demand until Spot is below 90%" in reason
    assert market(0.95 * on_demand, 100)[0] == 100, "hysteresis: not back while Spot is within 10% of On-Demand"
    assert market(0.8 * on_demand, 100)[0] == 20, "back to the configured share once Spot saves again"
    assert market(None, 20)[0] == 20, "no price read: the market choice ignores price"
