"""Template assertions on intent, for every configured region of the default app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match

from crossfleet.config.fleets import ACCELERATOR_AMI_PARAMETERS, AL2023_ARM64_AMI_PARAMETER
from crossfleet.config.offerings import offerings
from tests.cdk_helpers import SynthesizedApp, asg_for_pool, launch_template_of, resources_of_type, tag_value

REGIONS = ("us-east-1", "us-east-2", "us-west-2")


def _override_types(group: dict[str, Any]) -> list[str]:
    overrides = group["Properties"]["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    return [o["InstanceType"] for o in overrides]


def _ami_parameter_name(template: dict[str, Any], launch_template: dict[str, Any]) -> str:
    image = launch_template["Properties"]["LaunchTemplateData"]["ImageId"]
    parameter = template["Parameters"][image["Ref"]]
    assert parameter["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    return parameter["Default"]


@pytest.mark.parametrize("region", REGIONS)
def test_graviton_fleet_offers_only_arm64_graviton_types_m9g_first(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    group = asg_for_pool(template, "cpu")
    types = _override_types(group)
    assert types[0].startswith("m9g."), "Graviton5 general purpose comes first"
    table = offerings()
    for name in types:
        assert table[name].arch == "arm64" and table[name].accelerator == "none", name
        assert region in table[name].regions, f"{name} not offered in {region}"
    assert {t.split(".")[0] for t in types} >= {"m9g", "m8g"}, "Graviton4 fallback listed"
    distribution = group["Properties"]["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert distribution["OnDemandBaseCapacity"] >= 1
    assert group["Properties"]["CapacityRebalance"] is True
    assert _ami_parameter_name(template, launch_template_of(template, group)) == AL2023_ARM64_AMI_PARAMETER
    assert "DesiredCapacity" not in group["Properties"], "the rebalancer owns desired capacity"


@pytest.mark.parametrize("region", REGIONS)
def test_accelerator_cluster_is_nvidia_on_demand_scaled_to_zero(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    group = asg_for_pool(template, "gpu")
    types = _override_types(group)
    assert types[0] == "p5.48xlarge"
    for name in types:
        assert offerings()[name].accelerator == "nvidia", name
    assert group["Properties"]["MinSize"] == "0"
    launch_template = launch_template_of(template, group)
    assert _ami_parameter_name(template, launch_template) == ACCELERATOR_AMI_PARAMETERS["nvidia"]
    # Three types, so no cluster placement group (AWS recommends one type per group): see tests/test_aws_rules.py.
    assert "Placement" not in launch_template["Properties"]["LaunchTemplateData"]
    distribution = group["Properties"]["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 100


@pytest.mark.parametrize("region", REGIONS)
def test_launch_templates_require_imdsv2_encrypted_gp3_and_no_public_ip(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    templates = resources_of_type(template, "AWS::EC2::LaunchTemplate")
    assert len(templates) == 2
    for launch_template in templates.values():
        data = launch_template["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        for device in data["BlockDeviceMappings"]:
            assert device["Ebs"]["Encrypted"] is True
            assert device["Ebs"]["VolumeType"] == "gp3"
        for interface in data["NetworkInterfaces"]:
            assert interface["AssociatePublicIpAddress"] is False
        assert "KeyName" not in data, "no SSH key pairs: Session Manager only"


@pytest.mark.parametrize("region", REGIONS)
def test_fleets_run_in_private_subnets_only(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    subnets = resources_of_type(template, "AWS::EC2::Subnet")
    for subnet in subnets.values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
    for pool in ("cpu", "gpu"):
        for subnet_ref in asg_for_pool(template, pool)["Properties"]["VPCZoneIdentifier"]:
            subnet = subnets[subnet_ref["Ref"]]
            assert tag_value(subnet, "aws-cdk:subnet-type") == "Private", subnet_ref


@pytest.mark.parametrize("region", REGIONS)
def test_every_work_queue_has_a_dead_letter_queue_sse_and_tls(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    queues = resources_of_type(template, "AWS::SQS::Queue")
    dlq_ids = set()
    work_queues = {}
    for logical_id, queue in queues.items():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
        redrive = queue["Properties"].get("RedrivePolicy")
        if redrive:
            work_queues[logical_id] = queue
            dlq_ids.add(redrive["deadLetterTargetArn"]["Fn::GetAtt"][0])
    # EventBridge targets keep undeliverable events in a queue too: that queue is a DLQ.
    for rule in resources_of_type(template, "AWS::Events::Rule").values():
        for target in rule["Properties"].get("Targets", []):
            if "DeadLetterConfig" in target:
                dlq_ids.add(target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0])
    rejects = {k for k in queues if k.startswith("WorkQueuesRejects")}
    assert len(rejects) == 1, "the rejects store is the one queue with no DLQ: it is terminal, like a DLQ"
    assert set(queues) == set(work_queues) | dlq_ids | rejects, "every other queue has a DLQ or is one"
    assert len(work_queues) == 3, "cpu, gpu and intake"
    default_app.templates[region].has_resource_properties("AWS::SQS::QueuePolicy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})
    policies = resources_of_type(template, "AWS::SQS::QueuePolicy")
    covered = {q["Ref"] for p in policies.values() for q in p["Properties"]["Queues"]}
    assert covered == set(queues), "TLS enforced on every queue"


@pytest.mark.parametrize("region", REGIONS)
def test_state_table_encrypted_with_pitr_and_retained(default_app: SynthesizedApp, region: str):
    default_app.templates[region].has_resource("AWS::DynamoDB::Table", {
        "Properties": Match.object_like({
            "SSESpecification": {"SSEEnabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
        }),
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
    })


@pytest.mark.parametrize("region", REGIONS)
def test_cost_allocation_tags_on_fleets(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    for pool in ("cpu", "gpu"):
        group = asg_for_pool(template, pool)
        tags = {t["Key"]: t for t in group["Properties"]["Tags"]}
        expected = {"crossfleet:app": "crossfleet", "crossfleet:stage": "dev", "crossfleet:region": region,
                    "crossfleet:deployment": "crossfleet-dev", "crossfleet:pool": pool}
        for key, value in expected.items():
            assert tags[key]["Value"] == value
            assert tags[key]["PropagateAtLaunch"] is True, f"{key} reaches the instances for billing"


@pytest.mark.parametrize("region", REGIONS)
def test_instance_roles_have_session_manager_and_only_their_own_queue(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    roles = {k: v for k, v in resources_of_type(template, "AWS::IAM::Role").items()
             if "ec2.amazonaws.com" in str(v["Properties"]["AssumeRolePolicyDocument"])}
    assert len(roles) == 2
    policies = resources_of_type(template, "AWS::IAM::Policy")
    queues = {k for k, v in resources_of_type(template, "AWS::SQS::Queue").items()
              if "RedrivePolicy" in v["Properties"]}
    consumed_by_role: dict[str, set[str]] = {}
    for role_id, role in roles.items():
        assert "ManagedPolicyArns" not in role["Properties"], "no AWS-managed policy (tests/test_iam_scope.py)"
        for policy in policies.values():
            if {"Ref": role_id} not in policy["Properties"]["Roles"]:
                continue
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                if "sqs:ReceiveMessage" in _as_list(statement["Action"]):
                    for resource in _as_list(statement["Resource"]):
                        consumed_by_role.setdefault(role_id, set()).add(resource["Fn::GetAtt"][0])
    assert all(len(q) == 1 for q in consumed_by_role.values()), "each pool consumes exactly one queue"
    pool_queues = {q for q in queues if "Intake" not in q}
    assert set().union(*consumed_by_role.values()) == pool_queues, "the pool queues, never the intake queue"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_one_stack_per_region_with_explicit_env(default_app: SynthesizedApp):
    assert set(default_app.stacks) == set(REGIONS)
    for region, stack in default_app.stacks.items():
        assert stack.region == region
        assert stack.stack_name == f"crossfleet-dev-{region}"


def test_stateful_resources_keep_their_logical_ids(default_app: SynthesizedApp):
    """Renaming a construct would replace the table or a queue (and lose its jobs) on the next deploy."""
    template = default_app.template_json("us-east-1")
    stateful = {k: v["Type"] for k, v in template["Resources"].items()
                if v["Type"] in ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::S3::Bucket")}
    assert stateful == {
        "ResultsAccessLogs10A17094": "AWS::S3::Bucket",
        "ResultsBucket46167C27": "AWS::S3::Bucket",
        "WorkQueuesIntakeDeadLettersBB868B0D": "AWS::SQS::Queue",
        "WorkQueuesIntake10A1486E": "AWS::SQS::Queue",
        "WorkQueuesRejects161F3072": "AWS::SQS::Queue",
        "StateTable962DE04C": "AWS::DynamoDB::Table",
        "WorkQueuesCpuDeadLetters82CFC2DA": "AWS::SQS::Queue",
        "WorkQueuesCpuJobs0E588A3A": "AWS::SQS::Queue",
        "WorkQueuesGpuDeadLettersC30336B5": "AWS::SQS::Queue",
        "WorkQueuesGpuJobs8741EC0A": "AWS::SQS::Queue",
        "CapacityEventsDeadLetters69F78B93": "AWS::SQS::Queue",
    }


@pytest.mark.parametrize("region", REGIONS)
def test_rebalancer_is_an_arm64_python_lambda_on_a_schedule(default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    functions = {k: v for k, v in resources_of_type(template, "AWS::Lambda::Function").items()
                 if v["Properties"].get("Handler") == "crossfleet_control.handlers.rebalancer.handler"}
    assert len(functions) == 1
    (function_id, function), = functions.items()
    props = function["Properties"]
    assert props["Runtime"] == "python3.13" and props["Architectures"] == ["arm64"]
    assert props["Timeout"] < 60, "finishes before the next one-minute tick"
    assert "ReservedConcurrentExecutions" not in props, "new accounts may not be able to reserve any"
    settings = props["Environment"]["Variables"]["CROSSFLEET_SETTINGS"]
    assert "crossfleet-dev-" + region + "-gpu" in json.dumps(settings)
    rules = resources_of_type(template, "AWS::Events::Rule")
    targeted = [r for r in rules.values()
                if any(t["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]} for t in r["Properties"]["Targets"])]
    assert len(targeted) == 1
    assert targeted[0]["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert targeted[0]["Properties"]["Targets"][0]["RetryPolicy"]["MaximumRetryAttempts"] == 0


@pytest.mark.parametrize("region", REGIONS)
def test_rebalancer_may_size_only_this_deployments_groups_and_never_retag_them(
        default_app: SynthesizedApp, region: str):
    template = default_app.template_json(region)
    statements = [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
                  if "Rebalancer" in json.dumps(p["Properties"]["Roles"])
                  for s in p["Properties"]["PolicyDocument"]["Statement"]]
    sizing = [s for s in statements if "autoscaling:SetDesiredCapacity" in _as_list(s["Action"])]
    assert len(sizing) == 1
    assert sizing[0]["Condition"] == {"StringEquals": {"aws:ResourceTag/crossfleet:deployment": "crossfleet-dev"}}
    resources = json.dumps(sizing[0]["Resource"])
    for pool in ("cpu", "gpu"):
        assert f"autoScalingGroupName/crossfleet-dev-{region}-{pool}" in resources
    assert "autoScalingGroupName/*" not in resources, "never any group name"
    deny = [s for s in statements if s["Effect"] == "Deny" and "autoscaling:DeleteTags" in _as_list(s["Action"])]
    assert deny and set(_as_list(deny[0]["Action"])) == {"autoscaling:CreateOrUpdateTags", "autoscaling:DeleteTags"}
    wildcard_allows = [s for s in statements if s["Effect"] == "Allow" and s["Resource"] == "*"]
    assert all(s["Effect"] == "Deny" for s in statements if "ec2:*:*:" in json.dumps(s["Resource"])), \
        "account-wide EC2 patterns only in ceilings (tests/test_iam_scope.py)"
    launch_template_use = [s for s in wildcard_allows if "ec2:RunInstances" in _as_list(s["Action"])]
    # Reads only: Describe calls and GetMetricData have no resource-level permissions; the Spot price read is
    # there only when a pool uses Spot (the default Graviton fleet does).
    assert all(set(_as_list(s["Action"])) <= {"autoscaling:DescribeAutoScalingGroups", "cloudwatch:GetMetricData",
                                              "autoscaling:DescribeScalingActivities",
                                              "ec2:DescribeSpotPriceHistory"}
               for s in wildcard_allows if s not in launch_template_use)
    # Switching Spot <-> On-Demand re-submits a launch template: only this stack's own templates.
    for statement in launch_template_use:
        assert set(_as_list(statement["Action"])) == {"ec2:RunInstances", "ec2:CreateTags"}
        assert statement["Condition"]["Bool"] == {"ec2:IsLaunchTemplateResource": "true"}
        assert "LaunchTemplate" in json.dumps(statement["Condition"]["ArnLike"]["ec2:LaunchTemplate"])
    passes = [s for s in statements if "iam:PassRole" in _as_list(s["Action"])]
    assert all(s["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}} and
               "InstanceRole" in json.dumps(s["Resource"]) for s in passes)
    sqs_actions = {a for s in statements for a in _as_list(s["Action"]) if a.startswith("sqs:")}
    assert "sqs:DeleteQueue" not in sqs_actions and "sqs:SetQueueAttributes" not in sqs_actions


ALARMS = ("CpuDeadLetters", "CpuOldestJob", "CpuCapacityShortage", "CpuRunawayLaunches", "GpuDeadLetters",
          "GpuOldestJob", "GpuCapacityShortage", "GpuRunawayLaunches", "IntakeDeadLetters", "RejectsRising",
          "RebalancerErrors", "RebalancerMissedCycles", "ControllerCallErrors")


@pytest.mark.parametrize("region", REGIONS)
def test_every_alarm_pages_through_the_encrypted_topic_and_has_a_runbook_entry(default_app: SynthesizedApp,
                                                                              region: str):
    template = default_app.template_json(region)
    alarms = {a["Properties"]["AlarmName"]: a["Properties"]
              for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()}
    assert set(alarms) == {f"crossfleet-dev-{region}-{name}" for name in ALARMS}
    (topic_id, topic), = resources_of_type(template, "AWS::SNS::Topic").items()
    assert "KmsMasterKeyId" in topic["Properties"]
    runbook = (Path(__file__).resolve().parents[1] / "docs" / "runbook.md").read_text()
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": topic_id}]
        anchor = name.rsplit("-", 1)[1].lower()
        assert f"docs/runbook.md#{anchor}" in alarm["AlarmDescription"]
        assert f'<a id="{anchor}"></a>' in runbook, f"runbook entry for {anchor}"
    missed = alarms[f"crossfleet-dev-{region}-RebalancerMissedCycles"]
    assert missed["ComparisonOperator"] == "LessThanThreshold" and missed["TreatMissingData"] == "breaching"
    shortage = alarms[f"crossfleet-dev-{region}-GpuCapacityShortage"]
    assert shortage["EvaluationPeriods"] == 15 and shortage["MetricName"] == "FailedLaunches"
    runaway = alarms[f"crossfleet-dev-{region}-GpuRunawayLaunches"]
    assert runaway["MetricName"] == "RunawayGuardHolds" and runaway["Threshold"] == 1
    assert {"Name": "Pool", "Value": "gpu"} in runaway["Dimensions"]


def test_dashboards_per_region_and_one_global(default_app: SynthesizedApp):
    names = {}
    for region in REGIONS:
        for dashboard in resources_of_type(default_app.template_json(region), "AWS::CloudWatch::Dashboard").values():
            names[dashboard["Properties"]["DashboardName"]] = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert set(names) == {f"crossfleet-dev-{r}" for r in REGIONS} | {"crossfleet-dev-global"}
    regional = names["crossfleet-dev-us-east-1"]
    for panel in ("backlog per pool", "oldest queued job", "desired / in service / pending", "moves by reason",
                  "capacity health", "jobs finished per minute", "estimated $/h and kWh/h", "SLO attainment per pool"):
        assert panel in regional, panel
    for metric in ("Backlog", "DesiredCapacity", "FailedLaunches", "MovesDecided", "ApproximateAgeOfOldestMessage",
                   "GroupInServiceInstances", "GroupPendingInstances", "NumberOfMessagesDeleted", "JobsOnTime",
                   "JobsLate", "CapacityStatus", "SpotFallback", "failover"):
        assert metric in regional, metric
    assert all(region in names["crossfleet-dev-global"] for region in REGIONS)
    assert "CapacityStatus" in names["crossfleet-dev-global"], "every region's capacity status side by side"
