"""The rebalancer with a real-time endpoint, against moto's ELBv2, Auto Scaling, DynamoDB and CloudWatch.

moto stores and aggregates Sum, Minimum and friends but cannot compute percentile statistics (a p99 query comes
back as None and fails to serialize), so `AlbMetrics` plays the load balancer: it publishes RequestCount and
HealthyHostCount into moto's CloudWatch each minute and answers only the p50/p99 queries itself.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import replace
from itertools import pairwise
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.core.capacity_health import Offering, Signal
from crossfleet_control.core.serving import ServingSettings
from crossfleet_control.core.settings import EndpointSettings, EndpointTargets
from crossfleet_control.orchestration.rebalance_cycle import run_cycle
from tests.aws_region import Region, build_region

PERCENTILES = ("p50", "p99")


class AlbMetrics:
    def __init__(self, cloudwatch: Any) -> None:
        self.cloudwatch = cloudwatch
        self.percentiles: dict[tuple[str, str], float] = {}

    def publish(self, now: float, balancer: str, target_group: str, *, requests: float, healthy: int,
                p50: float, p99: float) -> None:
        at = datetime.datetime.fromtimestamp(now - now % 60 - 30, tz=datetime.UTC)
        dimensions = [{"Name": "TargetGroup", "Value": target_group}, {"Name": "LoadBalancer", "Value": balancer}]
        self.cloudwatch.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
            {"MetricName": "RequestCount", "Dimensions": dimensions, "Value": requests, "Timestamp": at},
            {"MetricName": "HealthyHostCount", "Dimensions": dimensions, "Value": healthy, "Timestamp": at}])
        self.percentiles[(target_group, "p50")] = p50
        self.percentiles[(target_group, "p99")] = p99

    def get_metric_data(self, *, MetricDataQueries: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        plain = [q for q in MetricDataQueries if q["MetricStat"]["Stat"] not in PERCENTILES]
        results = {r["Id"]: r for r in self.cloudwatch.get_metric_data(MetricDataQueries=plain, **kwargs)[
            "MetricDataResults"]} if plain else {}
        for query in MetricDataQueries:
            stat = query["MetricStat"]["Stat"]
            if stat in PERCENTILES:
                group = query["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
                value = self.percentiles.get((group, stat))
                results[query["Id"]] = {"Id": query["Id"], "Values": [] if value is None else [value]}
        return {"MetricDataResults": [results[q["Id"]] for q in MetricDataQueries]}


class Endpoint:
    """One region with an endpoint in moto: a load balancer, a target group per pool attached to its group, and
    one weighted listener rule, as the stack builds them."""

    def __init__(self, *, mode: str = "enforce", gpu_weight: int = 50) -> None:
        self.now = time.time()
        self.region: Region = build_region(cpu_desired=2, gpu_desired=2, gpu_max=4)
        ec2, elbv2 = self.region.client("ec2"), self.region.client("elbv2")
        vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.40.{i}.0/24", AvailabilityZone=f"us-east-1{z}")[
            "Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
        balancer = elbv2.create_load_balancer(Name="crossfleet-test", Subnets=subnets, Scheme="internal",
                                              Type="application")["LoadBalancers"][0]
        self.groups = {}
        for pool, port in (("cpu", 8080), ("gpu", 8000)):
            group = elbv2.create_target_group(Name=f"crossfleet-test-{pool}", Protocol="HTTP", Port=port,
                                              VpcId=vpc, HealthCheckPath="/health")["TargetGroups"][0]
            self.region.client("autoscaling").attach_load_balancer_target_groups(
                AutoScalingGroupName=self.region.settings.pools[pool].group_name,
                TargetGroupARNs=[group["TargetGroupArn"]])
            self.groups[pool] = group["TargetGroupArn"]
        listener = elbv2.create_listener(LoadBalancerArn=balancer["LoadBalancerArn"], Protocol="HTTP", Port=80,
                                         DefaultActions=[{"Type": "fixed-response",
                                                          "FixedResponseConfig": {"StatusCode": "404"}}])
        self.rule_arn = elbv2.create_rule(
            ListenerArn=listener["Listeners"][0]["ListenerArn"], Priority=10,
            Conditions=[{"Field": "path-pattern", "Values": ["/*"]}],
            Actions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
                {"TargetGroupArn": self.groups["cpu"], "Weight": 100 - gpu_weight},
                {"TargetGroupArn": self.groups["gpu"], "Weight": gpu_weight}]}}])["Rules"][0]["RuleArn"]
        self.balancer = balancer["LoadBalancerArn"].split(":loadbalancer/", 1)[1]
        self.full_names = {pool: arn.split(":", 5)[5] for pool, arn in self.groups.items()}
        self.region.settings = replace(self.region.settings, mode=mode, endpoint=EndpointSettings(
            rule_arn=self.rule_arn, load_balancer_full_name=self.balancer,
            target_groups={p: EndpointTargets(self.groups[p], self.full_names[p]) for p in ("cpu", "gpu")},
            serving=ServingSettings(latency_slo_p99_seconds=2.0, max_weight_step=20, calm_cycles=3)))
        self.deps = self.region.deps()
        self.deps.clock = lambda: self.now
        self.metrics = AlbMetrics(self.region.client("cloudwatch"))
        assert self.deps.endpoint is not None
        self.deps.endpoint.cloudwatch = self.metrics
        self.healthy_override: dict[str, int] = {}

    def weights(self) -> dict[str, int]:
        rule = self.region.client("elbv2").describe_rules(RuleArns=[self.rule_arn])["Rules"][0]
        by_arn = {g["TargetGroupArn"]: g["Weight"] for g in rule["Actions"][0]["ForwardConfig"]["TargetGroups"]}
        return {pool: by_arn[arn] for pool, arn in self.groups.items()}

    def in_service(self, pool: str) -> int:
        group = self.region.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.region.settings.pools[pool].group_name])["AutoScalingGroups"][0]
        return sum(i["LifecycleState"] == "InService" for i in group["Instances"])

    def minute(self, *, rate: float = 10.0, p99: dict[str, float] | None = None) -> dict[str, Any]:
        """The load balancer's last minute at `rate` requests/s split by the rule, then one rebalancer cycle."""
        p99 = p99 or {"cpu": 1.0, "gpu": 0.4}
        weights = self.weights()
        for pool in ("cpu", "gpu"):
            healthy = self.healthy_override.get(pool, self.in_service(pool))
            self.metrics.publish(self.now, self.balancer, self.full_names[pool],
                                 requests=rate * 60 * weights[pool] / 100, healthy=healthy,
                                 p50=p99[pool] / 3, p99=p99[pool])
        result = run_cycle(self.deps, {}, holder="test", remaining_ms=lambda: 50_000)
        assert result["status"] == "ok", result
        self.now += 60
        return self.deps.state.recent_decisions(1)[0]


