"""The suggested policy for people running the crossfleet CLI against one region (attach it to an operator role).

What the commands call (crossfleet/ops.py, crossfleet/cli.py): status, explain, plan and job read the stack's
outputs, the rebalancer's settings, the groups, queues, metrics, ledger, decisions and breakers; freeze, pin and
drain write or delete one override item; submit sends to the intake queue. Nothing here changes a group, a queue's
attributes or a ledger entry: operators steer the controller only through overrides, which it clamps and logs.
"""

from __future__ import annotations

from aws_cdk import Arn, ArnComponents, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from stacks.constructs.rebalancer import PeerNames
from stacks.constructs.state_table import StateTable, leading_keys_condition, partition_prefixes
from stacks.constructs.work_queues import WorkQueues


class OperatorPolicy(Construct):
    policy: iam.ManagedPolicy

    def __init__(self, scope: Construct, id_: str, *, deployment: str, region: str, state: StateTable,
                 queues: WorkQueues, rebalancer: lambda_.IFunction, peers: tuple[PeerNames, ...] = ()) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        keys = partition_prefixes(region)
        statements = [
            *state.key_statements(
                "StateReadsAndOverrides",
                read=[keys["jobs"], keys["controller"], keys["decisions"], keys["capacity"]],
                # Overrides live in the controller's partition (rebalancer#REGION, sort key override#POOL). The sort
                # key cannot be bounded in IAM, so an operator could also rewrite the lease or memory: operators
                # are trusted with steering, and the lease's fencing token limits what a forged lease can do.
                write=[keys["controller"]], delete=[keys["controller"]]),
            iam.PolicyStatement(sid="FindTheDeployment", actions=["cloudformation:DescribeStacks"],
                                resources=[stack.stack_id]),
            iam.PolicyStatement(sid="ReadRebalancerSettings", actions=["lambda:GetFunctionConfiguration"],
                                resources=[rebalancer.function_arn]),
            iam.PolicyStatement(sid="SubmitJobs", actions=["sqs:SendMessage", "sqs:GetQueueAttributes"],
                                resources=[queues.intake.queue.queue_arn]),
            iam.PolicyStatement(sid="ReadQueueDepths", actions=["sqs:GetQueueAttributes"],
                                resources=[q.queue_arn for p in queues.pools.values()
                                           for q in (p.queue, p.dead_letter_queue)] + [queues.rejects.queue_arn]),
            iam.PolicyStatement(
                # Describe and GetMetricData calls support no resource-level permissions (Service Authorization
                # Reference: Amazon EC2 Auto Scaling, CloudWatch, Elastic Load Balancing V2); all are reads.
                sid="ObserveLikeThePlanner",
                actions=["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities",
                         "cloudwatch:GetMetricData", "elasticloadbalancing:DescribeRules"],
                resources=["*"]),
        ]
        if peers:
            statements.append(iam.PolicyStatement(
                sid="ReadOtherRegionsCapacitySummaryOnly", actions=["dynamodb:GetItem"],
                resources=[Arn.format(ArnComponents(service="dynamodb", region=peer.region, resource="table",
                                                    resource_name=peer.table_name), stack) for peer in peers],
                conditions=leading_keys_condition(["capacity#*"])))
        self.policy = iam.ManagedPolicy(
            self, "Policy", description=f"crossfleet {deployment} operators in {region}: CLI reads and overrides",
            statements=statements)
