"""Auto Scaling adapter: each pool's group telemetry, failed launches, desired capacity and On-Demand share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crossfleet_control.aws.errors import AwsError, ErrorSink

DEPLOYMENT_TAG = "crossfleet:deployment"


@dataclass(frozen=True)
class GroupTelemetry:
    desired: int | None
    in_service: int | None
    pending: int | None
    min_size: int | None
    max_size: int | None
    deployment_tag: str | None
    on_demand_percentage: int | None = None  # None: not a mixed-instances group (or unknown)


@dataclass(frozen=True)
class WarmLane:
    """A pool's second group with a warm pool (On-Demand, one type): filled first above the main group's
    minimum, so a scale-out starts stopped, prepared instances before it launches new ones."""

    group_name: str
    max_size: int
    main_min_size: int

    def split(self, desired: int) -> tuple[int, int]:
        """(main, lane) for a pool-wide desired capacity: the main group's minimum stays where it is (its
        always-on floor, Spot where configured), the lane takes the next instances up to its max, the main
        group the rest."""
        lane = max(0, min(self.max_size, desired - self.main_min_size))
        return desired - lane, lane


@dataclass
class AutoScalingFleets:
    client: Any
    group_names: Mapping[str, str]
    on_error: ErrorSink
    failure_window_seconds: float = 900.0
    lanes: Mapping[str, WarmLane] = field(default_factory=dict)
    _mixed_policies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def telemetry(self) -> dict[str, GroupTelemetry]:
        unknown = GroupTelemetry(None, None, None, None, None, None)
        result = {pool: unknown for pool in self.group_names}
        names = [*self.group_names.values(), *(lane.group_name for lane in self.lanes.values())]
        try:
            groups = self.client.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]
        except AwsError as error:
            self.on_error("autoscaling.describe_auto_scaling_groups", error)
            return result
        by_name = {g["AutoScalingGroupName"]: g for g in groups}
        for pool, name in self.group_names.items():
            group = by_name.get(name)
            if group is None:
                self.on_error("autoscaling.describe_auto_scaling_groups", LookupError(f"group {name} not found"))
                continue
            states = [i.get("LifecycleState", "") for i in group.get("Instances", [])]
            tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
            mixed = group.get("MixedInstancesPolicy")
            percentage = None
            if mixed:
                self._mixed_policies[pool] = mixed
                percentage = mixed.get("InstancesDistribution", {}).get("OnDemandPercentageAboveBaseCapacity", 100)
            desired = group["DesiredCapacity"]
            lane = self.lanes.get(pool)
            lane_group = by_name.get(lane.group_name) if lane else None
            if lane_group is not None:
                # One pool, two groups: the policy sees their sum. The warm pool's own instances (Warmed:*) are
                # not in the group's Instances (DescribeWarmPool lists them) and count for nothing here.
                desired += lane_group["DesiredCapacity"]
                states += [i.get("LifecycleState", "") for i in lane_group.get("Instances", [])]
            elif lane is not None:
                self.on_error("autoscaling.describe_auto_scaling_groups",
                              LookupError(f"warm lane {lane.group_name} not found"))
            result[pool] = GroupTelemetry(
                desired=desired, in_service=sum(s == "InService" for s in states),
                pending=sum(s.startswith("Pending") for s in states), min_size=group["MinSize"],
                max_size=group["MaxSize"], deployment_tag=tags.get(DEPLOYMENT_TAG), on_demand_percentage=percentage)
        return result

    def set_on_demand_percentage(self, pool: str, percentage: int) -> None:
        """Spot <-> On-Demand for capacity launched from now on; running instances are left alone.

        The whole policy as last read goes back with only the share changed, so the launch template and the
        type overrides cannot be lost by a partial update. DescribeAutoScalingGroups returns each launch template
        specification with both its id and its name, but UpdateAutoScalingGroup takes "the ID or the name of the
        launch template, but not both" (CloudFormation reference, "AWS::AutoScaling::AutoScalingGroup
        LaunchTemplateSpecification"; refused with a ValidationError, aws/aws-cli#7281): only the id goes back."""
        mixed = self._mixed_policies.get(pool)
        if mixed is None:
            raise LookupError(f"{self.group_names[pool]} has no mixed instances policy to change")
        distribution = {**mixed.get("InstancesDistribution", {}), "OnDemandPercentageAboveBaseCapacity": percentage}
        policy = {**updatable_policy(mixed), "InstancesDistribution": distribution}
        self.client.update_auto_scaling_group(AutoScalingGroupName=self.group_names[pool],
                                              MixedInstancesPolicy=policy)

    def failed_launches(self, pool: str, now: float) -> int | None:
        return self.launch_activity(pool, now)[0]

    def launch_activity(self, pool: str, now: float) -> tuple[int | None, int | None]:
        """(failed, successful) launch activities of the last `failure_window_seconds`, from one call (the 20 most
        recent activities). A launch counts as successful when EC2 started the instance, whether or not it then
        became usable: the runaway guard compares these with what is in service (failure case 18)."""
        lane = self.lanes.get(pool)
        names = [self.group_names[pool], *([lane.group_name] if lane else [])]
        activities: list[dict[str, Any]] = []
        try:
            # The warm lane's launches and failures are the pool's too (one call per group).
            for name in names:
                activities += self.client.describe_scaling_activities(
                    AutoScalingGroupName=name, MaxRecords=20)["Activities"]
        except AwsError as error:
            self.on_error(f"autoscaling.describe_scaling_activities[{pool}]", error)
            return None, None
        recent = [a for a in activities if _epoch(a.get("StartTime")) >= now - self.failure_window_seconds]
        failed = sum(1 for a in recent if a.get("StatusCode") in ("Failed", "Cancelled"))
        # A launch into the warm lane's pool is preparation, not capacity asked for: it never shows as in service
        # or pending, so counting it would let a deploy or a run of refills trip the runaway guard. Only the
        # in-service launches count ("Launching a new EC2 instance: i-..."; preparations name the warm pool).
        launched = sum(1 for a in recent if a.get("StatusCode") == "Successful"
                       and str(a.get("Description", "")).startswith("Launching a new EC2 instance")
                       and "warm pool" not in str(a.get("Description", "")).lower())
        return failed, launched

    def set_desired(self, pool: str, desired: int) -> None:
        lane = self.lanes.get(pool)
        if lane is not None:
            main, lane_desired = lane.split(desired)
            self.client.set_desired_capacity(AutoScalingGroupName=lane.group_name, DesiredCapacity=lane_desired,
                                             HonorCooldown=False)
            desired = main
        self.client.set_desired_capacity(AutoScalingGroupName=self.group_names[pool], DesiredCapacity=desired,
                                         HonorCooldown=False)


def updatable_policy(mixed: Mapping[str, Any]) -> dict[str, Any]:
    """A described mixed-instances policy in the shape UpdateAutoScalingGroup accepts (id, not id and name)."""
    template = dict(mixed.get("LaunchTemplate", {}))
    if "LaunchTemplateSpecification" in template:
        template["LaunchTemplateSpecification"] = _one_identifier(template["LaunchTemplateSpecification"])
    template["Overrides"] = [
        {**o, "LaunchTemplateSpecification": _one_identifier(o["LaunchTemplateSpecification"])}
        if "LaunchTemplateSpecification" in o else dict(o)
        for o in template.get("Overrides", [])]
    if not template["Overrides"]:
        del template["Overrides"]
    return {**mixed, "LaunchTemplate": template}


def _one_identifier(spec: Mapping[str, Any]) -> dict[str, Any]:
    # Keep the id: it is what the stack's Ref gave the group, so the request names the same template.
    if spec.get("LaunchTemplateId"):
        return {k: v for k, v in spec.items() if k != "LaunchTemplateName"}
    return dict(spec)


def _epoch(value: Any) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else 0.0