def test_handler_reads_the_endpoint_and_turns_the_rule_toward_the_cheaper_split_after_calm_cycles():
    with mock_aws():
        endpoint = Endpoint(gpu_weight=50)
        history = []
        for _ in range(8):
            record = endpoint.minute(rate=10.0)
            history.append(endpoint.weights()["gpu"])
        assert history[:2] == [50, 50], "a cost move waits for calm cycles"
        # Short requests (the weighted rule's only traffic) are cheapest on this region's Graviton pool under the
        # service model: the rule turns there in bounded steps.
        assert history[-1] == 0 and all(abs(b - a) <= 20 for a, b in pairwise(history))
        assert sum(endpoint.weights().values()) == 100
        assert "cheapest split" in record["endpoint"]["reason"]
        assert "real-time endpoint" in record["pools"]["cpu"]["reason"], "Graviton instances sized for its share"


def test_latency_over_the_slo_moves_traffic_at_once_and_no_healthy_targets_means_no_traffic():
    with mock_aws():
        endpoint = Endpoint(gpu_weight=50)
        record = endpoint.minute(rate=2.0, p99={"cpu": 6.0, "gpu": 0.4})
        assert endpoint.weights() == {"cpu": 30, "gpu": 70}
        assert "Graviton p99 6.00s over the 2.00s SLO" in record["endpoint"]["reason"]
        endpoint.healthy_override["gpu"] = 0
        record = endpoint.minute(rate=2.0)
        assert endpoint.weights() == {"cpu": 100, "gpu": 0}, "safety is not step-limited"
        assert "no healthy hosts" in record["endpoint"]["reason"]


def test_observe_mode_and_a_frozen_endpoint_change_nothing_but_record_why():
    with mock_aws():
        observing = Endpoint(mode="observe", gpu_weight=50)
        record = observing.minute(rate=2.0, p99={"cpu": 6.0, "gpu": 0.4})
        assert record["endpoint"]["gpu_weight"] == 70 and observing.weights() == {"cpu": 50, "gpu": 50}
    with mock_aws():
        frozen = Endpoint(gpu_weight=50)
        frozen.deps.state.set_override("endpoint", frozen=True, note="model rollout")
        record = frozen.minute(rate=2.0, p99={"cpu": 6.0, "gpu": 0.4})
        assert frozen.weights() == {"cpu": 50, "gpu": 50} and "model rollout" in record["endpoint"]["reason"]


