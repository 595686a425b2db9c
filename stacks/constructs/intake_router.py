"""The intake router: an arm64 Lambda on the intake queue that validates, places and records every job."""

from __future__ import annotations

from aws_cdk import Arn, ArnComponents, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.constructs.controller_function import controller_function
from stacks.constructs.rebalancer import PeerNames
from stacks.constructs.state_table import StateTable, partition_prefixes
from stacks.constructs.work_queues import WorkQueues


class IntakeRouter(Construct):
    function: lambda_.Function
    log_group: logs.LogGroup

    def __init__(self, scope: Construct, id_: str, *, deployment: str, region: str, queues: WorkQueues,
                 state: StateTable, regions: tuple[str, ...], pool_instance_types: dict[str, tuple[str, ...]],
                 results_bucket_name: str, peers: tuple[PeerNames, ...] = ()) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        settings = {"deployment": deployment, "region": region, "table_name": state.table.table_name,
                    "queue_urls": {pool: q.queue.queue_url for pool, q in queues.pools.items()},
                    "rejects_url": queues.rejects.queue_url, "results_bucket": results_bucket_name,
                    "pool_instance_types": {pool: list(types) for pool, types in pool_instance_types.items()},
                    "peer_gpu_queue_urls": {
                        peer.region: f"https://sqs.{peer.region}.amazonaws.com/{stack.account}/{peer.gpu_queue_name}"
                        for peer in peers}}
        controller = controller_function(
            self, handler="crossfleet_control.handlers.router.handler",
            description=f"crossfleet intake router for {deployment} in {region}",
            environment={"CROSSFLEET_ROUTER_SETTINGS": stack.to_json_string(settings)}, timeout_seconds=30)
        self.function, self.log_group, role = controller.function, controller.log_group, controller.role
        self.function.add_event_source(sources.SqsEventSource(
            queues.intake.queue, batch_size=10, max_batching_window=Duration.seconds(1),
            report_batch_item_failures=True))
        for pool_queue in queues.pools.values():
            pool_queue.queue.grant_send_messages(role)
        queues.rejects.grant_send_messages(role)
        # Writes the ledger; reads the latest decision and this region's breakers to place jobs (routing_view).
        keys = partition_prefixes(region)
        state.grant_keys(role, "LedgerAndPlacementInputs", read=[keys["jobs"], keys["decisions"], keys["capacity"]],
                         write=[keys["jobs"]])
        others = [r for r in regions if r != region]
        if others:
            # Jobs pinned to another configured region go to that region's intake queue, named by convention.
            role.add_to_policy(iam.PolicyStatement(
                sid="ForwardPinnedJobsToOtherRegionsIntake", actions=["sqs:SendMessage", "sqs:GetQueueUrl"],
                resources=[Arn.format(ArnComponents(service="sqs", region=other,
                                                    resource=f"{deployment}-{other}-intake"), stack)
                           for other in others]))
        if peers:
            # GPU jobs arriving while this region's GPUs are short go to a healthy configured region's GPU queue.
            role.add_to_policy(iam.PolicyStatement(
                sid="FailoverToOtherConfiguredRegionsGpuQueue", actions=["sqs:SendMessage"],
                resources=[Arn.format(ArnComponents(service="sqs", region=peer.region, resource=peer.gpu_queue_name),
                                      stack) for peer in peers]))
