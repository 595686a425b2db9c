"""What every fleet instance gets, whatever its pool: role, security group and a hardened launch template."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct


@dataclass(frozen=True)
class PoolInstances:
    role: iam.Role
    security_group: ec2.SecurityGroup
    launch_template: ec2.LaunchTemplate


def pool_instances(scope: Construct, *, vpc: ec2.IVpc, pool: str, machine_image: ec2.IMachineImage,
                   root_volume_gib: int, user_data: ec2.UserData,
                   placement_group: ec2.PlacementGroup | None = None,
                   instance_type: ec2.InstanceType | None = None) -> PoolInstances:
    # Session Manager is the only way in: no SSH key pair, no inbound rule. Not AmazonSSMManagedInstanceCore, which
    # also grants ssm:GetParameter(s) and ssm:GetParametersByPath on every parameter of the account, ec2messages
    # (Run Command) and more: only what the agent needs to register and open sessions (Session Manager User Guide,
    # "Step 2: Verify or add instance permissions for Session Manager", custom instance profile with Session
    # Manager only). These actions support no resource-level permissions.
    role = iam.Role(scope, "InstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
                    description=f"crossfleet {pool} pool instances: Session Manager and their work queue")
    role.add_to_policy(iam.PolicyStatement(
        sid="SessionManagerOnly",
        actions=["ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                 "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"],
        resources=["*"]))
    # Belt and braces: whatever is attached later, never the account's parameters or secrets.
    role.add_to_policy(iam.PolicyStatement(
        sid="NeverReadParametersOrSecrets", effect=iam.Effect.DENY,
        actions=["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory",
                 "secretsmanager:GetSecretValue", "ssm:SendCommand", "ssm:StartSession"],
        resources=["*"]))
    # Outbound HTTPS only: every AWS API, registry and model hub the instance uses is TLS on 443. The VPC's DNS,
    # the metadata service and Time Sync are not filtered by security groups (VPC User Guide, "Security group
    # rules"). In isolated mode (no NAT) the route tables are the limit: the instance subnets route only to the
    # VPC and the S3/DynamoDB gateway endpoints, whose prefix lists a security group cannot name without a
    # deploy-time lookup, so the rule stays 0.0.0.0/0:443 there too. EFA adds its self-referencing rules.
    security_group = ec2.SecurityGroup(scope, "InstanceSecurityGroup", vpc=vpc, allow_all_outbound=False,
                                       description=f"crossfleet {pool} pool instances (no inbound)")
    security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS APIs and endpoints")
    launch_template = hardened_launch_template(
        scope, "LaunchTemplate", machine_image=machine_image, instance_type=instance_type, role=role,
        security_group=security_group, user_data=user_data, root_volume_gib=root_volume_gib,
        placement_group=placement_group)
    return PoolInstances(role=role, security_group=security_group, launch_template=launch_template)


def hardened_launch_template(scope: Construct, id_: str, *, machine_image: ec2.IMachineImage,
                             instance_type: ec2.InstanceType | None, role: iam.IRole,
                             security_group: ec2.ISecurityGroup, user_data: ec2.UserData, root_volume_gib: int,
                             placement_group: ec2.PlacementGroup | None = None) -> ec2.LaunchTemplate:
    """IMDSv2 only (hop limit 1), no public address, an encrypted gp3 EBS root volume.

    The EBS root is also what a warm pool needs: only an instance with an EBS root device can be stopped
    (EC2 Auto Scaling User Guide, "Warm pools for Amazon EC2 Auto Scaling", Limitations)."""
    return ec2.LaunchTemplate(
        scope, id_,
        machine_image=machine_image,
        instance_type=instance_type,
        role=role,
        security_group=security_group,
        user_data=user_data,
        require_imdsv2=True,
        http_put_response_hop_limit=1,
        associate_public_ip_address=False,
        placement_group=placement_group,
        block_devices=[ec2.BlockDevice(device_name="/dev/xvda", volume=ec2.BlockDeviceVolume.ebs(
            root_volume_gib, volume_type=ec2.EbsDeviceVolumeType.GP3, encrypted=True,
            delete_on_termination=True))],
    )


def prioritized_mixed_policy(launch_template: ec2.LaunchTemplate, instance_types: tuple[str, ...], *,
                             on_demand_base: int, on_demand_percentage_above_base: int,
                             spot_allocation_strategy: str = "price-capacity-optimized",
                             ) -> autoscaling.MixedInstancesPolicy:
    """Instance types in priority order. On-Demand follows it (PRIORITIZED); Spot follows it only with
    capacity-optimized-prioritized (best effort), while price-capacity-optimized ignores it (EC2 Auto Scaling API
    reference, "InstancesDistribution"; crossfleet.config.fleets.SPOT_ALLOCATION_STRATEGIES has the trade-off)."""
    return autoscaling.MixedInstancesPolicy(
        launch_template=launch_template,
        launch_template_overrides=[autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(name))
                                   for name in instance_types],
        instances_distribution=autoscaling.InstancesDistribution(
            on_demand_allocation_strategy=autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
            on_demand_base_capacity=on_demand_base,
            on_demand_percentage_above_base_capacity=on_demand_percentage_above_base,
            # The enum's member names are the API values upper-cased with underscores.
            spot_allocation_strategy=autoscaling.SpotAllocationStrategy[
                spot_allocation_strategy.upper().replace("-", "_")],
        ),
    )
