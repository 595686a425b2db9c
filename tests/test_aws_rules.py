"""AWS's semantic rules that cfn-lint, cdk-nag and moto do not know, asserted on synthesized templates.

Each test names the AWS page behind its rule; docs/aws-rules.md lists them all with where crossfleet enforces them.
The variants are the synth matrix's own (synthesized once per session, shared with tests/test_synth_matrix.py).
"""

from __future__ import annotations

import json
from typing import Any

from tests.cdk_helpers import asg_for_pool, launch_template_of, resources_of_type
from tests.test_synth_matrix import synthesized


def _gpu_security_group_id(template: dict[str, Any]) -> str:
    data = launch_template_of(template, asg_for_pool(template, "gpu"))["Properties"]["LaunchTemplateData"]
    groups = data["NetworkInterfaces"][0]["Groups"]
    assert len(groups) == 1
    return str(groups[0]["Fn::GetAtt"][0])


def test_efa_security_group_allows_all_traffic_to_and_from_itself():
    """EC2 User Guide, "Create and attach an Elastic Fabric Adapter" / "Prepare an EFA-enabled security group":
    OS-bypass needs a security group that allows all inbound and outbound traffic to and from itself."""
    template = synthesized("capacity-block").template_json("us-west-2")
    group = _gpu_security_group_id(template)
    own = {"Fn::GetAtt": [group, "GroupId"]}
    ingress = [r["Properties"] for r in resources_of_type(template, "AWS::EC2::SecurityGroupIngress").values()]
    egress = [r["Properties"] for r in resources_of_type(template, "AWS::EC2::SecurityGroupEgress").values()]
    assert any(r["GroupId"] == own and r.get("SourceSecurityGroupId") == own and r["IpProtocol"] == "-1"
               for r in ingress), "all traffic in from the group itself"
    assert any(r["GroupId"] == own and r.get("DestinationSecurityGroupId") == own and r["IpProtocol"] == "-1"
               for r in egress), "all traffic out to the group itself"


def test_efa_interfaces_use_every_network_card_of_p5():
    """EC2 User Guide, "Maximize network bandwidth on Amazon EC2 instances with multiple network cards": an ENA
    primary interface, an EFA-only interface on card 0 device 1, one EFA-only interface on every other card.
    p5.48xlarge has 32 network cards and 32 EFA interfaces (DescribeInstanceTypes, EfaInfo)."""
    template = synthesized("capacity-block").template_json("us-west-2")
    data = launch_template_of(template, asg_for_pool(template, "gpu"))["Properties"]["LaunchTemplateData"]
    interfaces = data["NetworkInterfaces"]
    efa = [i for i in interfaces if i.get("InterfaceType") in ("efa", "efa-only")]
    assert len(efa) == 32
    assert sorted(i["NetworkCardIndex"] for i in efa) == list(range(32))
    primary = [i for i in interfaces if i["DeviceIndex"] == 0 and i.get("NetworkCardIndex", 0) == 0]
    assert len(primary) == 1 and primary[0].get("InterfaceType", "interface") in ("interface", "efa")
    # EC2 refuses AssociatePublicIpAddress on a launch with several interfaces (InvalidParameterCombination).
    assert all("AssociatePublicIpAddress" not in i for i in interfaces)
    own = _gpu_security_group_id(template)
    assert all(i["Groups"] == [{"Fn::GetAtt": [own, "GroupId"]}] for i in interfaces)


def _subnet_zones(template: dict[str, Any], group: dict[str, Any]) -> list[str]:
    subnets = resources_of_type(template, "AWS::EC2::Subnet")
    return sorted(subnets[ref["Ref"]]["Properties"]["AvailabilityZone"]
                  for ref in group["Properties"]["VPCZoneIdentifier"])


def test_capacity_block_group_launches_in_the_blocks_zone_without_a_placement_group():
    """EC2 User Guide, "Launch instances using Capacity Blocks": an instance can't launch in a subnet in another
    AZ than the block's. AWS API reference, "CapacityBlock": instances in a Capacity Block are placed close together
    in an EC2 UltraCluster, so a cluster placement group adds nothing but another constraint."""
    app = synthesized("capacity-block-other-zone")
    template = app.template_json("us-west-2")
    group = asg_for_pool(template, "gpu")
    assert _subnet_zones(template, group) == ["us-west-2b"]
    assert resources_of_type(template, "AWS::EC2::PlacementGroup") == {}
    data = launch_template_of(template, group)["Properties"]["LaunchTemplateData"]
    assert "Placement" not in data


def test_gpu_group_uses_only_zones_where_every_type_is_offered(default_app):
    """EC2 User Guide, "Placement strategies" (cluster): a cluster placement group is one AZ and AWS recommends
    one instance type in it; crossfleet's default has no placement group (independent inference jobs do not need
    one) and spreads the GPU group over the configured AZs where the pinned table offers every one of its types:
    in us-east-1 p5en.48xlarge is offered in us-east-1a and us-east-1c only."""
    template = default_app.template_json("us-east-1")
    group = asg_for_pool(template, "gpu")
    assert resources_of_type(template, "AWS::EC2::PlacementGroup") == {}
    assert _subnet_zones(template, group) == ["us-east-1a", "us-east-1c"]


