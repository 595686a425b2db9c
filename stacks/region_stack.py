"""One stack per configured US region: network, both fleets, queues, state, results, controllers."""

from __future__ import annotations

from typing import Any

from aws_cdk import Arn, ArnComponents, ArnFormat, CfnOutput, Environment, Stack, Tags
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from constructs import Construct

from crossfleet.config.model import AppConfig, RegionConfig
from crossfleet.config.offerings import offerings
from crossfleet_control.core.jobs import PAYLOAD_PREFIX
from crossfleet_control.core.service_model import profile_for
from stacks.constructs.accelerator_cluster import (
    AcceleratorCluster,
    warm_lane_group_name,
    warm_lane_launch_hook,
)
from stacks.constructs.capacity_events import CapacityEvents
from stacks.constructs.graviton_fleet import GravitonFleet
from stacks.constructs.intake_router import IntakeRouter
from stacks.constructs.monitoring import Monitoring, PoolView, global_widgets
from stacks.constructs.network import Network
from stacks.constructs.operator_policy import OperatorPolicy
from stacks.constructs.realtime_endpoint import STREAM_SECONDS, RealtimeEndpoint, model_server_commands
from stacks.constructs.rebalancer import DEPLOYMENT_TAG, PeerNames, PoolGroup, Rebalancer
from stacks.constructs.results_bucket import ResultsBucket
from stacks.constructs.state_table import StateTable, leading_keys_condition, partition_prefixes
from stacks.constructs.work_queues import WorkQueues
from stacks.constructs.worker_install import warm_lane_boot_commands, worker_asset, worker_user_data

POOLS = ("cpu", "gpu")
# The unprivileged user command jobs run as on instances (worker/install.sh creates it, without IMDS access).
JOB_USER = "crossfleet-job"


def _isolated(runner: dict[str, Any]) -> dict[str, Any]:
    """On instances a command job runs as JOB_USER; the http runner runs no job code on the host."""
    return {**runner, "run_as": JOB_USER} if runner.get("kind") == "command" else runner


def pool_queue_name(deployment: str, region: str, pool: str) -> str:
    return f"{deployment}-{region}-{pool}"


def state_table_name(deployment: str, region: str) -> str:
    return f"{deployment}-{region}-state"