def test_gpu_shortage_shifts_traffic_to_graviton_and_back_after_recovery():
    # A rate at which one p5.48xlarge is cheaper than the Graviton instances its short requests would need.
    RATE = 40.0
    with mock_aws():
        endpoint = Endpoint(gpu_weight=100)
        for _ in range(2):
            endpoint.minute(rate=RATE)
        assert endpoint.weights()["gpu"] == 100
        store = HealthStore(endpoint.region.client("dynamodb"), endpoint.region.settings.table_name, "us-east-1")
        gpu_types = endpoint.region.settings.pools["gpu"].instance_types
        store.record([Signal(Offering("us-east-1", "gpu", t, "on-demand"), "insufficient_capacity", endpoint.now,
                             "We currently do not have sufficient capacity") for t in gpu_types])
        during = [endpoint.minute(rate=RATE) for _ in range(3)]
        shares = [r["endpoint"]["gpu_weight"] for r in during]
        assert shares == sorted(shares, reverse=True) and shares[-1] < 100, shares
        assert all(100 - s <= 20 * (i + 1) for i, s in enumerate(shares)), "bounded steps"
        assert "GPU capacity short" in during[0]["endpoint"]["reason"]
        # Capacity is back: two launches close the half-open breaker, then its admitted share ramps up.
        endpoint.now += 120
        store.record([Signal(Offering("us-east-1", "gpu", t, "on-demand"), "success", endpoint.now, "launched")
                      for t in gpu_types for _ in range(2)])
        records = [endpoint.minute(rate=RATE) for _ in range(20)]
        after = [r["endpoint"] for r in records]
        back = [a["gpu_weight"] for a in after]
        assert back[-1] == 100, [(a["gpu_weight"], a["reason"]) for a in after]
        assert back == sorted(back), f"no flapping on the way back: {back}"
        for record, weight in zip(records, back, strict=True):
            admitted = record["health"]["gpu"]["admit"] * 100
            assert weight <= max(shares[-1], admitted), "traffic returns no faster than the GPU pool's admitted share"


class Throttled:
    def get_metric_data(self, **_: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "GetMetricData")


@pytest.mark.parametrize("broken", ["rule", "metrics"])
def test_an_unreadable_rule_or_unreadable_metrics_hold_the_split(broken: str):
    with mock_aws():
        endpoint = Endpoint(gpu_weight=50)
        elbv2 = endpoint.region.client("elbv2")
        if broken == "rule":  # changed by hand: it no longer names both target groups
            elbv2.modify_rule(RuleArn=endpoint.rule_arn, Actions=[{"Type": "forward", "ForwardConfig": {
                "TargetGroups": [{"TargetGroupArn": endpoint.groups["cpu"], "Weight": 100}]}}])
        else:
            endpoint.deps.endpoint.cloudwatch = Throttled()
        before = elbv2.describe_rules(RuleArns=[endpoint.rule_arn])["Rules"][0]["Actions"]
        result = run_cycle(endpoint.deps, {}, holder="test", remaining_ms=lambda: 50_000)
        assert result["status"] == "ok", "the queues and pools are still rebalanced"
        record = endpoint.deps.state.recent_decisions(1)[0]
        assert "unknown" in record["endpoint"]["reason"]
        assert elbv2.describe_rules(RuleArns=[endpoint.rule_arn])["Rules"][0]["Actions"] == before


def test_an_operator_pins_the_split_with_the_cli_override_and_drain_is_refused():
    from types import SimpleNamespace

    from crossfleet import ops

    with mock_aws():
        endpoint = Endpoint(gpu_weight=50)
        view = SimpleNamespace(settings=endpoint.region.settings)
        ops.check_pool(view, "endpoint", "pin")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="pin the endpoint at 0 or 100"):
            ops.check_pool(view, "endpoint", "drain")  # type: ignore[arg-type]
        endpoint.deps.state.set_override("endpoint", pinned_desired=10, note="GPU driver rollout")
        record = endpoint.minute(rate=10.0)
        assert endpoint.weights() == {"cpu": 90, "gpu": 10} and "GPU driver rollout" in record["endpoint"]["reason"]
        assert ops._traffic(record["endpoint"], "cpu") == "90%"


def test_a_frozen_pool_holds_the_split_and_plan_shows_the_endpoint_without_turning_it():
    from crossfleet.cli import _endpoint_line
    from crossfleet_control.orchestration.rebalance_cycle import plan

    with mock_aws():
        endpoint = Endpoint(gpu_weight=50)
        endpoint.metrics.publish(endpoint.now, endpoint.balancer, endpoint.full_names["cpu"], requests=60,
                                 healthy=2, p50=2.0, p99=6.0)
        endpoint.metrics.publish(endpoint.now, endpoint.balancer, endpoint.full_names["gpu"], requests=60,
                                 healthy=2, p50=0.1, p99=0.4)
        planned = plan(endpoint.deps)
        assert planned["endpoint"]["gpu_weight"] == 70 and endpoint.weights() == {"cpu": 50, "gpu": 50}
        # What `crossfleet plan` prints: the share's next change and why.
        line = _endpoint_line(planned["endpoint"])
        assert line.startswith("endpoint: GPU share 50% -> 70%: toward GPUs: Graviton p99 6.00s"), line
        endpoint.deps.state.set_override("gpu", frozen=True, note="driver rollout")
        record = endpoint.minute(rate=2.0, p99={"cpu": 6.0, "gpu": 0.4})
        assert endpoint.weights() == {"cpu": 50, "gpu": 50}
        assert "pool gpu frozen by operator" in record["endpoint"]["reason"]
