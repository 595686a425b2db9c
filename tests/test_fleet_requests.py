"""The Auto Scaling adapter's requests in the shape the real API accepts, not the shape moto tolerates.

moto accepts an UpdateAutoScalingGroup whose launch template specification carries both LaunchTemplateId and
LaunchTemplateName; EC2 Auto Scaling refuses it ("Valid requests must contain either launchTemplateId or
LaunchTemplateName", aws/aws-cli#7281). The rule: "The ID or the name of the launch template, but not both"
(AWS CloudFormation reference, "AWS::AutoScaling::AutoScalingGroup LaunchTemplateSpecification"; EC2 Auto Scaling
API reference, "LaunchTemplateSpecification"). A botocore Stubber holds the adapter to that request exactly.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.stub import Stubber

from crossfleet_control.aws.fleets import AutoScalingFleets

GROUP = "crossfleet-dev-us-east-1-cpu"


def _described_policy() -> dict[str, Any]:
    """A mixed-instances policy as DescribeAutoScalingGroups returns it: id AND name in every specification."""
    both = {"LaunchTemplateId": "lt-0123456789abcdef0", "LaunchTemplateName": "crossfleet-cpu", "Version": "3"}
    return {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": dict(both),
            "Overrides": [{"InstanceType": "m9g.16xlarge"},
                          {"InstanceType": "m8g.16xlarge", "LaunchTemplateSpecification": dict(both)}],
        },
        "InstancesDistribution": {
            "OnDemandAllocationStrategy": "prioritized", "OnDemandBaseCapacity": 1,
            "OnDemandPercentageAboveBaseCapacity": 0, "SpotAllocationStrategy": "price-capacity-optimized",
        },
    }


def _describe_response() -> dict[str, Any]:
    return {"AutoScalingGroups": [{
        "AutoScalingGroupName": GROUP, "MinSize": 1, "MaxSize": 20, "DesiredCapacity": 2,
        "DefaultCooldown": 300, "AvailabilityZones": ["us-east-1a"], "HealthCheckType": "EC2",
        "CreatedTime": "2026-01-01T00:00:00Z", "MixedInstancesPolicy": _described_policy(),
        "Instances": [], "Tags": [],
    }]}


def test_on_demand_fallback_sends_only_the_launch_template_id():
    client = boto3.client("autoscaling", region_name="us-east-1")
    fleets = AutoScalingFleets(client, {"cpu": GROUP}, on_error=lambda op, error: None)
    only_id = {"LaunchTemplateId": "lt-0123456789abcdef0", "Version": "3"}
    expected_policy = {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": only_id,
            "Overrides": [{"InstanceType": "m9g.16xlarge"},
                          {"InstanceType": "m8g.16xlarge", "LaunchTemplateSpecification": only_id}],
        },
        "InstancesDistribution": {
            "OnDemandAllocationStrategy": "prioritized", "OnDemandBaseCapacity": 1,
            "OnDemandPercentageAboveBaseCapacity": 100, "SpotAllocationStrategy": "price-capacity-optimized",
        },
    }
    with Stubber(client) as stub:
        stub.add_response("describe_auto_scaling_groups", _describe_response(),
                          {"AutoScalingGroupNames": [GROUP]})
        stub.add_response("update_auto_scaling_group", {},
                          {"AutoScalingGroupName": GROUP, "MixedInstancesPolicy": expected_policy})
        assert fleets.telemetry()["cpu"].on_demand_percentage == 0
        fleets.set_on_demand_percentage("cpu", 100)
        stub.assert_no_pending_responses()
