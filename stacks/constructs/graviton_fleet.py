"""The Graviton CPU fleet: an arm64 Auto Scaling group, Graviton5 first, Graviton4 as fallback."""

from __future__ import annotations

from aws_cdk import Duration, Tags
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from crossfleet.config.fleets import AL2023_ARM64_AMI_PARAMETER, GravitonFleetConfig
from stacks.constructs.pool_instances import (
    PoolInstances,
    pool_instances,
    prioritized_mixed_policy,
)

POOL = "cpu"


class GravitonFleet(Construct):
    """Mixed-instances ASG: On-Demand base, Spot above it (price-capacity-optimized), capacity rebalancing.

    The desired capacity is left unset in the template: the rebalancer owns it, and an unset value is kept
    across stack updates instead of being reset.
    """

    group: autoscaling.AutoScalingGroup
    instances: PoolInstances

    def __init__(self, scope: Construct, id_: str, *, config: GravitonFleetConfig, vpc: ec2.IVpc,
                 subnets: ec2.SubnetSelection, group_name: str, user_data: ec2.UserData,
                 lifecycle_hook_name: str, drain_seconds: int) -> None:
        super().__init__(scope, id_)
        self.instances = pool_instances(
            self, vpc=vpc, pool=POOL,
            machine_image=ec2.MachineImage.from_ssm_parameter(AL2023_ARM64_AMI_PARAMETER),
            root_volume_gib=config.root_volume_gib,
            user_data=user_data,
        )
        self.group = autoscaling.AutoScalingGroup(
            self, "Group",
            auto_scaling_group_name=group_name,
            vpc=vpc,
            vpc_subnets=subnets,
            min_capacity=config.min_size,
            max_capacity=config.max_size,
            capacity_rebalance=True,
            # In-service and pending counts for the dashboards (free for one-minute group metrics).
            group_metrics=[autoscaling.GroupMetrics.all()],
            # Graviton5 first, then the fallbacks, for On-Demand; Spot follows the order only with
            # capacity-optimized-prioritized. On-Demand base, Spot above it.
            mixed_instances_policy=prioritized_mixed_policy(
                self.instances.launch_template, config.all_instance_types,
                on_demand_base=config.on_demand_base_capacity,
                on_demand_percentage_above_base=config.on_demand_percentage_above_base,
                spot_allocation_strategy=config.spot_allocation_strategy),
        )
        # Scale-in waits for the worker: it stops taking jobs, finishes or requeues them, then completes this.
        self.group.add_lifecycle_hook(
            "DrainOnScaleIn", lifecycle_hook_name=lifecycle_hook_name,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
            heartbeat_timeout=Duration.seconds(drain_seconds), default_result=autoscaling.DefaultResult.CONTINUE)
        Tags.of(self).add("crossfleet:pool", POOL)
