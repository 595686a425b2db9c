"""The accelerator cluster: NVIDIA GPU (default) or AWS Neuron instances, scaled to zero when idle."""

from __future__ import annotations

from aws_cdk import Duration, Tags
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from crossfleet.config.fleets import AcceleratorClusterConfig
from stacks.constructs.pool_instances import (
    PoolInstances,
    pool_instances,
    prioritized_mixed_policy,
)
from stacks.constructs.warm_lane import WarmLane

POOL = "gpu"


class AcceleratorCluster(Construct):
    """GPU/Neuron ASG with a cluster placement group, optional EFA and optional reservation targeting.

    A cluster placement group, a capacity reservation and a Capacity Block each live in one AZ, so the group
    then uses that AZ only (config `availability_zone`). Targeting an On-Demand Capacity Reservation or a
    Capacity Block pins the group to the reservation's one instance type; otherwise a mixed-instances policy
    lists the types in priority order.
    """

    group: autoscaling.AutoScalingGroup
    instances: PoolInstances
    placement_group: ec2.PlacementGroup | None
    warm_lane: WarmLane | None

    def __init__(self, scope: Construct, id_: str, *, config: AcceleratorClusterConfig, vpc: ec2.IVpc,
                 subnet_group_name: str, group_name: str,
                 user_data: ec2.UserData, lifecycle_hook_name: str, drain_seconds: int,
                 warm_lane_user_data: ec2.UserData | None = None) -> None:
        """`warm_lane_user_data`: the lane's own user data (its worker settings name the lane's group and hook);
        required when the config has a warm pool."""
        super().__init__(scope, id_)
        self.placement_group = (ec2.PlacementGroup(self, "PlacementGroup",
                                                   strategy=ec2.PlacementGroupStrategy.CLUSTER)
                                if config.placement_group else None)
        pinned_type = ec2.InstanceType(config.instance_types[0]) if config.reservation_id else None
        self.instances = pool_instances(
            self, vpc=vpc, pool=POOL,
            machine_image=ec2.MachineImage.from_ssm_parameter(config.ami_parameter),
            root_volume_gib=config.root_volume_gib,
            user_data=user_data,
            placement_group=self.placement_group,
            instance_type=pinned_type,
        )
        self._apply_launch_options(config)

        # The config chose the AZs: the reservation's or the placement group's one, else every configured AZ where
        # the pinned offerings table has all of the group's types.
        subnets = ec2.SubnetSelection(subnet_group_name=subnet_group_name, availability_zones=list(config.zones))
        common = dict(auto_scaling_group_name=group_name, vpc=vpc, vpc_subnets=subnets,
                      min_capacity=config.min_size, max_capacity=config.max_size,
                      # In-service and pending counts for the dashboards (free for one-minute group metrics).
                      group_metrics=[autoscaling.GroupMetrics.all()])
        if pinned_type is not None:
            self.group = autoscaling.AutoScalingGroup(self, "Group", launch_template=self.instances.launch_template,
                                                      **common)
        else:
            self.group = autoscaling.AutoScalingGroup(
                self, "Group", capacity_rebalance=config.spot, **common,
                # GPUs are On-Demand unless Spot is asked for: a reclaimed GPU mid-job is costly.
                mixed_instances_policy=prioritized_mixed_policy(
                    self.instances.launch_template, config.all_instance_types, on_demand_base=0,
                    on_demand_percentage_above_base=0 if config.spot else 100),
            )
        # Scale-in waits for the worker: it stops taking jobs, finishes or requeues them, then completes this.
        self.group.add_lifecycle_hook(
            "DrainOnScaleIn", lifecycle_hook_name=lifecycle_hook_name,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
            heartbeat_timeout=Duration.seconds(drain_seconds), default_result=autoscaling.DefaultResult.CONTINUE)
        self.warm_lane = None
        if config.warm_pool is not None:
            if warm_lane_user_data is None:
                raise ValueError("a warm pool needs the lane's user data")
            self.warm_lane = WarmLane(
                self, "WarmLane", config=config.warm_pool, instances=self.instances,
                machine_image=ec2.MachineImage.from_ssm_parameter(config.ami_parameter),
                root_volume_gib=config.root_volume_gib, user_data=warm_lane_user_data, vpc=vpc, subnets=subnets,
                group_name=warm_lane_group_name(group_name), launch_hook_name=warm_lane_launch_hook(group_name),
                drain_hook_name=f"{warm_lane_group_name(group_name)}-drain", drain_seconds=drain_seconds,
                placement_group=self.placement_group)
            self._apply_efa_to(self.warm_lane.launch_template, config)
        Tags.of(self).add("crossfleet:pool", POOL)

    def _apply_launch_options(self, config: AcceleratorClusterConfig) -> None:
        template = self.instances.launch_template.node.default_child
        assert isinstance(template, ec2.CfnLaunchTemplate)
        if config.efa:
            self._enable_efa(template, config.efa_interfaces)
        if config.reservation_id:
            template.add_property_override(
                "LaunchTemplateData.CapacityReservationSpecification",
                {"CapacityReservationTarget": {"CapacityReservationId": config.reservation_id}})
        if config.capacity_block_id:
            template.add_property_override("LaunchTemplateData.InstanceMarketOptions",
                                           {"MarketType": "capacity-block"})

    def _apply_efa_to(self, launch_template: ec2.LaunchTemplate, config: AcceleratorClusterConfig) -> None:
        """The lane's template gets the same EFA interfaces (no reservation or block: config refuses those)."""
        if not config.efa:
            return
        template = launch_template.node.default_child
        assert isinstance(template, ec2.CfnLaunchTemplate)
        template.add_property_override("LaunchTemplateData.NetworkInterfaces",
                                       efa_interfaces(self.instances.security_group, config.efa_interfaces))

    def _enable_efa(self, template: ec2.CfnLaunchTemplate, cards: int) -> None:
        """EFA on every network card the group's types share, in the security group EFA needs.

        Interfaces follow the EC2 User Guide's "Maximize network bandwidth on Amazon EC2 instances with multiple
        network cards": an ENA primary interface (card 0, device 0), an EFA-only interface on card 0 device 1, and
        an EFA-only interface on device 0 of every other card. No AssociatePublicIpAddress: EC2 refuses it on a
        launch with several interfaces (InvalidParameterCombination), and the subnets are private anyway.
        """
        group = self.instances.security_group
        template.add_property_override("LaunchTemplateData.NetworkInterfaces", efa_interfaces(group, cards))
        # OS-bypass traffic needs all traffic in from and out to the group itself (EC2 User Guide, "Create and
        # attach an Elastic Fabric Adapter" and "Prepare an EFA-enabled security group"). The group's
        # allow-all-outbound rule is an IP rule; AWS asks for the self-referencing one explicitly.
        ec2.CfnSecurityGroupIngress(self, "EfaIngressFromSelf", group_id=group.security_group_id, ip_protocol="-1",
                                    source_security_group_id=group.security_group_id,
                                    description="EFA: all traffic from this group (OS-bypass)")
        ec2.CfnSecurityGroupEgress(self, "EfaEgressToSelf", group_id=group.security_group_id, ip_protocol="-1",
                                   destination_security_group_id=group.security_group_id,
                                   description="EFA: all traffic to this group (OS-bypass)")



def efa_interfaces(group: ec2.ISecurityGroup, cards: int) -> list[dict[str, object]]:
    own = [group.security_group_id]
    interfaces: list[dict[str, object]] = [
        {"DeviceIndex": 0, "NetworkCardIndex": 0, "InterfaceType": "interface", "Groups": own},
        {"DeviceIndex": 1, "NetworkCardIndex": 0, "InterfaceType": "efa-only", "Groups": own}]
    interfaces += [{"DeviceIndex": 0, "NetworkCardIndex": card, "InterfaceType": "efa-only", "Groups": own}
                   for card in range(1, cards)]
    return interfaces


def warm_lane_group_name(group_name: str) -> str:
    """The lane's group: the GPU group's name with -warm (the rebalancer's settings and IAM use the same)."""
    return f"{group_name}-warm"


def warm_lane_launch_hook(group_name: str) -> str:
    return f"{warm_lane_group_name(group_name)}-prepare"
