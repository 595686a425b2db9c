"""The rebalancer: a scheduled arm64 Lambda per region, scoped to this deployment's groups, queues and table."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Arn, ArnComponents, ArnFormat, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from crossfleet.config.control import RebalancerConfig
from crossfleet.config.offerings import offerings
from stacks.constructs.controller_function import controller_function
from stacks.constructs.realtime_endpoint import RealtimeEndpoint
from stacks.constructs.state_table import StateTable, leading_keys_condition, partition_prefixes
from stacks.constructs.work_queues import WorkQueues

DEPLOYMENT_TAG = "crossfleet:deployment"


@dataclass(frozen=True)
class PoolGroup:
    """What the rebalancer is told about one pool's Auto Scaling group."""

    group_name: str
    instance_types: tuple[str, ...]  # priority order; the first sizes the pool
    min_size: int
    max_size: int
    on_demand_percentage: int  # configured share above base; 100 means no Spot
    launch_template: ec2.LaunchTemplate
    instance_role: iam.IRole
    # (group name, max size) of the pool's warm lane, which the rebalancer fills first (GPU pool only).
    warm_lane: tuple[str, int] | None = None
    # The config's price overrides ($/hour per instance; None: the pinned price table).
    on_demand_price_per_hour: float | None = None
    spot_price_per_hour: float | None = None


@dataclass(frozen=True)
class PeerNames:
    """Another configured region's names, which follow the deployment's naming convention."""

    region: str
    gpu_queue_name: str
    table_name: str


