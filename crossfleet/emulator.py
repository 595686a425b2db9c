"""Deploy a synthesized crossfleet assembly into an AWS emulator (moto), the way `cdk deploy` would.

`cdk deploy` does three things this module repeats against any endpoint: it publishes the assets listed in
each stack's `*.assets.json` (directories zipped, files as they are) to the bootstrap bucket, uploads the
template there too, and creates the stack from that TemplateURL with the bootstrap version parameter present.
What only AWS has (the public AMI parameters) is seeded into the emulator first.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOOTSTRAP_QUALIFIER = "hnb659fds"
BOOTSTRAP_VERSION = "30"


@dataclass(frozen=True)
class StackArtifact:
    name: str
    region: str
    template_file: Path
    assets_file: Path


def stack_artifacts(out_dir: Path) -> list[StackArtifact]:
    manifest = json.loads((out_dir / "manifest.json").read_text())
    stacks = []
    for artifact_id, artifact in manifest["artifacts"].items():
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        assets = out_dir / f"{artifact_id}.assets.json"
        stacks.append(StackArtifact(name=artifact["properties"].get("stackName", artifact_id),
                                    region=artifact["environment"].rsplit("/", 1)[-1],
                                    template_file=out_dir / artifact["properties"]["templateFile"],
                                    assets_file=assets))
    return stacks


def _zip_directory(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, _, files in os.walk(path):
            for name in sorted(files):
                full = Path(root) / name
                archive.write(full, full.relative_to(path).as_posix())
    return buffer.getvalue()


def _resolve(text: str, account: str, region: str) -> str:
    return text.replace("${AWS::AccountId}", account).replace("${AWS::Region}", region).replace(
        "${AWS::Partition}", "aws")


def publish_assets(stack: StackArtifact, s3: Any, account: str) -> dict[str, tuple[str, str]]:
    """Upload every file asset of a stack; returns asset id -> (bucket, key)."""
    manifest = json.loads(stack.assets_file.read_text())
    published = {}
    for asset_id, asset in manifest.get("files", {}).items():
        source = stack.assets_file.parent / asset["source"]["path"]
        body = _zip_directory(source) if asset["source"].get("packaging") == "zip" else source.read_bytes()
        for destination in asset["destinations"].values():
            region = destination.get("region", stack.region)
            bucket = _resolve(destination["bucketName"], account, region)
            key = _resolve(destination["objectKey"], account, region)
            _ensure_bucket(s3, bucket, region)
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            published[asset_id] = (bucket, key)
    return published


def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=bucket, **config)


def bootstrap(ssm: Any) -> None:
    """What `cdk bootstrap` leaves behind that a template checks: the bootstrap version parameter."""
    ssm.put_parameter(Name=f"/cdk-bootstrap/{BOOTSTRAP_QUALIFIER}/version", Value=BOOTSTRAP_VERSION, Type="String",
                      Overwrite=True)


def seed_public_parameters(template: dict[str, Any], account: str, region: str, image_ids: dict[str, str]) -> list[str]:
    """AWS publishes /aws/service/... AMI parameters in every account; moto knows only some. Seed the rest
    (in-process: the emulator must run in this process) with an emulator AMI of the right architecture."""
    import datetime

    from moto.ssm.models import Parameter, ssm_backends

    backend = ssm_backends[account][region]
    seeded = []
    for parameter in template.get("Parameters", {}).values():
        name = parameter.get("Default", "")
        if not name.startswith("/aws/service/") or backend.get_parameter(name) is not None:
            continue
        architecture = "arm64" if "arm64" in name else "x86_64"
        backend._parameters[name].append(Parameter(
            account, name, image_ids[architecture], "String", "seeded by crossfleet's emulator deploy", None, None,
            datetime.datetime.now(), 1, "aws:ec2:image"))
        seeded.append(name)
    return seeded


def create_stack(cloudformation: Any, s3: Any, stack: StackArtifact, account: str, template: dict[str, Any],
                 timeout_seconds: float = 120) -> dict[str, Any]:
    """Upload the template like `cdk deploy` (templates over 50 KB go by URL) and wait for the result."""
    bucket = f"cdk-{BOOTSTRAP_QUALIFIER}-assets-{account}-{stack.region}"
    _ensure_bucket(s3, bucket, stack.region)
    key = f"templates/{stack.name}.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(template).encode())
    # The S3 URL form CloudFormation takes (the emulator resolves it against its own S3).
    cloudformation.create_stack(StackName=stack.name, TemplateURL=f"https://s3.amazonaws.com/{bucket}/{key}",
                                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"])
    deadline = time.monotonic() + timeout_seconds
    while True:
        described = cloudformation.describe_stacks(StackName=stack.name)["Stacks"][0]
        if not described["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            return described
        time.sleep(0.5)


# Resource types moto's CloudFormation cannot create, or cannot create without running Lambda in Docker.
# Each is removed before the create (references to it become a placeholder name) and its intent is checked
# with template assertions instead (tests/test_emulator_deploy.py lists where).
EMULATOR_SKIPS = {
    "AWS::EC2::PlacementGroup": "moto's CloudFormation has no placement groups",
    "AWS::SQS::QueuePolicy": "moto's CloudFormation has no SQS queue policies (TLS-only policy)",
    "AWS::S3::BucketPolicy": "moto's CloudFormation has no S3 bucket policies (TLS-only, log delivery)",
    "AWS::AutoScaling::LifecycleHook": "moto's CloudFormation has no lifecycle hooks",
    "AWS::KMS::Key": "moto 5.2.5 fails on a key's CloudFormation Tags (it expects TagKey/TagValue)",
    "AWS::CloudWatch::Alarm": "moto's CloudFormation has no CloudWatch alarms",
    "AWS::SNS::TopicPolicy": "moto's CloudFormation has no SNS topic policies (TLS-only)",
    "AWS::SNS::Subscription": "moto's CloudFormation has no SNS subscriptions (alarm emails)",
    "Custom::VpcRestrictDefaultSG": "a custom resource runs its Lambda, which moto can only run in Docker",
    "AWS::EC2::SecurityGroupEgress": "moto's CloudFormation has no separate egress rules (real-time endpoint)",
}


# Attributes moto's CloudFormation cannot resolve (its target groups have no attributes at all; it fails the
# whole stack): each becomes a fixed placeholder. Only the real-time endpoint's CloudWatch dimensions use them,
# and moto serves no AWS/ApplicationELB metrics anyway, so the rebalancer reads that telemetry as unknown.
EMULATOR_PLACEHOLDER_ATTRIBUTES = {
    ("AWS::ElasticLoadBalancingV2::TargetGroup", "TargetGroupFullName"): "targetgroup/emulator/{logical_id}",
    ("AWS::ElasticLoadBalancingV2::LoadBalancer", "LoadBalancerFullName"): "app/emulator/{logical_id}",
}


def adapt_for_emulator(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The template minus the EMULATOR_SKIPS resources, with EMULATOR_PLACEHOLDER_ATTRIBUTES filled in; returns
    it and {logical id: type} of what was removed."""
    resources = template["Resources"]
    skipped = {k: v["Type"] for k, v in resources.items() if v["Type"] in EMULATOR_SKIPS}

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            if value.keys() == {"Fn::GetAtt"}:
                logical_id, attribute = value["Fn::GetAtt"][0], value["Fn::GetAtt"][1]
                kind = resources.get(logical_id, {}).get("Type")
                placeholder = EMULATOR_PLACEHOLDER_ATTRIBUTES.get((kind, attribute))
                if placeholder:
                    return placeholder.format(logical_id=logical_id)
            if value.keys() == {"Ref"} and value["Ref"] in skipped:
                return f"emulator-skipped-{value['Ref']}"
            if value.keys() == {"Fn::GetAtt"} and value["Fn::GetAtt"][0] in skipped:
                return f"emulator-skipped-{value['Fn::GetAtt'][0]}"
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    adapted = {}
    for logical_id, resource in resources.items():
        if logical_id in skipped:
            continue
        resource = rewrite(resource)
        depends = resource.get("DependsOn")
        if isinstance(depends, list):
            resource["DependsOn"] = [d for d in depends if d not in skipped]
        elif depends in skipped:
            del resource["DependsOn"]
        adapted[logical_id] = resource
    return {**template, "Resources": adapted, "Outputs": rewrite(template.get("Outputs", {}))}, skipped


