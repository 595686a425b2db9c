"""Build every crossfleet stack for a validated config; shared by app.py and the tests."""

from __future__ import annotations

from aws_cdk import App, Aspects
from cdk_nag import AwsSolutionsChecks

from crossfleet.config.model import AppConfig
from stacks.nag_acknowledgements import acknowledge_findings
from stacks.region_stack import RegionStack


def build_app(app: App, config: AppConfig, *, nag: bool = True) -> list[RegionStack]:
    stacks = []
    for region in config.regions:
        stack = RegionStack(app, config.stack_name(region.region), config=config, region=region)
        acknowledge_findings(stack)
        stacks.append(stack)
    if nag:
        Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return stacks