class Rebalancer(Construct):
    function: lambda_.Function
    schedule: events.Rule
    log_group: logs.LogGroup

    def __init__(self, scope: Construct, id_: str, *, config: RebalancerConfig, deployment: str, region: str,
                 queues: WorkQueues, state: StateTable, groups: dict[str, PoolGroup],
                 peers: tuple[PeerNames, ...] = (), max_receive_count: int = 5,
                 endpoint: RealtimeEndpoint | None = None, vpc_arn: str | None = None) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        schedule_seconds = config.schedule_minutes * 60
        # The function must finish before the next tick; the lease outlives a run but not a tick.
        timeout_seconds = min(schedule_seconds - 5, 240)
        table = offerings()
        settings = {
            "deployment": deployment, "region": region, "mode": config.mode,
            "table_name": state.table.table_name,
            "schedule_seconds": schedule_seconds, "lease_seconds": timeout_seconds + 5,
            "decision_ttl_seconds": config.decision_ttl_days * 86400,
            "pools": {pool: {
                "group_name": g.group_name, "queue_url": queues.pools[pool].queue.queue_url,
                "dead_letter_url": queues.pools[pool].dead_letter_queue.queue_url,
                "instance_type": g.instance_types[0], "vcpus": table[g.instance_types[0]].vcpus,
                "accelerators": table[g.instance_types[0]].accelerator_count, "min_size": g.min_size,
                "max_size": g.max_size, "instance_types": list(g.instance_types),
                "on_demand_percentage": g.on_demand_percentage,
                **({"warm_lane_group": g.warm_lane[0], "warm_lane_max": g.warm_lane[1]} if g.warm_lane else {}),
                **({"on_demand_price_per_hour": g.on_demand_price_per_hour}
                   if g.on_demand_price_per_hour is not None else {}),
                **({"spot_price_per_hour": g.spot_price_per_hour} if g.spot_price_per_hour is not None else {}),
            } for pool, g in groups.items()},
            "policy": config.policy_fields(),
            "max_receive_count": max_receive_count,
            # Failover targets: only the other configured regions, by name (same account, same convention).
            "peers": {peer.region: {
                "gpu_queue_url": f"https://sqs.{peer.region}.amazonaws.com/{stack.account}/{peer.gpu_queue_name}",
                "table_name": peer.table_name} for peer in peers},
        }
        if endpoint is not None:
            settings["endpoint"] = {
                "rule_arn": endpoint.rule.listener_rule_arn,
                "load_balancer_full_name": endpoint.load_balancer.load_balancer_full_name,
                "target_groups": {pool: {"arn": tg.target_group_arn, "full_name": tg.target_group_full_name}
                                  for pool, tg in endpoint.target_groups.items()},
                "serving": {**endpoint.config.serving_settings(), "period_seconds": schedule_seconds},
            }

        controller = controller_function(
            self, handler="crossfleet_control.handlers.rebalancer.handler",
            description=f"crossfleet rebalancer for {deployment} in {region}: its groups, queues and state only",
            environment={"CROSSFLEET_SETTINGS": stack.to_json_string(settings)}, timeout_seconds=timeout_seconds)
        self.function, self.log_group, role = controller.function, controller.log_group, controller.role
        self.schedule = events.Rule(
            self, "Schedule", schedule=events.Schedule.rate(Duration.minutes(config.schedule_minutes)),
            # A missed tick is replaced by the next one; retrying an old tick would act on stale data.
            targets=[targets.LambdaFunction(self.function, retry_attempts=0,
                                            max_event_age=Duration.seconds(schedule_seconds))])

        for pool in groups:
            queues.pools[pool].queue.grant_send_messages(role)
            queues.pools[pool].queue.grant_consume_messages(role)
            queues.pools[pool].queue.grant(role, "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes")
            queues.pools[pool].dead_letter_queue.grant_send_messages(role)
        # Its lease, memory and the overrides it reads (rebalancer#REGION), its decision log, this region's breakers
        # and GPU summary, and the ledger of jobs it moves; nothing it does deletes an item.
        keys = partition_prefixes(region)
        owned = [keys["controller"], keys["decisions"], keys["capacity"], keys["jobs"]]
        state.grant_keys(role, "OwnPartitions", read=owned, write=owned)
        group_arns = [Arn.format(ArnComponents(
            service="autoscaling", resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{g.group_name}", arn_format=ArnFormat.COLON_RESOURCE_NAME), stack)
            for g in groups.values()]
        # The warm lanes the rebalancer fills first: desired capacity only (no market switch: a lane is On-Demand).
        lane_arns = [Arn.format(ArnComponents(
            service="autoscaling", resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{g.warm_lane[0]}", arn_format=ArnFormat.COLON_RESOURCE_NAME),
            stack) for g in groups.values() if g.warm_lane]
        own_group = {"StringEquals": {f"aws:ResourceTag/{DEPLOYMENT_TAG}": deployment}}
        role.add_to_policy(iam.PolicyStatement(
            # Desired capacity has no IAM condition key: its ceiling is the group's MaxSize, which only the stack
            # sets (the Deny statements below keep the rebalancer from changing it).
            sid="SizeOnlyThisDeploymentsGroups", actions=["autoscaling:SetDesiredCapacity"],
            resources=group_arns + lane_arns, conditions=own_group))
        configured_types = sorted({t for g in groups.values() for t in g.instance_types})
        for (pool, group), group_arn in zip(groups.items(), group_arns, strict=True):
            role.add_to_policy(iam.PolicyStatement(
                # UpdateAutoScalingGroup switches Spot <-> On-Demand (the On-Demand share of the mixed policy),
                # re-sending the group's own overrides: every instance type in the request must be one configured
                # for that group (autoscaling:InstanceTypes; Service Authorization Reference, "Actions, resources,
                # and condition keys for Amazon EC2 Auto Scaling"). The InstancesDistribution fields (On-Demand base
                # and share, Spot strategy) have no condition key and cannot be bounded in IAM; the code clamps them.
                sid=f"SwitchMarketOnlyWithConfiguredTypes{pool.capitalize()}",
                actions=["autoscaling:UpdateAutoScalingGroup"], resources=[group_arn],
                conditions={**own_group,
                            "ForAllValues:StringEquals": {"autoscaling:InstanceTypes": list(group.instance_types)}}))
        # Ceilings: an UpdateAutoScalingGroup that carries a size bound, subnets or a launch configuration is refused
        # whatever else allows it. Null "false" means "the request carries this key"; one statement per key because
        # the keys of one condition block must all match. The launch template itself is bounded by ec2:RunInstances
        # on this stack's templates only (Auto Scaling checks the caller may launch the template it is given).
        for key, what in (("autoscaling:MaxSize", "MaxSize"), ("autoscaling:MinSize", "MinSize"),
                          ("autoscaling:VPCZoneIdentifiers", "Subnets"),
                          ("autoscaling:LaunchConfigurationName", "LaunchConfiguration")):
            role.add_to_policy(iam.PolicyStatement(
                sid=f"NeverChange{what}", effect=iam.Effect.DENY,
                actions=["autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateAutoScalingGroup"],
                resources=["*"], conditions={"Null": {key: "false"}}))
        spot_groups = [g for g in groups.values() if g.on_demand_percentage < 100]
        if spot_groups:
            # Updating a mixed-instances policy re-submits its launch template, which needs permission to use
            # that template (and only it) and to pass its instance role to EC2.
            role.add_to_policy(iam.PolicyStatement(
                sid="UseOwnLaunchTemplatesOnly", actions=["ec2:RunInstances", "ec2:CreateTags"],
                resources=["*"],
                conditions={"ArnLike": {"ec2:LaunchTemplate": [Arn.format(ArnComponents(
                    service="ec2", resource="launch-template", resource_name=g.launch_template.launch_template_id),
                    stack) for g in spot_groups]}, "Bool": {"ec2:IsLaunchTemplateResource": "true"}}))
            role.add_to_policy(iam.PolicyStatement(
                sid="PassOwnInstanceRoles", actions=["iam:PassRole"],
                resources=[g.instance_role.role_arn for g in spot_groups],
                conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}))
            # What a re-submitted launch may create: only configured instance types, only in this VPC (ec2:InstanceType
            # on instance resources, ec2:Vpc on subnets, interfaces and security groups; Service Authorization
            # Reference, "Actions, resources, and condition keys for Amazon EC2").
            role.add_to_policy(iam.PolicyStatement(
                sid="LaunchOnlyConfiguredTypes", effect=iam.Effect.DENY, actions=["ec2:RunInstances"],
                resources=[f"arn:{stack.partition}:ec2:*:*:instance/*"],
                conditions={"StringNotEquals": {"ec2:InstanceType": configured_types}}))
            if vpc_arn is not None:
                role.add_to_policy(iam.PolicyStatement(
                    sid="LaunchOnlyIntoThisVpc", effect=iam.Effect.DENY, actions=["ec2:RunInstances"],
                    resources=[f"arn:{stack.partition}:ec2:*:*:{kind}/*"
                               for kind in ("subnet", "network-interface", "security-group")],
                    conditions={"StringNotEquals": {"ec2:Vpc": vpc_arn}}))
        if peers:
            role.add_to_policy(iam.PolicyStatement(
                sid="FailoverToOtherConfiguredRegionsGpuQueue", actions=["sqs:SendMessage"],
                resources=[Arn.format(ArnComponents(service="sqs", region=peer.region, resource=peer.gpu_queue_name),
                                      stack) for peer in peers]))
            role.add_to_policy(iam.PolicyStatement(
                sid="ReadOtherRegionsCapacitySummaryOnly", actions=["dynamodb:GetItem"],
                resources=[Arn.format(ArnComponents(service="dynamodb", region=peer.region, resource="table",
                                                    resource_name=peer.table_name), stack) for peer in peers],
                conditions=leading_keys_condition(["capacity#*"])))
        if endpoint is not None:
            role.add_to_policy(iam.PolicyStatement(
                sid="TurnOnlyTheEndpointsRule", actions=["elasticloadbalancing:ModifyRule"],
                resources=[endpoint.rule.listener_rule_arn]))
            role.add_to_policy(iam.PolicyStatement(
                # Describe calls do not support resource-level permissions.
                sid="ReadEndpointRules", actions=["elasticloadbalancing:DescribeRules"], resources=["*"]))
        role.add_to_policy(iam.PolicyStatement(
            sid="DescribeGroupsAndActivities",
            actions=["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities"],
            # Describe calls do not support resource-level permissions.
            resources=["*"]))
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadQueueAgeMetrics", actions=["cloudwatch:GetMetricData"],
            # GetMetricData supports no resource-level permissions; it reads metrics only.
            resources=["*"]))
        if any(g.on_demand_percentage < 100 for g in groups.values()):
            role.add_to_policy(iam.PolicyStatement(
                sid="ReadSpotPrices", actions=["ec2:DescribeSpotPriceHistory"],
                # Describe calls do not support resource-level permissions; public price data only.
                resources=["*"]))
        role.add_to_policy(iam.PolicyStatement(
            sid="NeverRetagGroups", effect=iam.Effect.DENY,
            actions=["autoscaling:CreateOrUpdateTags", "autoscaling:DeleteTags"], resources=["*"]))