class RegionStack(Stack):
    """Composes the region's constructs and wires grants; owns no resources itself."""

    def __init__(self, scope: Construct, id_: str, *, config: AppConfig, region: RegionConfig) -> None:
        super().__init__(scope, id_, stack_name=config.stack_name(region.region),
                         env=Environment(account=config.account, region=region.region),
                         description=f"crossfleet {config.stage}: Graviton and accelerator fleets in {region.region}")
        deployment = config.prefix
        name = region.region
        group_names = {pool: f"{deployment}-{name}-{pool}" for pool in POOLS}
        hook_names = {pool: f"{group_names[pool]}-drain" for pool in POOLS}

        self.network = Network(self, "Network", config=config.network, availability_zones=region.availability_zones)
        self.queues = WorkQueues(self, "WorkQueues", config=config.queues, pools=POOLS,
                                 intake_queue_name=f"{deployment}-{name}-intake",
                                 pool_queue_names={pool: pool_queue_name(deployment, name, pool) for pool in POOLS})
        self.state = StateTable(self, "State", config=config.state, table_name=state_table_name(deployment, name))
        self.results = ResultsBucket(self, "Results", retain_on_delete=config.state.retain_on_delete)
        self.worker_asset = worker_asset(self)

        worker = config.worker
        # Each pool's scale-in hook timeout, which the worker's drain must fit in (shorter in a Capacity Block).
        realtime = config.realtime
        drain = {"cpu": worker.drain_seconds,
                 "gpu": region.accelerator_cluster.drain_seconds(worker.drain_seconds, load_balanced=realtime.enabled)}
        def worker_settings(pool: str, group_name: str, hook_name: str) -> dict[str, Any]:
            return {
                "deployment": deployment, "region": name, "pool": pool,
                "queue_url": self.queues.pools[pool].queue.queue_url,
                "dead_letter_url": self.queues.pools[pool].dead_letter_queue.queue_url,
                "table_name": self.state.table.table_name, "results_bucket": self.results.bucket.bucket_name,
                "group_name": group_name, "lifecycle_hook": hook_name,
                "concurrency": worker.cpu_concurrency if pool == "cpu" else worker.gpu_concurrency,
                "visibility_seconds": config.queues.visibility_timeout_seconds,
                "heartbeat_seconds": worker.heartbeat_seconds, "max_attempts": worker.max_attempts,
                "drain_seconds": drain[pool],
                "runner": _isolated(worker.cpu_runner if pool == "cpu" else worker.gpu_runner),
                "peer_tables": {r.region: state_table_name(deployment, r.region) for r in config.regions
                                if r.region != name},
            }

        user_data = {pool: worker_user_data(asset=self.worker_asset,
                                            settings=worker_settings(pool, group_names[pool], hook_names[pool]))
                     for pool in POOLS}
        # The GPU pool's warm lane (accelerator_cluster.warm_pool): the same worker on the same queue, its own
        # group and hooks, started only when the instance goes in service (stacks/constructs/warm_lane.py).
        warm_pool = region.accelerator_cluster.warm_pool
        lane_name = warm_lane_group_name(group_names["gpu"])
        lane_user_data = None
        if warm_pool is not None:
            lane_user_data = worker_user_data(
                asset=self.worker_asset, settings=worker_settings("gpu", lane_name, f"{lane_name}-drain"),
                warm_lane={"region": name, "group_name": lane_name,
                           "launch_hook": warm_lane_launch_hook(group_names["gpu"]),
                           "units": (["crossfleet-model-server.service"] if realtime.enabled else [])
                           + ["crossfleet-worker.service"]})
        servers = {"cpu": realtime.cpu_server, "gpu": realtime.gpu_server}
        network = config.network
        if network.models_s3_uri:
            # Model weights come from this deployment's S3 prefix through the gateway endpoint (no NAT needed);
            # servers load them from /models (the container's view of /opt/crossfleet/models).
            for pool_data in [*user_data.values(), *([lane_user_data] if lane_user_data else [])]:
                pool_data.add_commands(
                    "install -d -m 0755 /opt/crossfleet/models",
                    f"aws s3 sync {network.models_s3_uri} /opt/crossfleet/models --only-show-errors")
        if realtime.enabled:
            # Each instance runs its pool's model server: the endpoint's targets and the worker's http runner.
            for pool in POOLS:
                user_data[pool].add_commands(*model_server_commands(servers[pool], gpu=pool == "gpu"))
            if lane_user_data is not None:
                lane_user_data.add_commands(*model_server_commands(servers["gpu"], gpu=True, start=False))
        if lane_user_data is not None:
            lane_user_data.add_commands(*warm_lane_boot_commands(
                model_server_image=servers["gpu"].image if realtime.enabled else None))

        self.graviton_fleet = GravitonFleet(
            self, "GravitonFleet", config=region.graviton_fleet, vpc=self.network.vpc,
            subnets=self.network.instance_subnets, group_name=group_names["cpu"], user_data=user_data["cpu"],
            lifecycle_hook_name=hook_names["cpu"], drain_seconds=drain["cpu"])
        self.accelerator_cluster = AcceleratorCluster(
            self, "AcceleratorCluster", config=region.accelerator_cluster, vpc=self.network.vpc,
            subnet_group_name="instances", group_name=group_names["gpu"], user_data=user_data["gpu"],
            lifecycle_hook_name=hook_names["gpu"], drain_seconds=drain["gpu"], warm_lane_user_data=lane_user_data)
        lane = self.accelerator_cluster.warm_lane
        graviton, accelerators = region.graviton_fleet, region.accelerator_cluster
        pinned = accelerators.reservation_id is not None  # a reservation or block: one type, no Spot
        pool_groups = {
            "cpu": PoolGroup(group_names["cpu"], graviton.all_instance_types, graviton.min_size,
                             graviton.max_size, graviton.on_demand_percentage_above_base,
                             self.graviton_fleet.instances.launch_template, self.graviton_fleet.instances.role,
                             on_demand_price_per_hour=graviton.on_demand_price_per_hour,
                             spot_price_per_hour=graviton.spot_price_per_hour),
            "gpu": PoolGroup(group_names["gpu"],
                             accelerators.instance_types[:1] if pinned else accelerators.all_instance_types,
                             accelerators.min_size, accelerators.max_size,
                             0 if accelerators.spot else 100,
                             self.accelerator_cluster.instances.launch_template,
                             self.accelerator_cluster.instances.role,
                             on_demand_price_per_hour=accelerators.on_demand_price_per_hour,
                             spot_price_per_hour=accelerators.spot_price_per_hour,
                             warm_lane=(lane_name, warm_pool.max_prepared) if warm_pool is not None else None),
        }
        self.endpoint: RealtimeEndpoint | None = None
        if realtime.enabled:
            self.endpoint = RealtimeEndpoint(
                self, "RealtimeEndpoint", config=realtime, certificate_arn=realtime.certificate_arns[name],
                vpc=self.network.vpc, subnets=self.network.instance_subnets,
                groups={"cpu": self.graviton_fleet.group, "gpu": self.accelerator_cluster.group},
                extra_groups={"gpu": [lane.group]} if lane is not None else None,
                instance_security_groups={"cpu": self.graviton_fleet.instances.security_group,
                                          "gpu": self.accelerator_cluster.instances.security_group},
                servers=servers, retain_on_delete=config.state.retain_on_delete,
                server_access_logs=self.results.access_logs, vpc_cidr=config.network.cidr,
                deregistration_seconds={
                    "cpu": STREAM_SECONDS,
                    "gpu": region.accelerator_cluster.stream_deregistration_seconds(STREAM_SECONDS)})
        peers = tuple(PeerNames(r.region, pool_queue_name(deployment, r.region, "gpu"),
                                state_table_name(deployment, r.region)) for r in config.regions if r.region != name)
        self.rebalancer = Rebalancer(
            self, "Rebalancer", config=config.rebalancer, deployment=deployment, region=name,
            queues=self.queues, state=self.state, groups=pool_groups, peers=peers,
            max_receive_count=config.queues.max_receive_count,
            endpoint=self.endpoint, vpc_arn=Arn.format(ArnComponents(
                service="ec2", resource="vpc", resource_name=self.network.vpc.vpc_id), self))
        self.capacity_events = CapacityEvents(
            self, "CapacityEvents", deployment=deployment, region=name, state=self.state, groups=group_names,
            capacity_block_id=accelerators.capacity_block_id,
            block_instance_type=accelerators.instance_types[0] if accelerators.capacity_block_id else None,
            lanes={lane_name: "gpu"} if lane is not None else None)
        self.router = IntakeRouter(self, "IntakeRouter", deployment=deployment, region=name, queues=self.queues,
                                   state=self.state, regions=tuple(r.region for r in config.regions),
                                   pool_instance_types={p: g.instance_types for p, g in pool_groups.items()},
                                   results_bucket_name=self.results.bucket.bucket_name, peers=peers)

        self.operator_policy = OperatorPolicy(
            self, "OperatorPolicy", deployment=deployment, region=name, state=self.state, queues=self.queues,
            rebalancer=self.rebalancer.function, peers=peers)

        for pool, fleet in (("cpu", self.graviton_fleet), ("gpu", self.accelerator_cluster)):
            role = fleet.instances.role
            self.queues.pools[pool].queue.grant_consume_messages(role)
            self.queues.pools[pool].dead_letter_queue.grant_send_messages(role)
            # The ledger only: workers read and write job# partitions; never an override, breaker, lease or decision.
            self.state.grant_keys(role, "JobLedgerOnly", read=["job#*"], write=["job#*"])
            # The agent writes results and reads payload references; it never reads results/ (another job's output
            # must not come back as a payload). Jobs themselves hold no credentials (worker/install.sh).
            role.add_to_policy(iam.PolicyStatement(
                sid="WriteResultsOnly", actions=["s3:PutObject"],
                resources=[self.results.bucket.arn_for_objects("results/*")]))
            role.add_to_policy(iam.PolicyStatement(
                sid="ReadPayloadReferences", actions=["s3:GetObject"],
                resources=[self.results.bucket.arn_for_objects(f"{PAYLOAD_PREFIX}*")]))
            role.add_to_policy(iam.PolicyStatement(
                sid="ReadWorkerAgentAsset", actions=["s3:GetObject"],
                resources=[f"arn:{self.partition}:s3:::{self.worker_asset.s3_bucket_name}/"
                           f"{self.worker_asset.s3_object_key}"]))
            if peers:
                # A job that failed over or moved here keeps its identity in its origin region's ledger: its job#
                # items only, like this region's own ledger (the same LeadingKeys discipline).
                role.add_to_policy(iam.PolicyStatement(
                    sid="ClaimJobsInOriginLedgers",
                    actions=["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem"],
                    resources=[Arn.format(ArnComponents(service="dynamodb", region=peer.region, resource="table",
                                                        resource_name=peer.table_name), self) for peer in peers],
                    conditions=leading_keys_condition([partition_prefixes(name)["jobs"]])))
            if network.models_bucket:
                role.add_to_policy(iam.PolicyStatement(
                    sid="ReadModelWeights", actions=["s3:GetObject"],
                    resources=[f"arn:{self.partition}:s3:::{network.models_bucket}/{network.models_prefix}*"]))
                role.add_to_policy(iam.PolicyStatement(
                    sid="ListModelWeights", actions=["s3:ListBucket"],
                    resources=[f"arn:{self.partition}:s3:::{network.models_bucket}"],
                    conditions={"StringLike": {"s3:prefix": [f"{network.models_prefix}*"]}}))
            role.add_to_policy(iam.PolicyStatement(
                sid="PublishJobOutcomes", actions=["cloudwatch:PutMetricData"], resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": "crossfleet"}}))
            # The GPU role is also the warm lane's: its instances complete the lane's launch and drain hooks.
            own_groups = [Arn.format(ArnComponents(
                service="autoscaling", resource="autoScalingGroup",
                resource_name=f"*:autoScalingGroupName/{group_name}",
                arn_format=ArnFormat.COLON_RESOURCE_NAME), self)
                for group_name in [group_names[pool], *([lane_name] if pool == "gpu" and lane else [])]]
            role.add_to_policy(iam.PolicyStatement(
                sid="CompleteOwnScaleInHook", actions=["autoscaling:CompleteLifecycleAction"],
                resources=own_groups,
                conditions={"StringEquals": {f"aws:ResourceTag/{DEPLOYMENT_TAG}": deployment}}))
            # The agent protects its instance from scale-in while it holds jobs (case 6) and keeps its
            # termination hook open while it drains (case 17): its own group only.
            role.add_to_policy(iam.PolicyStatement(
                sid="ProtectAndDrainOwnInstance",
                actions=["autoscaling:SetInstanceProtection", "autoscaling:RecordLifecycleActionHeartbeat"],
                resources=own_groups,
                conditions={"StringEquals": {f"aws:ResourceTag/{DEPLOYMENT_TAG}": deployment}}))

        # What may pass through the VPC endpoints: this deployment's objects, table and queues, and read-only the
        # worker asset, the model prefix and two AWS-owned buckets instances read from: the Amazon Linux 2023
        # package repositories (dnf, e.g. docker for the model server) and ECR's image layers. Those two names
        # follow AWS's published conventions (al2023-repos-REGION-*, prod-REGION-starport-layer-bucket); they are
        # not checked against a live account here.
        models = ([f"arn:{self.partition}:s3:::{network.models_bucket}/{network.models_prefix}*"]
                  if network.models_bucket else [])
        self.network.limit_endpoints(
            s3_objects=[self.results.bucket.arn_for_objects("results/*"),
                        self.results.bucket.arn_for_objects(f"{PAYLOAD_PREFIX}*")],
            read_only_objects=[f"arn:{self.partition}:s3:::{self.worker_asset.s3_bucket_name}/"
                               f"{self.worker_asset.s3_object_key}", *models,
                               f"arn:{self.partition}:s3:::al2023-repos-{name}-*/*",
                               f"arn:{self.partition}:s3:::prod-{name}-starport-layer-bucket/*"],
            read_only_buckets=[f"arn:{self.partition}:s3:::{network.models_bucket}"] if network.models_bucket else [],
            table_arn=self.state.table.table_arn,
            queue_arns=[q.queue_arn for pool in POOLS
                        for q in (self.queues.pools[pool].queue, self.queues.pools[pool].dead_letter_queue)])

        table = offerings()
        primary = {"cpu": region.graviton_fleet.instance_types[0], "gpu": region.accelerator_cluster.instance_types[0]}
        profiles = {pool: profile_for(t, vcpus=table[t].vcpus, accelerators=table[t].accelerator_count)
                    for pool, t in primary.items()}
        self.monitoring = Monitoring(
            self, "Monitoring", config=config.monitoring, deployment=deployment, region=name,
            pools=[PoolView(name=pool, group_name=group_names[pool], queue=self.queues.pools[pool].queue,
                            dead_letter_queue=self.queues.pools[pool].dead_letter_queue,
                            price_per_hour=profiles[pool].on_demand_per_hour, watts=profiles[pool].watts)
                   for pool in POOLS],
            intake_dead_letters=self.queues.intake.dead_letter_queue, rejects=self.queues.rejects,
            rebalancer=self.rebalancer.function)
        if name == config.regions[0].region:
            # The global view lives with the first configured region.
            cloudwatch.Dashboard(self, "GlobalDashboard", dashboard_name=f"{deployment}-global",
                                 widgets=[global_widgets(deployment, {
                                     r.region: [(pool, f"{deployment}-{r.region}-{pool}") for pool in POOLS]
                                     for r in config.regions})])

        # What the CLI and producers look up (crossfleet submit reads these).
        CfnOutput(self, "IntakeQueueUrl", value=self.queues.intake.queue.queue_url)
        CfnOutput(self, "RejectsQueueUrl", value=self.queues.rejects.queue_url)
        CfnOutput(self, "StateTableName", value=self.state.table.table_name)
        CfnOutput(self, "ResultsBucketName", value=self.results.bucket.bucket_name)
        CfnOutput(self, "RebalancerFunctionName", value=self.rebalancer.function.function_name)
        CfnOutput(self, "AlarmTopicArn", value=self.monitoring.topic.topic_arn)
        CfnOutput(self, "OperatorPolicyArn", value=self.operator_policy.policy.managed_policy_arn)
        for pool in POOLS:
            CfnOutput(self, f"{pool.capitalize()}QueueUrl", value=self.queues.pools[pool].queue.queue_url)
        if self.endpoint is not None:
            CfnOutput(self, "RealtimeEndpointUrl", value=self.endpoint.url)
            CfnOutput(self, "RealtimeListenerRuleArn", value=self.endpoint.rule.listener_rule_arn)

        # Cost allocation: every taggable resource says which deployment, stage and region it belongs to.
        for key, value in (("crossfleet:app", config.name), ("crossfleet:stage", config.stage),
                           ("crossfleet:region", name), (DEPLOYMENT_TAG, deployment)):
            Tags.of(self).add(key, value)
