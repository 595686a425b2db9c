"""The rebalancer: a scheduled arm64 Lambda per region, scoped to this deployment's groups, queues and table."""

from __future__ import annotations

from aws_cdk import Arn, ArnComponents, ArnFormat, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from crossfleet.config.model import RebalancerConfig
from crossfleet.config.offerings import offerings
from stacks.constructs.controller_function import controller_function
from stacks.constructs.state_table import StateTable
from stacks.constructs.work_queues import WorkQueues

DEPLOYMENT_TAG = "crossfleet:deployment"


class Rebalancer(Construct):
    function: lambda_.Function
    schedule: events.Rule
    log_group: logs.LogGroup

    def __init__(self, scope: Construct, id_: str, *, config: RebalancerConfig, deployment: str, region: str,
                 queues: WorkQueues, state: StateTable, groups: dict[str, tuple[str, str, int, int]]) -> None:
        """`groups` maps pool -> (ASG name, primary instance type, min size, max size)."""
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
                "group_name": name, "queue_url": queues.pools[pool].queue.queue_url,
                "dead_letter_url": queues.pools[pool].dead_letter_queue.queue_url,
                "instance_type": instance_type, "vcpus": table[instance_type].vcpus,
                "accelerators": table[instance_type].accelerator_count, "min_size": min_size, "max_size": max_size,
            } for pool, (name, instance_type, min_size, max_size) in groups.items()},
            "policy": config.policy_fields(),
        }

        controller = controller_function(
            self, handler="crossfleet_control.rebalancer.handler",
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
        state.table.grant_read_write_data(role)
        group_arns = [Arn.format(ArnComponents(
            service="autoscaling", resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{name}", arn_format=ArnFormat.COLON_RESOURCE_NAME), stack)
            for name, _, _, _ in groups.values()]
        role.add_to_policy(iam.PolicyStatement(
            sid="SizeOnlyThisDeploymentsGroups", actions=["autoscaling:SetDesiredCapacity"],
            resources=group_arns,
            conditions={"StringEquals": {f"aws:ResourceTag/{DEPLOYMENT_TAG}": deployment}}))
        role.add_to_policy(iam.PolicyStatement(
            sid="DescribeGroupsAndActivities",
            actions=["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities"],
            # Describe calls do not support resource-level permissions.
            resources=["*"]))
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadQueueAgeMetrics", actions=["cloudwatch:GetMetricData"],
            # GetMetricData supports no resource-level permissions; it reads metrics only.
            resources=["*"]))
        role.add_to_policy(iam.PolicyStatement(
            sid="NeverRetagGroups", effect=iam.Effect.DENY,
            actions=["autoscaling:CreateOrUpdateTags", "autoscaling:DeleteTags"], resources=["*"]))
