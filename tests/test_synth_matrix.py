"""A matrix of configurations synthesizes, passes cdk-nag AwsSolutions and cfn-lint with zero errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint

from tests.cdk_helpers import SynthesizedApp, asg_for_pool, launch_template_of, synthesize

MATRIX: dict[str, dict[str, Any] | None] = {
    "default": None,  # uses the session's default_app fixture
    "single-region": {"regions": ["us-east-2"]},
    "neuron": {"regions": ["us-east-1"], "accelerator_cluster": {"kind": "neuron"}},
    "capacity-block": {"regions": ["us-west-2"], "accelerator_cluster": {
        "instance_types": ["p5.48xlarge"], "fallback_instance_types": [], "efa": True,
        "capacity_block_id": "cr-0123456789abcdef0", "availability_zone": "us-west-2a"}},
    "capacity-block-other-zone": {"regions": [{"region": "us-west-2", "accelerator_cluster": {
        "instance_types": ["p5.48xlarge"], "fallback_instance_types": [], "efa": True,
        "capacity_block_id": "cr-0123456789abcdef1", "availability_zone": "us-west-2b"}}]},
    "custom-prefix": {"name": "aiplat", "stage": "prod", "regions": ["us-east-1", "us-west-1"],
                      "graviton_fleet": {"instance_types": ["m8g.4xlarge"], "fallback_instance_types": ["c8g.4xlarge"]},
                      "accelerator_cluster": {"instance_types": ["p5.48xlarge"], "fallback_instance_types": []}},
    "realtime": {"regions": ["us-east-1", "us-west-2"], "realtime": {"enabled": True, "certificate_arns": {
        region: f"arn:aws:acm:{region}:123456789012:certificate/0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
        for region in ("us-east-1", "us-west-2")}}},
    # The GPU pool's warm lane beside a Spot main group, behind the real-time endpoint (docs/aws-rules.md).
    "warm-pool": {"regions": ["us-east-1"], "accelerator_cluster": {
        "spot": True, "max_size": 8, "warm_pool": {"size": 2, "max_prepared": 4}},
        "realtime": {"enabled": True, "certificate_arns": {
            "us-east-1": "arn:aws:acm:us-east-1:123456789012:certificate/0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"}}},
}

# Acknowledgement reasons must say something specific; these say nothing.
VAGUE_REASONS = ("false positive", "not needed", "n/a", "ignore", "todo")


_SYNTHESIZED: dict[str, SynthesizedApp] = {}


def synthesized(name: str) -> SynthesizedApp:
    """One synthesis per configuration for the whole module (nag included: the checks need it)."""
    if name not in _SYNTHESIZED:
        _SYNTHESIZED[name] = synthesize(MATRIX[name])
    return _SYNTHESIZED[name]


@pytest.fixture(scope="module", params=list(MATRIX))
def matrix_app(request: pytest.FixtureRequest, default_app: SynthesizedApp) -> SynthesizedApp:
    return default_app if MATRIX[request.param] is None else synthesized(request.param)


def test_cdk_nag_leaves_no_unacknowledged_finding(matrix_app: SynthesizedApp):
    assembly = matrix_app.app.synth()
    problems = []
    for stack in matrix_app.stacks.values():
        for message in assembly.get_stack_artifact(stack.artifact_id).messages:
            text = str(message.entry.data)
            if message.level.name == "ERROR" or "AwsSolutions" in text or "CdkNag" in text:
                problems.append(f"{message.id}: {text[:200]}")
    assert problems == []


def test_every_acknowledgement_is_per_resource_with_a_specific_reason(matrix_app: SynthesizedApp):
    for region in matrix_app.stacks:
        template = matrix_app.template_json(region)
        assert "cdk_nag" not in template.get("Metadata", {}), "no stack-wide acknowledgements"
        for logical_id, resource in template["Resources"].items():
            for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
                reason = rule["reason"]
                assert rule["id"].startswith(("AwsSolutions-", "CdkNagValidationFailure")), logical_id
                assert len(reason) >= 60, f"{logical_id} {rule['id']}: reason too thin: {reason!r}"
                assert not any(v in reason.lower() for v in VAGUE_REASONS), f"{logical_id}: {reason!r}"


def test_cfn_lint_reports_no_errors(matrix_app: SynthesizedApp):
    for region in matrix_app.stacks:
        template = json.dumps(matrix_app.template_json(region))
        matches = lint(template, config=ManualArgs(regions=[region]))
        errors = [f"{m.rule.id} {m.message} ({m.path_string})" for m in matches if m.rule.id.startswith("E")]
        assert errors == [], region


def _checkov(template: dict[str, Any], folder: Path) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(failed, skipped) as (logical id, check id), from checkov's CloudFormation runner, offline."""
    from checkov.common.bridgecrew.platform_integration import bc_integration

    bc_integration.bc_skip_mapping = True  # no guideline download from the vendor's API (it would hang offline)
    from checkov.cloudformation.runner import Runner
    from checkov.runner_filter import RunnerFilter

    path = folder / "template.json"
    path.write_text(json.dumps(template))
    report = Runner().run(root_folder=None, files=[str(path)], runner_filter=RunnerFilter(framework=["cloudformation"]))
    return ({(c.resource.split(".", 1)[1], c.check_id) for c in report.failed_checks},
            {(c.resource.split(".", 1)[1], c.check_id) for c in report.skipped_checks})


