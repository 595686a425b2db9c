"""Capacity signals: EventBridge rules for launch results, Spot notices and Capacity Block ends, feeding a Lambda
that keeps one circuit breaker per offering in the state table."""

from __future__ import annotations

from aws_cdk import Arn, ArnComponents, ArnFormat, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crossfleet_control.core.capacity_signals import (
    BLOCK_ENDING,
    LAUNCH_SUCCESSFUL,
    LAUNCH_UNSUCCESSFUL,
    REBALANCE,
    SPOT_WARNING,
)
from stacks.constructs.controller_function import controller_function
from stacks.constructs.rebalancer import DEPLOYMENT_TAG
from stacks.constructs.state_table import StateTable, partition_prefixes


class CapacityEvents(Construct):
    function: lambda_.Function
    log_group: logs.LogGroup
    dead_letters: sqs.Queue
    rules: dict[str, events.Rule]

    def __init__(self, scope: Construct, id_: str, *, deployment: str, region: str, state: StateTable,
                 groups: dict[str, str], capacity_block_id: str | None, block_instance_type: str | None,
                 lanes: dict[str, str] | None = None) -> None:
        """`groups` maps pool -> Auto Scaling group name; `lanes` a pool's further groups (name -> pool)."""
        super().__init__(scope, id_)
        stack = Stack.of(self)
        lanes = lanes or {}
        settings = {"deployment": deployment, "region": region, "table_name": state.table.table_name,
                    "groups": groups, "capacity_block_id": capacity_block_id, "block_pool": "gpu",
                    "block_instance_type": block_instance_type, **({"lanes": lanes} if lanes else {})}
        controller = controller_function(
            self, handler="crossfleet_control.handlers.capacity_events.handler",
            description=f"crossfleet capacity events for {deployment} in {region}: breakers per offering",
            environment={"CROSSFLEET_EVENT_SETTINGS": stack.to_json_string(settings)}, timeout_seconds=30)
        self.function, self.log_group, role = controller.function, controller.log_group, controller.role
        # A signal that cannot be recorded is kept for inspection rather than lost.
        self.dead_letters = sqs.Queue(self, "DeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED,
                                      enforce_ssl=True, retention_period=Duration.days(14))
        target = targets.LambdaFunction(self.function, retry_attempts=4, max_event_age=Duration.minutes(30),
                                        dead_letter_queue=self.dead_letters)

        patterns = {
            "LaunchResults": events.EventPattern(
                source=["aws.autoscaling"], detail_type=[LAUNCH_UNSUCCESSFUL, LAUNCH_SUCCESSFUL],
                detail={"AutoScalingGroupName": sorted([*groups.values(), *lanes])}),
            # EventBridge cannot match on the instance's tags: the Lambda drops other deployments' instances.
            "SpotNotices": events.EventPattern(source=["aws.ec2"], detail_type=[SPOT_WARNING, REBALANCE]),
        }
        if capacity_block_id:
            patterns["CapacityBlockEnding"] = events.EventPattern(
                source=["aws.ec2"], detail_type=list(BLOCK_ENDING),
                detail={"capacity-reservation-id": [capacity_block_id]})
        self.rules = {name: events.Rule(self, name, event_pattern=pattern, targets=[target],
                                        description=f"crossfleet {deployment}: {name} -> capacity breakers")
                      for name, pattern in patterns.items()}

        # Only this region's breakers and GPU summary (capacity#REGION).
        capacity = partition_prefixes(region)["capacity"]
        state.grant_keys(role, "OwnBreakersOnly", read=[capacity], write=[capacity])
        role.add_to_policy(iam.PolicyStatement(
            sid="DescribeInstancesAndGroups",
            actions=["ec2:DescribeInstances", "autoscaling:DescribeAutoScalingGroups"],
            # Describe calls do not support resource-level permissions.
            resources=["*"]))
        # Ceiling: this function records breakers; it never sizes, launches or reconfigures anything. Its one action
        # on a group (draining a Capacity Block's group before the block ends) lowers desired capacity with each
        # termination, which has no condition key; it is limited to that group by name and tag.
        role.add_to_policy(iam.PolicyStatement(
            sid="NeverScaleOrLaunch", effect=iam.Effect.DENY,
            actions=["autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup",
                     "autoscaling:CreateAutoScalingGroup", "autoscaling:DeleteAutoScalingGroup",
                     "autoscaling:CreateOrUpdateTags", "autoscaling:DeleteTags", "autoscaling:AttachInstances",
                     "ec2:RunInstances", "ec2:TerminateInstances", "iam:PassRole"],
            resources=["*"]))
        if capacity_block_id:
            role.add_to_policy(iam.PolicyStatement(
                sid="DrainOwnBlockGroupBeforeTheBlockEnds",
                actions=["autoscaling:TerminateInstanceInAutoScalingGroup"],
                resources=[Arn.format(ArnComponents(
                    service="autoscaling", resource="autoScalingGroup",
                    resource_name=f"*:autoScalingGroupName/{groups['gpu']}",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME), stack)],
                conditions={"StringEquals": {f"aws:ResourceTag/{DEPLOYMENT_TAG}": deployment}}))
