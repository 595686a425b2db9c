"""Synthesize crossfleet apps in-process for template tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import App
from aws_cdk.assertions import Template

from crossfleet.config import AppConfig, parse_config
from stacks.app_builder import build_app
from stacks.region_stack import RegionStack


@dataclass
class SynthesizedApp:
    config: AppConfig
    app: App
    stacks: dict[str, RegionStack]  # by region
    templates: dict[str, Template]  # by region

    def template_json(self, region: str) -> dict[str, Any]:
        return self.templates[region].to_json()


def synthesize(raw_config: dict[str, Any] | None = None, *, nag: bool = True) -> SynthesizedApp:
    config = parse_config(raw_config or {})
    app = App()
    stacks = build_app(app, config, nag=nag)
    app.synth()
    by_region = {stack.region: stack for stack in stacks}
    return SynthesizedApp(config=config, app=app, stacks=by_region,
                          templates={region: Template.from_stack(stack) for region, stack in by_region.items()})


def resources_of_type(template: dict[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_name}


def tag_value(resource: dict[str, Any], key: str) -> str | None:
    tags = resource.get("Properties", {}).get("Tags", [])
    if isinstance(tags, list):
        return next((t["Value"] for t in tags if t.get("Key") == key), None)
    return tags.get(key)


def asg_for_pool(template: dict[str, Any], pool: str) -> dict[str, Any]:
    # The pool's main group: a warm lane (tag crossfleet:lane) is a second group of the GPU pool.
    groups = [g for g in resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup").values()
              if tag_value(g, "crossfleet:pool") == pool and tag_value(g, "crossfleet:lane") is None]
    assert len(groups) == 1, f"expected one ASG for pool {pool}, found {len(groups)}"
    return groups[0]


def launch_template_of(template: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    props = group["Properties"]
    spec = props["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"] \
        if "MixedInstancesPolicy" in props else props["LaunchTemplate"]
    return template["Resources"][spec["LaunchTemplateId"]["Ref"]]
