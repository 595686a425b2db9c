"""The intake router: an arm64 Lambda on the intake queue that validates, places and records every job."""

from __future__ import annotations

from aws_cdk import Arn, ArnComponents, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.constructs.rebalancer import ASSET_EXCLUDES, LAMBDA_SOURCE
from stacks.constructs.state_table import StateTable
from stacks.constructs.work_queues import WorkQueues


class IntakeRouter(Construct):
    function: lambda_.Function
    log_group: logs.LogGroup

    def __init__(self, scope: Construct, id_: str, *, deployment: str, region: str, queues: WorkQueues,
                 state: StateTable, regions: tuple[str, ...]) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        settings = {"deployment": deployment, "region": region, "table_name": state.table.table_name,
                    "queue_urls": {pool: q.queue.queue_url for pool, q in queues.pools.items()},
                    "rejects_url": queues.rejects.queue_url}
        self.log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_MONTH,
                                       removal_policy=RemovalPolicy.DESTROY)
        role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description="crossfleet intake router: intake in, pool queues and rejects out, the ledger")
        self.log_group.grant_write(role)
        self.function = lambda_.Function(
            self, "Function", runtime=lambda_.Runtime.PYTHON_3_13, architecture=lambda_.Architecture.ARM_64,
            handler="crossfleet_control.router.handler",
            code=lambda_.Code.from_asset(str(LAMBDA_SOURCE), exclude=ASSET_EXCLUDES),
            timeout=Duration.seconds(30), memory_size=256, role=role, log_group=self.log_group,
            environment={"CROSSFLEET_ROUTER_SETTINGS": stack.to_json_string(settings)},
            description=f"crossfleet intake router for {deployment} in {region}")
        self.function.add_event_source(sources.SqsEventSource(
            queues.intake.queue, batch_size=10, max_batching_window=Duration.seconds(1),
            report_batch_item_failures=True))
        for pool_queue in queues.pools.values():
            pool_queue.queue.grant_send_messages(role)
        queues.rejects.grant_send_messages(role)
        state.table.grant_read_write_data(role)
        others = [r for r in regions if r != region]
        if others:
            # Jobs pinned to another configured region go to that region's intake queue, named by convention.
            role.add_to_policy(iam.PolicyStatement(
                sid="ForwardPinnedJobsToOtherRegionsIntake", actions=["sqs:SendMessage", "sqs:GetQueueUrl"],
                resources=[Arn.format(ArnComponents(service="sqs", region=other,
                                                    resource=f"{deployment}-{other}-intake"), stack)
                           for other in others]))
