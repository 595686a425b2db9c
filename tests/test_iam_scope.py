"""Which state-table partitions each role may read, write and delete, asked of the synthesized policies.

Partitions (crossfleet_control.aws): job#ID (ledger), rebalancer#REGION (lease, memory, operator overrides),
decisions#REGION (decision log), capacity#REGION (breakers, GPU summary). A key the template does not bound shows
up here as allowed, so each test fails on an unconditioned grant such as grant_read_write_data.

Why not moto's IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT): tried with the worker's synthesized statements, moto
5.2.5 authorizes DynamoDB calls against resource "*" (its DynamoDB responses name no resource), so a statement that
names the table refuses even the legitimate ledger write, and it evaluates only a few condition keys, ignoring
dynamodb:LeadingKeys. It could not tell a scoped policy from a broken one, so the policies are evaluated here
(tests/iam_eval.py: IAM's Deny > Allow > implicit deny, ForAllValues over absent keys is true, Null checks).
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import CfnElement, Stack
from aws_cdk import aws_iam as iam

from tests.cdk_helpers import SynthesizedApp, synthesize
from tests.iam_eval import as_list, evaluate, managed_policy_statements, render, role_statements

REGION = "us-east-1"
OTHER = "us-west-2"
# What each kind of request is, in IAM terms: (action, extra context).
READS = ("dynamodb:GetItem", "dynamodb:Query")
WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem")
DELETES = ("dynamodb:DeleteItem",)
PARTITIONS = {
    "job": "job#4f1c2d", "controller": f"rebalancer#{REGION}", "decisions": f"decisions#{REGION}",
    "capacity": f"capacity#{REGION}", "other-region-controller": f"rebalancer#{OTHER}",
}


def _logical_id(stack: Stack, role: iam.IRole) -> str:
    element = role.node.default_child
    assert isinstance(element, CfnElement)
    return stack.get_logical_id(element)


def _roles(app: SynthesizedApp) -> dict[str, str]:
    stack = app.stacks[REGION]
    return {"worker-cpu": _logical_id(stack, stack.graviton_fleet.instances.role),
            "worker-gpu": _logical_id(stack, stack.accelerator_cluster.instances.role),
            "rebalancer": _logical_id(stack, stack.rebalancer.function.role),  # type: ignore[arg-type]
            "router": _logical_id(stack, stack.router.function.role),  # type: ignore[arg-type]
            "capacity-events": _logical_id(stack, stack.capacity_events.function.role)}  # type: ignore[arg-type]


def _table(app: SynthesizedApp) -> str:
    stack = app.stacks[REGION]
    return f"<{_logical_id_of(stack, stack.state.table)}.Arn>"


def _logical_id_of(stack: Stack, construct: Any) -> str:
    element = construct.node.default_child
    assert isinstance(element, CfnElement)
    return stack.get_logical_id(element)


def _access(app: SynthesizedApp, statements: list[dict[str, Any]]) -> dict[str, set[str]]:
    """For each partition: which of read / write / delete every action of that kind is allowed on."""
    table = _table(app)
    access: dict[str, set[str]] = {}
    for name, key in PARTITIONS.items():
        granted = set()
        for kind, actions in (("read", READS), ("write", WRITES), ("delete", DELETES)):
            if any(evaluate(statements, a, table, {"dynamodb:LeadingKeys": [key]}).allowed for a in actions):
                granted.add(kind)
        access[name] = granted
    return access


EXPECTED = {
    # Workers: the ledger and nothing else (no override, breaker, lease or decision; no delete).
    "worker-cpu": {"job": {"read", "write"}},
    "worker-gpu": {"job": {"read", "write"}},
    # The controller: its lease/memory/overrides (read; it writes lease and memory there), decisions, breakers, and
    # the ledger of the jobs it moves. Never another region's controller partition, never a delete.
    "rebalancer": {"job": {"read", "write"}, "controller": {"read", "write"}, "decisions": {"read", "write"},
                   "capacity": {"read", "write"}},
    # The router: writes the ledger, reads the latest decision and the breakers to place jobs.
    "router": {"job": {"read", "write"}, "decisions": {"read"}, "capacity": {"read"}},
    # Capacity events: this region's breakers and GPU summary only.
    "capacity-events": {"capacity": {"read", "write"}},
}


def test_operators_suggested_policy_reads_state_and_writes_only_overrides(default_app: SynthesizedApp):
    """Overrides are items in the controller's partition (sort key override#POOL): the only write operators get."""
    stack = default_app.stacks[REGION]
    template = default_app.template_json(REGION)
    statements = managed_policy_statements(template, _logical_id_of(stack, stack.operator_policy.policy))
    access = {name: kinds for name, kinds in _access(default_app, statements).items() if kinds}
    assert access == {"job": {"read"}, "controller": {"read", "write", "delete"}, "decisions": {"read"},
                      "capacity": {"read"}}
    assert not evaluate(statements, "dynamodb:Scan", _table(default_app), {}).allowed
    assert "OperatorPolicyArn" in template["Outputs"]