@dataclass
class DeployedAssembly:
    """What deploying an assembly into the emulator produced, per stack name."""

    statuses: dict[str, dict[str, Any]]
    skipped: dict[str, dict[str, str]]
    templates: dict[str, dict[str, Any]]
    warnings: set[str]


def deploy_assembly(out_dir: Path, url: str, account: str) -> DeployedAssembly:
    """Every stack of a synthesized assembly into a moto server at `url` running in this process: bootstrap,
    seed the public parameters, publish the assets, drop what moto cannot create, create the stack."""
    import warnings

    import boto3

    statuses, skipped, templates = {}, {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for stack in stack_artifacts(out_dir):
            session = boto3.session.Session(region_name=stack.region)

            def client(service: str, s: Any = session) -> Any:
                return s.client(service, endpoint_url=url)

            bootstrap(client("ssm"))
            images = client("ec2").describe_images(Owners=["amazon"])["Images"]
            image_ids = {a: next(i["ImageId"] for i in images if i.get("Architecture") == a)
                         for a in ("arm64", "x86_64")}
            original = json.loads(stack.template_file.read_text())
            seed_public_parameters(original, account, stack.region, image_ids)
            publish_assets(stack, client("s3"), account)
            template, skipped[stack.name] = adapt_for_emulator(original)
            templates[stack.name] = original
            statuses[stack.name] = create_stack(client("cloudformation"), client("s3"), stack, account, template)
    moto_warnings = {str(w.message) for w in caught if "not supported by moto" in str(w.message)}
    return DeployedAssembly(statuses, skipped, templates, moto_warnings)