def test_checkov_fails_nothing_unacknowledged_and_no_acknowledgement_is_stale(matrix_app: SynthesizedApp,
                                                                              tmp_path: Path):
    """Every template of the matrix: each failed checkov check is acknowledged on its resource with a specific
    reason (stacks/checkov_acknowledgements.py), and each acknowledgement names a check that really fails there."""
    for region in matrix_app.stacks:
        template = matrix_app.template_json(region)
        acknowledged = {}
        for logical_id, resource in template["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                reason = skip["comment"]
                assert len(reason) >= 60 and not any(v in reason.lower() for v in VAGUE_REASONS), (logical_id, skip)
                acknowledged[(logical_id, skip["id"])] = reason
        failed, skipped = _checkov(template, tmp_path)
        assert sorted(failed - set(acknowledged)) == [], f"{region}: unacknowledged checkov failures"
        assert sorted(set(acknowledged) - failed - skipped) == [], f"{region}: acknowledgements that no longer fail"


def test_matrix_variants_synthesize_what_they_ask_for():
    neuron = synthesized("neuron").template_json("us-east-1")
    group = asg_for_pool(neuron, "gpu")
    types = [o["InstanceType"] for o in group["Properties"]["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]]
    assert types[0].startswith("inf2.")
    ami_ref = launch_template_of(neuron, group)["Properties"]["LaunchTemplateData"]["ImageId"]["Ref"]
    assert "neuron" in neuron["Parameters"][ami_ref]["Default"]

    block = synthesized("capacity-block").template_json("us-west-2")
    group = asg_for_pool(block, "gpu")
    assert "MixedInstancesPolicy" not in group["Properties"], "a reservation pins one type"
    data = launch_template_of(block, group)["Properties"]["LaunchTemplateData"]
    assert data["InstanceType"] == "p5.48xlarge"
    assert data["InstanceMarketOptions"] == {"MarketType": "capacity-block"}
    assert data["CapacityReservationSpecification"] == {
        "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}}
    assert {i["InterfaceType"] for i in data["NetworkInterfaces"]} == {"interface", "efa-only"}

    prefixed = synthesized("custom-prefix")
    assert {s.stack_name for s in prefixed.stacks.values()} == {"aiplat-prod-us-east-1", "aiplat-prod-us-west-1"}
    group = asg_for_pool(prefixed.template_json("us-west-1"), "cpu")
    assert group["Properties"]["AutoScalingGroupName"] == "aiplat-prod-us-west-1-cpu"
