"""One stack per configured US region: network, both fleets, work queues, state, controllers."""

from __future__ import annotations

from aws_cdk import Environment, Stack, Tags
from constructs import Construct

from crossfleet.config.model import AppConfig, RegionConfig
from stacks.constructs.accelerator_cluster import AcceleratorCluster
from stacks.constructs.graviton_fleet import GravitonFleet
from stacks.constructs.network import Network
from stacks.constructs.rebalancer import Rebalancer
from stacks.constructs.state_table import StateTable
from stacks.constructs.work_queues import WorkQueues

POOLS = ("cpu", "gpu")


class RegionStack(Stack):
    """Composes the region's constructs and wires grants; owns no resources itself."""

    def __init__(self, scope: Construct, id_: str, *, config: AppConfig, region: RegionConfig) -> None:
        super().__init__(scope, id_, stack_name=config.stack_name(region.region),
                         env=Environment(account=config.account, region=region.region),
                         description=f"crossfleet {config.stage}: Graviton and accelerator fleets in {region.region}")
        deployment = config.prefix
        self.network = Network(self, "Network", config=config.network,
                               availability_zones=region.availability_zones)
        self.queues = WorkQueues(self, "WorkQueues", config=config.queues, pools=POOLS)
        self.state = StateTable(self, "State", config=config.state)
        self.graviton_fleet = GravitonFleet(
            self, "GravitonFleet", config=region.graviton_fleet, vpc=self.network.vpc,
            subnets=self.network.instance_subnets, group_name=f"{deployment}-{region.region}-cpu",
            region=region.region, deployment=deployment)
        self.accelerator_cluster = AcceleratorCluster(
            self, "AcceleratorCluster", config=region.accelerator_cluster, vpc=self.network.vpc,
            subnet_group_name="instances", availability_zones=region.availability_zones,
            group_name=f"{deployment}-{region.region}-gpu", region=region.region, deployment=deployment)

        self.rebalancer = Rebalancer(
            self, "Rebalancer", config=config.rebalancer, deployment=deployment, region=region.region,
            queues=self.queues, state=self.state,
            groups={
                "cpu": (f"{deployment}-{region.region}-cpu", region.graviton_fleet.instance_types[0],
                        region.graviton_fleet.min_size, region.graviton_fleet.max_size),
                "gpu": (f"{deployment}-{region.region}-gpu", region.accelerator_cluster.instance_types[0],
                        region.accelerator_cluster.min_size, region.accelerator_cluster.max_size),
            })

        for pool, fleet in (("cpu", self.graviton_fleet), ("gpu", self.accelerator_cluster)):
            self.queues.pools[pool].queue.grant_consume_messages(fleet.instances.role)
        self.state.table.grant_read_write_data(self.graviton_fleet.instances.role)
        self.state.table.grant_read_write_data(self.accelerator_cluster.instances.role)

        # Cost allocation: every taggable resource says which deployment, stage and region it belongs to.
        for key, value in (("crossfleet:app", config.name), ("crossfleet:stage", config.stage),
                           ("crossfleet:region", region.region), ("crossfleet:deployment", deployment)):
            Tags.of(self).add(key, value)