def test_capacity_block_drain_fits_between_the_expiration_warning_and_termination():
    """EC2 User Guide, "Monitor Capacity Blocks using EventBridge": the expiration warning comes 40 minutes before
    the block ends and says its instances begin to terminate in 10 minutes. The GPU group's scale-in hook, and
    the worker's drain inside it, must end within those 600 s, with room for the event, the capacity-events
    Lambda's scale-in and the completion call."""
    template = synthesized("capacity-block").template_json("us-west-2")
    group = asg_for_pool(template, "gpu")
    hooks = [r["Properties"] for r in resources_of_type(template, "AWS::AutoScaling::LifecycleHook").values()
             if r["Properties"]["AutoScalingGroupName"] == {"Ref": _logical_id(template, group)}]
    assert [h["HeartbeatTimeout"] for h in hooks] == [480]
    user_data = json.dumps(launch_template_of(template, group)["Properties"]["LaunchTemplateData"]["UserData"])
    assert '\\\\\\"drain_seconds\\\\\\":480' in user_data or '\\"drain_seconds\\":480' in user_data, \
        "the worker drains within the hook"


def _logical_id(template: dict[str, Any], resource: dict[str, Any]) -> str:
    return next(k for k, v in template["Resources"].items() if v is resource)


def test_spot_follows_the_priority_order_only_when_asked():
    """EC2 Auto Scaling API reference, "InstancesDistribution": price-capacity-optimized picks Spot pools by price
    and capacity and ignores the overrides' order; capacity-optimized-prioritized honours it on a best-effort basis
    (capacity first). On-Demand follows the order with the prioritized strategy either way."""
    from tests.cdk_helpers import synthesize

    app = synthesize({"regions": ["us-east-2"],
                      "graviton_fleet": {"spot_allocation_strategy": "capacity-optimized-prioritized"}}, nag=False)
    distribution = asg_for_pool(app.template_json("us-east-2"), "cpu")["Properties"]["MixedInstancesPolicy"][
        "InstancesDistribution"]
    assert distribution["SpotAllocationStrategy"] == "capacity-optimized-prioritized"
    assert distribution["OnDemandAllocationStrategy"] == "prioritized"


def test_realtime_targets_drain_as_long_as_a_stream_may_last():
    """Elastic Load Balancing, "Target groups for your Application Load Balancers" (Deregistration delay): a
    deregistering target gets no new requests and its in-flight ones have until the delay ends; a target with none
    is released at once. A generation may stream as long as the listener's idle timeout (900 s), and Auto Scaling
    deregisters a terminating instance before its termination hook, so a 60 s delay cut long streams on scale-in."""
    template = synthesized("realtime").template_json("us-east-1")
    (balancer,) = resources_of_type(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    idle = next(int(a["Value"]) for a in balancer["Properties"]["LoadBalancerAttributes"]
                if a["Key"] == "idle_timeout.timeout_seconds")
    for group in resources_of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values():
        delay = next(int(a["Value"]) for a in group["Properties"]["TargetGroupAttributes"]
                     if a["Key"] == "deregistration_delay.timeout_seconds")
        assert delay >= idle


def test_a_block_group_behind_the_endpoint_splits_the_block_window_between_deregistration_and_drain():
    from crossfleet.config import parse_config
    from crossfleet.config.fleets import CAPACITY_BLOCK_DRAIN_SECONDS

    block = parse_config({"regions": [{"region": "us-west-2", "accelerator_cluster": {
        "instance_types": ["p5.48xlarge"], "fallback_instance_types": [], "capacity_block_id": "cr-0123456789abcdef0",
        "availability_zone": "us-west-2a"}}]}).regions[0].accelerator_cluster
    deregistration, drain = block.stream_deregistration_seconds(900), block.drain_seconds(900, load_balanced=True)
    assert deregistration + drain <= CAPACITY_BLOCK_DRAIN_SECONDS


def test_every_dead_letter_queue_outlives_its_source_queue(default_app):
    """Amazon SQS Developer Guide, "Setting-up dead-letter queue retention in Amazon SQS": a standard queue's
    message keeps its original enqueue timestamp in the DLQ, so the DLQ's retention must be longer than the
    source queue's or a redriven message expires early."""
    template = default_app.template_json("us-east-1")
    queues = resources_of_type(template, "AWS::SQS::Queue")
    sources = {k: q for k, q in queues.items() if "RedrivePolicy" in q["Properties"]}
    assert sources
    for logical_id, queue in sources.items():
        dlq = queues[queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]]
        assert queue["Properties"]["MessageRetentionPeriod"] < dlq["Properties"]["MessageRetentionPeriod"], logical_id
