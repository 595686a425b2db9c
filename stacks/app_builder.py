"""Build every crossfleet stack for a validated config; shared by app.py and the tests."""

from __future__ import annotations

from aws_cdk import App, Aspects
from cdk_nag import AwsSolutionsChecks

from crossfleet.config.model import AppConfig
from stacks.checkov_acknowledgements import acknowledge_checkov_findings
from stacks.nag_acknowledgements import acknowledge_findings
from stacks.region_stack import RegionStack

# Feature flags this app depends on, set here so that app.py, the tests and the local emulator build the same
# templates whatever cdk.json holds.
FEATURE_FLAGS = {
    # Server access logs delivered under a bucket policy, so the log bucket can disable ACLs (BucketOwnerEnforced).
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
}


def build_app(app: App, config: AppConfig, *, nag: bool = True) -> list[RegionStack]:
    for flag, value in FEATURE_FLAGS.items():
        app.node.set_context(flag, value)
    stacks = []
    for region in config.regions:
        stack = RegionStack(app, config.stack_name(region.region), config=config, region=region)
        acknowledge_findings(stack)
        acknowledge_checkov_findings(stack)
        stacks.append(stack)
    if nag:
        Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return stacks
