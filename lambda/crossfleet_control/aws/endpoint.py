"""The real-time endpoint's AWS side: its listener rule's weights (ELBv2) and its target groups' metrics
(CloudWatch AWS/ApplicationELB). boto3 clients are injected; errors become unknowns, which the policy holds on."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossfleet_control.aws.errors import AwsError
from crossfleet_control.core.policy_types import Override
from crossfleet_control.core.serving import ServingOverride, TargetTelemetry, split
from crossfleet_control.core.settings import EndpointSettings

# Per target group: (metric, statistic) in the order TargetTelemetry takes them.
METRICS = (("RequestCount", "Sum"), ("TargetResponseTime", "p50"), ("TargetResponseTime", "p99"),
           ("HealthyHostCount", "Minimum"))


@dataclass
class EndpointClient:
    elbv2: Any
    cloudwatch: Any
    settings: EndpointSettings
    on_error: Any

    def gpu_weight(self) -> int | None:
        """The listener rule's GPU weight as a share of 100 (None if the rule could not be read)."""
        try:
            rules = self.elbv2.describe_rules(RuleArns=[self.settings.rule_arn])["Rules"]
        except AwsError as error:
            self.on_error("elbv2.describe_rules", error)
            return None
        weights = {}
        for action in rules[0].get("Actions", []) if rules else []:
            for group in action.get("ForwardConfig", {}).get("TargetGroups", []):
                weights[group["TargetGroupArn"]] = int(group.get("Weight", 1))
        arns = {pool: t.arn for pool, t in self.settings.target_groups.items()}
        if set(arns.values()) - set(weights):
            return None  # someone changed the rule by hand: unknown until it names both target groups again
        total = sum(weights[arn] for arn in arns.values())
        return round(100 * weights[arns["gpu"]] / total) if total else None

    def set_gpu_weight(self, gpu_weight: int) -> bool:
        weights = split(gpu_weight)
        try:
            self.elbv2.modify_rule(RuleArn=self.settings.rule_arn, Actions=[{
                "Type": "forward", "ForwardConfig": {"TargetGroups": [
                    {"TargetGroupArn": t.arn, "Weight": weights[pool]}
                    for pool, t in self.settings.target_groups.items()]}}])
        except AwsError as error:
            self.on_error("elbv2.modify_rule", error)
            return False
        return True

    def telemetry(self, now: float, period_seconds: int = 60) -> dict[str, TargetTelemetry]:
        """One GetMetricData call for every target group's request count, p50/p99 response time and healthy
        hosts over the last full period. A metric with no datapoint is unknown, except request count (ALB
        publishes nothing for a period with no requests)."""
        pools = list(self.settings.target_groups)
        queries = []
        for i, pool in enumerate(pools):
            dimensions = [{"Name": "TargetGroup", "Value": self.settings.target_groups[pool].full_name},
                          {"Name": "LoadBalancer", "Value": self.settings.load_balancer_full_name}]
            for j, (metric, stat) in enumerate(METRICS):
                queries.append({"Id": f"m{i}_{j}", "ReturnData": True, "MetricStat": {
                    "Metric": {"Namespace": "AWS/ApplicationELB", "MetricName": metric, "Dimensions": dimensions},
                    "Period": period_seconds, "Stat": stat}})
        end = now - now % period_seconds
        unknown = {pool: TargetTelemetry(None, None, None, None) for pool in pools}
        try:
            results = self.cloudwatch.get_metric_data(
                MetricDataQueries=queries,
                StartTime=datetime.datetime.fromtimestamp(end - 3 * period_seconds, tz=datetime.UTC),
                EndTime=datetime.datetime.fromtimestamp(end, tz=datetime.UTC), ScanBy="TimestampDescending",
            )["MetricDataResults"]
        except AwsError as error:
            self.on_error("cloudwatch.get_metric_data", error)
            return unknown
        values: dict[tuple[int, int], float] = {}
        for result in results:
            if result.get("Values"):
                i, j = (int(x) for x in result["Id"][1:].split("_"))
                values[(i, j)] = float(result["Values"][0])
        return {pool: TargetTelemetry(requests=values.get((i, 0), 0.0), p50_seconds=values.get((i, 1)),
                                      p99_seconds=values.get((i, 2)), healthy_hosts=values.get((i, 3)))
                for i, pool in enumerate(pools)}


def serving_override(overrides: Mapping[str, Override]) -> ServingOverride:
    """An operator's `freeze endpoint` / `pin endpoint N` (N: the GPU share in percent)."""
    frozen_pools = tuple(sorted(pool for pool, o in overrides.items() if pool != "endpoint" and o.frozen))
    override = overrides.get("endpoint")
    if override is None:
        return ServingOverride(frozen_pools=frozen_pools)
    return ServingOverride(frozen=override.frozen, pinned_gpu_weight=override.pinned_desired, note=override.note,
                           frozen_pools=frozen_pools)