@pytest.mark.parametrize("role", list(EXPECTED))
def test_each_role_reads_and_writes_only_its_partitions(default_app: SynthesizedApp, role: str):
    template = default_app.template_json(REGION)
    statements = role_statements(template, _roles(default_app)[role])
    access = {name: kinds for name, kinds in _access(default_app, statements).items() if kinds}
    assert access == EXPECTED[role]


@pytest.mark.parametrize("role", list(EXPECTED))
def test_no_role_may_scan_or_touch_the_table_without_naming_partitions(default_app: SynthesizedApp, role: str):
    """A Scan carries no partition key; ForAllValues alone would let it through (the Null check refuses it)."""
    template = default_app.template_json(REGION)
    statements = role_statements(template, _roles(default_app)[role])
    table = _table(default_app)
    for action in ("dynamodb:Scan", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteTable",
                   "dynamodb:UpdateTable", "dynamodb:PartiQLUpdate"):
        verdict = evaluate(statements, action, table, {})
        assert not verdict.allowed, f"{role} {action} without keys: {verdict.why}"


def test_a_worker_cannot_pin_the_gpu_pool_or_forge_a_breaker(default_app: SynthesizedApp):
    """The issue's attack, spelled out: an override#gpu item or a capacity# breaker, written with worker rights,
    alone or hidden in a batch with a legitimate ledger write."""
    template = default_app.template_json(REGION)
    table = _table(default_app)
    for role in ("worker-cpu", "worker-gpu"):
        statements = role_statements(template, _roles(default_app)[role])
        for keys in ([f"rebalancer#{REGION}"], [f"capacity#{REGION}"], ["job#1", f"rebalancer#{REGION}"]):
            for action in ("dynamodb:PutItem", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"):
                assert not evaluate(statements, action, table, {"dynamodb:LeadingKeys": keys}).allowed, (role, keys)
        assert evaluate(statements, "dynamodb:BatchWriteItem", table,
                        {"dynamodb:LeadingKeys": ["job#1", "job#2"]}).allowed, "the ledger still works"


def test_a_worker_touches_only_jobs_in_the_other_regions_ledgers(default_app: SynthesizedApp):
    """A job that failed over keeps its identity in its origin region's ledger, so workers may claim there: job#
    items only, never that region's overrides, lease or breakers."""
    template = default_app.template_json(REGION)
    for role in ("worker-cpu", "worker-gpu"):
        statements = role_statements(template, _roles(default_app)[role])
        (origin,) = [s for s in statements if s.get("Sid") == "ClaimJobsInOriginLedgers"]
        for peer_table in (render(r) for r in as_list(origin["Resource"])):
            for keys in (["rebalancer#us-east-2"], ["capacity#us-east-2"], ["decisions#us-east-2"]):
                assert not evaluate(statements, "dynamodb:PutItem", peer_table,
                                    {"dynamodb:LeadingKeys": keys}).allowed, (role, peer_table, keys)
            assert not evaluate(statements, "dynamodb:UpdateItem", peer_table, {}).allowed, "keys must be named"
            assert evaluate(statements, "dynamodb:UpdateItem", peer_table,
                            {"dynamodb:LeadingKeys": ["job#1"]}).allowed, "the claim in the origin still works"


def _group_arn(app: SynthesizedApp, statements: list[dict[str, Any]], pool: str) -> str:
    """The ARN a real call names: the policy's pattern with the group's creation UUID filled in."""
    patterns = [render(r) for s in statements for r in as_list(s.get("Resource", []))
                if f"autoScalingGroupName/crossfleet-dev-{REGION}-{pool}" in render(r)]
    assert patterns, f"no statement names the {pool} group"
    return patterns[0].replace("autoScalingGroup:*:", "autoScalingGroup:0a1b2c3d-uuid:")


OWN_TAG = {"aws:ResourceTag/crossfleet:deployment": "crossfleet-dev"}


def test_rebalancer_may_set_desired_capacity_and_switch_market_but_never_resize_bounds(default_app: SynthesizedApp):
    template = default_app.template_json(REGION)
    statements = role_statements(template, _roles(default_app)["rebalancer"])
    configured = default_app.config.regions[0]
    types = {"cpu": list(configured.graviton_fleet.all_instance_types),
             "gpu": list(configured.accelerator_cluster.all_instance_types)}
    for pool, other in (("cpu", "gpu"), ("gpu", "cpu")):
        own_types = types[pool]
        group = _group_arn(default_app, statements, pool)
        assert not evaluate(statements, "autoscaling:UpdateAutoScalingGroup", group,
                            {**OWN_TAG, "autoscaling:InstanceTypes": types[other][:1]}).allowed, \
            f"the other pool's types never go into the {pool} group"
        assert evaluate(statements, "autoscaling:SetDesiredCapacity", group, OWN_TAG).allowed
        assert not evaluate(statements, "autoscaling:SetDesiredCapacity", group, {}).allowed, "tag required"
        # What the code sends: the group's own overrides with a new On-Demand share.
        assert evaluate(statements, "autoscaling:UpdateAutoScalingGroup", group,
                        {**OWN_TAG, "autoscaling:InstanceTypes": own_types}).allowed
        for ceiling in ({"autoscaling:MaxSize": "1000"}, {"autoscaling:MinSize": "50"},
                        {"autoscaling:VPCZoneIdentifiers": ["subnet-0badc0de"]},
                        {"autoscaling:LaunchConfigurationName": "mine"},
                        {"autoscaling:InstanceTypes": [*own_types, "u7in-32tb.224xlarge"]}):
            verdict = evaluate(statements, "autoscaling:UpdateAutoScalingGroup", group, {**OWN_TAG, **ceiling})
            assert not verdict.allowed, f"{pool} {ceiling}: {verdict.why}"
    other = _group_arn(default_app, statements, "cpu").replace(f"crossfleet-dev-{REGION}-cpu", "someone-elses")
    assert not evaluate(statements, "autoscaling:SetDesiredCapacity", other, OWN_TAG).allowed


def test_rebalancer_launches_only_configured_types_into_its_own_vpc(default_app: SynthesizedApp):
    template = default_app.template_json(REGION)
    statements = role_statements(template, _roles(default_app)["rebalancer"])
    launch = {"ec2:IsLaunchTemplateResource": "true",
              "ec2:LaunchTemplate": next(render(a) for s in statements if "Condition" in s
                                         for a in as_list(s["Condition"].get("ArnLike", {}).get(
                                             "ec2:LaunchTemplate", [])))}
    configured = default_app.config.regions[0].graviton_fleet.all_instance_types[0]
    instance = "arn:<AWS::Partition>:ec2:us-east-1:123456789012:instance/*"
    assert evaluate(statements, "ec2:RunInstances", instance, {**launch, "ec2:InstanceType": configured}).allowed
    assert not evaluate(statements, "ec2:RunInstances", instance,
                        {**launch, "ec2:InstanceType": "u7in-32tb.224xlarge"}).allowed
    assert not evaluate(statements, "ec2:RunInstances", instance, {"ec2:InstanceType": configured}).allowed, \
        "only through this stack's launch templates"
    subnet = "arn:<AWS::Partition>:ec2:us-east-1:123456789012:subnet/subnet-0badc0de"
    elsewhere = {**launch, "ec2:Vpc": "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-other"}
    assert not evaluate(statements, "ec2:RunInstances", subnet, elsewhere).allowed


def test_capacity_events_can_never_size_or_launch(default_app: SynthesizedApp):
    template = default_app.template_json(REGION)
    statements = role_statements(template, _roles(default_app)["capacity-events"])
    group = (f"arn:aws:autoscaling:{REGION}:123456789012:autoScalingGroup:u:"
             f"autoScalingGroupName/crossfleet-dev-{REGION}-gpu")
    for action in ("autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup",
                   "autoscaling:TerminateInstanceInAutoScalingGroup", "ec2:RunInstances", "iam:PassRole"):
        assert not evaluate(statements, action, group, OWN_TAG).allowed, action
    assert any(s["Effect"] == "Deny" and "autoscaling:SetDesiredCapacity" in as_list(s["Action"])
               and s["Resource"] == "*" for s in statements), "an explicit ceiling, not just an absent grant"


def test_capacity_block_drain_is_its_only_group_action(capacity_block_app: SynthesizedApp):
    stack = capacity_block_app.stacks["us-west-2"]
    template = capacity_block_app.template_json("us-west-2")
    statements = role_statements(template, _logical_id_of(stack, stack.capacity_events.function.role))
    patterns = [render(r) for s in statements if s["Effect"] == "Allow" for r in as_list(s["Resource"])
                if "autoScalingGroupName" in render(r)]
    assert patterns and all(p.endswith("autoScalingGroupName/crossfleet-dev-us-west-2-gpu") for p in patterns)
    group = patterns[0].replace("autoScalingGroup:*:", "autoScalingGroup:u:")
    assert evaluate(statements, "autoscaling:TerminateInstanceInAutoScalingGroup", group, OWN_TAG).allowed
    assert not evaluate(statements, "autoscaling:SetDesiredCapacity", group, OWN_TAG).allowed


@pytest.fixture(scope="module")
def capacity_block_app() -> SynthesizedApp:
    return synthesize({"regions": ["us-west-2"], "accelerator_cluster": {
        "instance_types": ["p5.48xlarge"], "fallback_instance_types": [], "efa": True,
        "capacity_block_id": "cr-0123456789abcdef0", "availability_zone": "us-west-2a"}}, nag=False)


@pytest.mark.parametrize("role", ["worker-cpu", "worker-gpu"])
def test_instances_get_session_manager_only_never_the_accounts_parameters(default_app: SynthesizedApp, role: str):
    template = default_app.template_json(REGION)
    role_id = _roles(default_app)[role]
    assert "ManagedPolicyArns" not in template["Resources"][role_id]["Properties"], \
        "no AmazonSSMManagedInstanceCore (it reads every SSM parameter of the account)"
    statements = role_statements(template, role_id)
    parameter = f"arn:aws:ssm:{REGION}:123456789012:parameter/prod/db-password"
    for action in ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:SendCommand"):
        assert not evaluate(statements, action, parameter).allowed, action
    assert not evaluate(statements, "secretsmanager:GetSecretValue", "arn:aws:secretsmanager:x:1:secret:s").allowed
    for action in ("ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                   "ssmmessages:OpenDataChannel"):
        assert evaluate(statements, action, "*").allowed, f"Session Manager needs {action}"
    session = [s for s in statements if s.get("Sid") == "SessionManagerOnly"]
    assert len(session) == 1 and len(as_list(session[0]["Action"])) == 5


def test_small_hardening_items(default_app: SynthesizedApp):
    template = default_app.template_json(REGION)
    resources = template["Resources"]
    (table,) = [r for r in resources.values() if r["Type"] == "AWS::DynamoDB::Table"]
    assert table["Properties"]["DeletionProtectionEnabled"] is True, "retained by default, so protected"
    logs = next(r for k, r in resources.items() if k.startswith("ResultsAccessLogs") and r["Type"] == "AWS::S3::Bucket")
    assert "AccessControl" not in logs["Properties"], "no legacy ACL"
    assert logs["Properties"]["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    keys = [r for r in resources.values() if r["Type"] == "AWS::KMS::Key"]
    cloudwatch = [s for k in keys for s in k["Properties"]["KeyPolicy"]["Statement"]
                  if "cloudwatch.amazonaws.com" in str(s.get("Principal"))]
    assert cloudwatch and all("aws:SourceAccount" in s.get("Condition", {}).get("StringEquals", {})
                              for s in cloudwatch), "CloudWatch acting for this account only"



def test_endpoint_policies_admit_only_this_deployments_resources(default_app: SynthesizedApp):
    template = default_app.template_json(REGION)
    endpoints = {render(r["Properties"]["ServiceName"]): r["Properties"].get("PolicyDocument")
                 for r in template["Resources"].values() if r["Type"] == "AWS::EC2::VPCEndpoint"}

    def policy(service: str) -> list[dict[str, Any]]:
        (document,) = [d for name, d in endpoints.items() if name.endswith(f".{service}")]
        assert document is not None, f"{service} endpoint has the default allow-all policy"
        return as_list(document["Statement"])

    stack = default_app.stacks[REGION]
    bucket = f"<{_logical_id_of(stack, stack.results.bucket)}.Arn>"
    s3 = policy("s3")
    assert evaluate(s3, "s3:PutObject", f"{bucket}/results/job/attempt-1").allowed
    assert evaluate(s3, "s3:GetObject", f"{bucket}/payloads/a.json").allowed
    for action, resource in (("s3:PutObject", "arn:aws:s3:::attacker-bucket/loot"),
                             ("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/x"),
                             ("s3:DeleteObject", f"{bucket}/results/job/attempt-1"),
                             ("s3:PutObject", "arn:<AWS::Partition>:s3:::al2023-repos-us-east-1-abc/x")):
        assert not evaluate(s3, action, resource).allowed, (action, resource)
    dynamodb = policy("dynamodb")
    assert evaluate(dynamodb, "dynamodb:PutItem", _table(default_app)).allowed
    assert not evaluate(dynamodb, "dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/other").allowed
    assert not evaluate(dynamodb, "dynamodb:Scan", _table(default_app)).allowed
    sqs = policy("sqs")
    assert all(s["Resource"] != "*" for s in sqs)
    gpu_queue = f"<{_logical_id_of(stack, stack.queues.pools['gpu'].queue)}.Arn>"
    assert evaluate(sqs, "sqs:ReceiveMessage", gpu_queue).allowed
    assert not evaluate(sqs, "sqs:SendMessage", "arn:aws:sqs:us-east-1:999999999999:exfil").allowed


def test_instances_send_only_https_and_isolated_mode_syncs_models_from_s3():
    from tests.cdk_helpers import asg_for_pool, launch_template_of
    from tests.test_worker_install import render as render_user_data

    app = synthesize({"regions": ["us-east-2"], "network": {"nat_gateways": 0,
                                                            "models_s3_uri": "s3://acme-models/crossfleet/"}},
                     nag=False)
    template = app.template_json("us-east-2")
    resources = template["Resources"]
    assert not [k for k, r in resources.items() if r["Type"] == "AWS::EC2::NatGateway"], "isolated: no NAT"
    groups = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroup"
              and "pool instances" in r["Properties"]["GroupDescription"]]
    assert len(groups) == 2
    for group in groups:
        assert group["Properties"]["SecurityGroupEgress"] == [{
            "CidrIp": "0.0.0.0/0", "Description": "HTTPS to AWS APIs and endpoints", "FromPort": 443,
            "IpProtocol": "tcp", "ToPort": 443}]
    for pool in ("cpu", "gpu"):
        script = render_user_data(launch_template_of(template, asg_for_pool(template, pool))[
            "Properties"]["LaunchTemplateData"]["UserData"])
        assert "aws s3 sync s3://acme-models/crossfleet/ /opt/crossfleet/models --only-show-errors" in script
    stack = app.stacks["us-east-2"]
    statements = role_statements(template, _logical_id_of(stack, stack.graviton_fleet.instances.role))
    assert evaluate(statements, "s3:GetObject", "arn:<AWS::Partition>:s3:::acme-models/crossfleet/m.gguf").allowed
    assert not evaluate(statements, "s3:GetObject", "arn:<AWS::Partition>:s3:::acme-models/secret/x").allowed
    endpoint = next(r["Properties"]["PolicyDocument"] for r in resources.values()
                    if r["Type"] == "AWS::EC2::VPCEndpoint" and render(r["Properties"]["ServiceName"]).endswith(".s3"))
    assert evaluate(as_list(endpoint["Statement"]), "s3:GetObject",
                    "arn:<AWS::Partition>:s3:::acme-models/crossfleet/m.gguf").allowed
