"""The GPU pool's warm lane: an On-Demand, one-type Auto Scaling group with a warm pool of stopped instances.

AWS refuses a warm pool on a group that has a mixed instances policy or launches Spot Instances (EC2 Auto Scaling
User Guide, "Warm pools for Amazon EC2 Auto Scaling", Limitations; API reference, PutWarmPool), so the warm pool
does not go on the main GPU group, which keeps its prioritized type list and its Spot option. The lane is a second
group of the same pool: same AMI, role, security group, subnets and work queue, one instance type, a launch
template of its own with that type and no market options (On-Demand), and no MixedInstancesPolicy.

An instance's first boot prepares it (user data pulls the agent, the model server's image and the weights onto
its EBS root volume) and a launch lifecycle hook holds it in Warmed:Pending:Wait until that is done; it is then
stopped (Warmed:Stopped). When the rebalancer raises the lane's desired capacity, Auto Scaling starts a stopped
instance instead of launching a new one: a boot from a disk that already holds everything. Each boot runs
`crossfleet_worker.warm_lane`, which reads the target lifecycle state from the instance metadata and starts the
worker (and model server) only when the instance is going InService, never while it is being prepared.
"""

from __future__ import annotations

from aws_cdk import Duration, Tags
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from crossfleet.config.fleets import WarmPoolConfig
from stacks.constructs.pool_instances import PoolInstances, hardened_launch_template

# How long a first boot may take to pull the agent, the model server's image and the weights before the launch
# hook gives up on it. An estimate, not a measurement: tens of GB of image and weights at a few hundred MB/s from
# ECR and S3 take minutes; 30 minutes leaves a wide margin. A timed-out preparation is ABANDONed (terminated and
# replaced) rather than stopped half-prepared into the warm pool.
PREPARE_SECONDS = 1800


class WarmLane(Construct):
    group: autoscaling.AutoScalingGroup
    launch_template: ec2.LaunchTemplate
    warm_pool: autoscaling.WarmPool

    def __init__(self, scope: Construct, id_: str, *, config: WarmPoolConfig, instances: PoolInstances,
                 machine_image: ec2.IMachineImage, root_volume_gib: int, user_data: ec2.UserData,
                 vpc: ec2.IVpc, subnets: ec2.SubnetSelection, group_name: str, launch_hook_name: str,
                 drain_hook_name: str, drain_seconds: int,
                 placement_group: ec2.PlacementGroup | None = None) -> None:
        super().__init__(scope, id_)
        self.launch_template = hardened_launch_template(
            self, "LaunchTemplate", machine_image=machine_image,
            instance_type=ec2.InstanceType(config.instance_type), role=instances.role,
            security_group=instances.security_group, user_data=user_data, root_volume_gib=root_volume_gib,
            placement_group=placement_group)
        # min 0: the lane holds no running instance of its own; the rebalancer fills it first when the GPU pool
        # grows (crossfleet_control.aws.fleets). Its max is the lane's prepared capacity (in service + warm).
        self.group = autoscaling.AutoScalingGroup(
            self, "Group", auto_scaling_group_name=group_name, vpc=vpc, vpc_subnets=subnets,
            launch_template=self.launch_template, min_capacity=0, max_capacity=config.max_prepared,
            group_metrics=[autoscaling.GroupMetrics.all()])
        # Without a launch hook, an instance that is still pulling its image could be stopped into the pool, or
        # put in service, before it is ready (User Guide, "Warm pools", Lifecycle hooks).
        self.group.add_lifecycle_hook(
            "PrepareOnLaunch", lifecycle_hook_name=launch_hook_name,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_LAUNCHING,
            heartbeat_timeout=Duration.seconds(PREPARE_SECONDS), default_result=autoscaling.DefaultResult.ABANDON)
        # Scale-in drains like the main group: the agent requeues or finishes its jobs, then completes this.
        self.group.add_lifecycle_hook(
            "DrainOnScaleIn", lifecycle_hook_name=drain_hook_name,
            lifecycle_transition=autoscaling.LifecycleTransition.INSTANCE_TERMINATING,
            heartbeat_timeout=Duration.seconds(drain_seconds), default_result=autoscaling.DefaultResult.CONTINUE)
        # Scale-in terminates (ReuseOnScaleIn false): the agent drains only for a Terminated target state, and the
        # pool refills with an instance prepared from scratch.
        self.warm_pool = self.group.add_warm_pool(
            min_size=config.size, max_group_prepared_capacity=config.max_prepared,
            pool_state=autoscaling.PoolState[config.state.upper()], reuse_on_scale_in=False)
        Tags.of(self).add("crossfleet:lane", "warm")
