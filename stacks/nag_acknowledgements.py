"""cdk-nag AwsSolutions findings crossfleet accepts, each with the rule, the resource and why.

Acknowledgements are made per resource path, never stack-wide, so a new resource with the same finding
shows up as an unacknowledged error.
"""

from __future__ import annotations

from aws_cdk import Stack
from cdk_nag import NagPackSuppression, NagSuppressions, RegexAppliesTo

from stacks.constructs.network import INTERFACE_ENDPOINTS


def acknowledge_findings(stack: Stack) -> None:
    base = f"/{stack.node.path}"
    for fleet in ("GravitonFleet", "AcceleratorCluster"):
        _ack(stack, f"{base}/{fleet}/Group/ASG", "AwsSolutions-AS3",
             "Scaling activity reaches operators through EventBridge Auto Scaling events and the rebalancer, "
             "which reads the group every cycle; SNS notifications would be a second, unread channel.")
        _ack(stack, f"{base}/{fleet}/Group/ASG", "CdkNagValidationFailure",
             "AwsSolutions-EC26 cannot read volumes through a mixed-instances launch template; the launch "
             "template's root volume is encrypted gp3, asserted in tests/test_region_stack.py.",
             applies_to=["AwsSolutions-EC26"])
    if stack.node.try_find_child("AcceleratorCluster") is not None \
            and stack.node.find_child("AcceleratorCluster").node.try_find_child("WarmLane") is not None:
        _ack(stack, f"{base}/AcceleratorCluster/WarmLane/Group/ASG", "AwsSolutions-AS3",
             "The GPU pool's warm lane reports like the main groups: EventBridge Auto Scaling events and the "
             "rebalancer, which reads the lane with the GPU group every cycle.")
    for endpoint in INTERFACE_ENDPOINTS:
        _ack(stack, f"{base}/Network/Vpc/{endpoint}/SecurityGroup/Resource", "CdkNagValidationFailure",
             "AwsSolutions-EC23 cannot evaluate the VPC CIDR reference; the endpoint security group admits only "
             "TCP 443 from the VPC's own CIDR.", applies_to=["AwsSolutions-EC23"])
    for function in ("Rebalancer", "IntakeRouter", "CapacityEvents"):
        _ack(stack, f"{base}/{function}/Function/Resource", "AwsSolutions-L1",
             "The controllers are pinned to Python 3.13 on arm64, the runtime they are tested on; moving to a "
             "newer runtime is a deliberate, tested change rather than a synth-time default.")
    for policy in ("Rebalancer/Role", "GravitonFleet/InstanceRole", "AcceleratorCluster/InstanceRole"):
        _ack(stack, f"{base}/{policy}/DefaultPolicy/Resource", "AwsSolutions-IAM5",
             "An Auto Scaling group ARN embeds a UUID assigned at creation, so the statement names each group "
             "exactly but wildcards the UUID; it also requires the crossfleet:deployment tag.",
             applies_to=[RegexAppliesTo(regex="/^Resource::arn:<AWS::Partition>:autoscaling:[a-z0-9-]+:"
                                              ".+:autoScalingGroup:\\*:autoScalingGroupName\\/.+$/g")])
    for fleet in ("GravitonFleet", "AcceleratorCluster"):
        _ack(stack, f"{base}/{fleet}/InstanceRole/DefaultPolicy/Resource", "AwsSolutions-IAM5",
             "Result and payload object keys are per job (results/JOB/attempt-N, payloads/...), so the statements "
             "name the results bucket and a key prefix, with object-level actions only.",
             applies_to=[RegexAppliesTo(regex="/^Resource::<ResultsBucket[0-9A-F]+\\.Arn>\\/(results|payloads)"
                                              "\\/\\*$/g")])
        _ack(stack, f"{base}/{fleet}/InstanceRole/DefaultPolicy/Resource", "AwsSolutions-IAM5",
             "cloudwatch:PutMetricData has no resource-level permissions (limited to the crossfleet namespace by "
             "cloudwatch:namespace), nor do the five Session Manager actions (ssm:UpdateInstanceInformation, "
             "ssmmessages:Create/Open Control/Data Channel); the other '*' statement is a Deny on parameters.",
             applies_to=["Resource::*"])
    _ack(stack, f"{base}/WorkQueues/Rejects/Resource", "AwsSolutions-SQS3",
         "The rejects queue is itself a terminal store, like a DLQ: invalid submissions wait there with their "
         "reason for a person; nothing consumes it automatically, so nothing could fail over to a DLQ.")
    _ack(stack, f"{base}/CapacityEvents/DeadLetters/Resource", "AwsSolutions-SQS3",
         "This queue is the dead-letter queue of the capacity EventBridge rules' Lambda target (EventBridge's "
         "DeadLetterConfig, which cdk-nag does not recognise as a redrive): events that could not be recorded.")
    _ack(stack, f"{base}/Results/AccessLogs/Resource", "AwsSolutions-S1",
         "This bucket receives the results bucket's server access logs; logging the log bucket would recurse.")
    _ack(stack, f"{base}/Rebalancer/Role/DefaultPolicy/Resource", "AwsSolutions-IAM5",
         "DescribeAutoScalingGroups, DescribeScalingActivities, cloudwatch:GetMetricData (queue ages and sends) and "
         "ec2:DescribeSpotPriceHistory (public Spot prices, with Spot pools only) support no resource-level "
         "permissions; the other '*' statements are Denies (no retagging, no size, subnet or type changes).",
         applies_to=["Resource::*"])
    _ack(stack, f"{base}/Rebalancer/Role/DefaultPolicy/Resource", "AwsSolutions-IAM5",
         "Switching a mixed-instances group between Spot and On-Demand re-submits its launch template, which "
         "needs ec2:RunInstances/CreateTags on the resources the launch creates; the statement is conditioned on "
         "this stack's own launch templates (ec2:LaunchTemplate, ec2:IsLaunchTemplateResource).",
         applies_to=["Resource::*"])
    _ack(stack, f"{base}/CapacityEvents/Role/DefaultPolicy/Resource", "AwsSolutions-IAM5",
         "ec2:DescribeInstances (is a noticed Spot instance ours?) and DescribeAutoScalingGroups support no "
         "resource-level permissions.", applies_to=["Resource::*"])
    _ack(stack, f"{base}/CapacityEvents/Role/DefaultPolicy/Resource", "AwsSolutions-IAM5",
         "An Auto Scaling group ARN embeds a UUID assigned at creation; the statement names the block's group "
         "exactly, wildcards the UUID and requires the crossfleet:deployment tag.",
         applies_to=[RegexAppliesTo(regex="/^Resource::arn:<AWS::Partition>:autoscaling:[a-z0-9-]+:"
                                          ".+:autoScalingGroup:\\*:autoScalingGroupName\\/.+$/g")])
    _ack(stack, f"{base}/OperatorPolicy/Policy/Resource", "AwsSolutions-IAM5",
         "The operators' read-only observation (DescribeAutoScalingGroups, DescribeScalingActivities, "
         "cloudwatch:GetMetricData, elasticloadbalancing:DescribeRules) supports no resource-level permissions; "
         "every write in this policy names the state table and is bounded by dynamodb:LeadingKeys.",
         applies_to=["Resource::*"])


def _ack(stack: Stack, path: str, rule: str, reason: str, *,
         applies_to: list[str | RegexAppliesTo] | None = None) -> None:
    NagSuppressions.add_resource_suppressions_by_path(
        stack, path, [NagPackSuppression(id=rule, reason=reason, applies_to=applies_to)])
