"""The Graviton CPU fleet: an arm64 Auto Scaling group, Graviton5 first, Graviton4 as fallback."""

from __future__ import annotations

from aws_cdk import Tags
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from crossfleet.config.model import AL2023_ARM64_AMI_PARAMETER, GravitonFleetConfig
from stacks.constructs.pool_instances import PoolInstances, pool_instances, pool_user_data

POOL = "cpu"


class GravitonFleet(Construct):
    """Mixed-instances ASG: On-Demand base, Spot above it (price-capacity-optimized), capacity rebalancing.

    The desired capacity is left unset in the template: the rebalancer owns it, and an unset value is kept
    across stack updates instead of being reset.
    """

    group: autoscaling.AutoScalingGroup
    instances: PoolInstances

    def __init__(self, scope: Construct, id_: str, *, config: GravitonFleetConfig, vpc: ec2.IVpc,
                 subnets: ec2.SubnetSelection, group_name: str, region: str, deployment: str) -> None:
        super().__init__(scope, id_)
        self.instances = pool_instances(
            self, vpc=vpc, pool=POOL,
            machine_image=ec2.MachineImage.from_ssm_parameter(AL2023_ARM64_AMI_PARAMETER),
            root_volume_gib=config.root_volume_gib,
            user_data=pool_user_data(region=region, pool=POOL, deployment=deployment),
        )
        self.group = autoscaling.AutoScalingGroup(
            self, "Group",
            auto_scaling_group_name=group_name,
            vpc=vpc,
            vpc_subnets=subnets,
            min_capacity=config.min_size,
            max_capacity=config.max_size,
            capacity_rebalance=True,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=self.instances.launch_template,
                # Order is priority for On-Demand (PRIORITIZED): Graviton5 first, then the fallbacks.
                launch_template_overrides=[
                    autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(name))
                    for name in config.all_instance_types
                ],
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_allocation_strategy=autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
                    on_demand_base_capacity=config.on_demand_base_capacity,
                    on_demand_percentage_above_base_capacity=config.on_demand_percentage_above_base,
                    spot_allocation_strategy=autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
                ),
            ),
        )
        Tags.of(self).add("crossfleet:pool", POOL)
