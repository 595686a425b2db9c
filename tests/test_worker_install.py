"""The launch templates install and start the worker agent; scale-in waits for it; the router is wired."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crossfleet_worker.agent import WorkerSettings
from tests.cdk_helpers import SynthesizedApp, asg_for_pool, launch_template_of, resources_of_type

ROOT = Path(__file__).resolve().parents[1]


def render(value: Any) -> str:
    """Flatten Fn::Base64/Fn::Join to text, tokens as <<Ref:Id>> placeholders."""
    if isinstance(value, str):
        return value
    if "Fn::Base64" in value:
        return render(value["Fn::Base64"])
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(render(p) for p in parts)
    if "Ref" in value:
        return f"<<Ref:{value['Ref']}>>"
    if "Fn::GetAtt" in value:
        return f"<<GetAtt:{'.'.join(value['Fn::GetAtt'])}>>"
    if "Fn::Sub" in value:
        return f"<<Sub:{value['Fn::Sub']}>>"
    raise AssertionError(f"unexpected intrinsic {value}")


@pytest.mark.parametrize("pool", ["cpu", "gpu"])
def test_user_data_installs_and_starts_the_worker_for_its_own_pool(default_app: SynthesizedApp, pool: str):
    template = default_app.template_json("us-east-1")
    group = asg_for_pool(template, pool)
    script = render(launch_template_of(template, group)["Properties"]["LaunchTemplateData"]["UserData"])
    assert script.startswith("#!/bin/bash\n")
    assert re.search(r"aws s3 cp s3://.+/.+\.zip /opt/crossfleet/worker.zip", script)
    assert "bash /opt/crossfleet/worker/install.sh" in script
    settings_text = script.split("<<'CROSSFLEET_SETTINGS'\n", 1)[1].split("\nCROSSFLEET_SETTINGS", 1)[0]
    settings = WorkerSettings.from_json(settings_text)  # the agent can read what user data writes
    assert settings.pool == pool and settings.region == "us-east-1"
    assert settings.group_name == f"crossfleet-dev-us-east-1-{pool}" == group["Properties"]["AutoScalingGroupName"]
    queue_ref = re.fullmatch(r"<<Ref:(.+)>>", settings.queue_url).group(1)
    assert queue_ref.startswith(f"WorkQueues{pool.capitalize()}Jobs"), "each pool's agent reads its own queue"
    assert settings.runner["kind"] == "http" and settings.max_attempts == 3
    completed = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize("pool", ["cpu", "gpu"])
def test_scale_in_waits_for_the_worker_through_a_lifecycle_hook(default_app: SynthesizedApp, pool: str):
    template = default_app.template_json("us-east-1")
    group_id = next(k for k, v in resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup").items()
                    if v["Properties"]["AutoScalingGroupName"].endswith(f"-{pool}"))
    hooks = [h["Properties"] for h in resources_of_type(template, "AWS::AutoScaling::LifecycleHook").values()
             if h["Properties"]["AutoScalingGroupName"] == {"Ref": group_id}]
    assert len(hooks) == 1
    assert hooks[0]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hooks[0]["DefaultResult"] == "CONTINUE" and hooks[0]["HeartbeatTimeout"] == 900
    assert hooks[0]["LifecycleHookName"] == f"crossfleet-dev-us-east-1-{pool}-drain"


def test_router_consumes_the_intake_queue_with_partial_batch_failures(default_app: SynthesizedApp):
    template = default_app.template_json("us-east-1")
    (mapping,) = resources_of_type(template, "AWS::Lambda::EventSourceMapping").values()
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    source = mapping["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
    assert template["Resources"][source]["Properties"]["QueueName"] == "crossfleet-dev-us-east-1-intake"
    function = template["Resources"][mapping["Properties"]["FunctionName"]["Ref"]]["Properties"]
    assert function["Handler"] == "crossfleet_control.handlers.router.handler"
    assert function["Architectures"] == ["arm64"]


def test_instances_may_complete_only_their_own_groups_lifecycle_action(default_app: SynthesizedApp):
    template = default_app.template_json("us-east-1")
    statements = [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
                  for s in p["Properties"]["PolicyDocument"]["Statement"]
                  if s.get("Action") == "autoscaling:CompleteLifecycleAction"]
    assert len(statements) == 2
    for statement in statements:
        assert statement["Condition"] == {"StringEquals": {"aws:ResourceTag/crossfleet:deployment": "crossfleet-dev"}}
        assert "autoScalingGroupName/crossfleet-dev-us-east-1-" in json.dumps(statement["Resource"])


def test_instances_may_protect_and_heartbeat_only_their_own_group(default_app: SynthesizedApp):
    template = default_app.template_json("us-east-1")
    statements = [s for p in resources_of_type(template, "AWS::IAM::Policy").values()
                  for s in p["Properties"]["PolicyDocument"]["Statement"]
                  if "autoscaling:SetInstanceProtection" in json.dumps(s.get("Action"))]
    assert len(statements) == 2, "one per pool role"
    for statement in statements:
        assert sorted(statement["Action"]) == ["autoscaling:RecordLifecycleActionHeartbeat",
                                               "autoscaling:SetInstanceProtection"]
        assert statement["Condition"] == {"StringEquals": {"aws:ResourceTag/crossfleet:deployment": "crossfleet-dev"}}
        resource = json.dumps(statement["Resource"])
        assert "autoScalingGroupName/crossfleet-dev-us-east-1-" in resource and "*" not in resource.split("/")[-1]


def test_systemd_unit_and_installer():
    unit = (ROOT / "worker" / "crossfleet-worker.service").read_text()
    assert "ExecStart=/usr/bin/python3 -m crossfleet_worker /etc/crossfleet/worker.json" in unit
    assert "Environment=PYTHONPATH=/opt/crossfleet/worker:/opt/crossfleet/lambda:/opt/crossfleet/vendor" in unit
    assert "Restart=always" in unit and "User=crossfleet" in unit and "WantedBy=multi-user.target" in unit
    installer = ROOT / "worker" / "install.sh"
    assert subprocess.run(["bash", "-n", str(installer)]).returncode == 0
    assert "systemctl enable --now crossfleet-worker.service" in installer.read_text()
    for network_install in ("pip install", "pip3 install", "dnf install", "yum install", "curl ", "wget "):
        assert network_install not in installer.read_text(), "nothing is downloaded at boot"


def test_worker_asset_holds_the_agent_and_the_shared_package_only(default_app: SynthesizedApp):
    assembly = default_app.app.synth()
    out = Path(assembly.directory)
    staged = [d for d in out.glob("asset.*") if (d / "worker").is_dir()]
    assert len(staged) == 1
    top = sorted(p.name for p in staged[0].iterdir())
    assert top == ["lambda", "vendor", "worker"]
    assert (staged[0] / "worker" / "crossfleet_worker" / "agent.py").exists()
    assert (staged[0] / "lambda" / "crossfleet_control" / "aws" / "ledger.py").exists()
    # The agent's dependencies at the pinned versions, botocore with only the services the agent calls.
    import boto3
    import botocore

    vendor = staged[0] / "vendor"
    assert f"__version__ = '{boto3.__version__}'" in (vendor / "boto3" / "__init__.py").read_text()
    assert f"__version__ = '{botocore.__version__}'" in (vendor / "botocore" / "__init__.py").read_text()
    models = sorted(p.name for p in (vendor / "botocore" / "data").iterdir() if p.is_dir())
    assert models == ["autoscaling", "cloudwatch", "dynamodb", "s3", "sqs", "sts"]
    assert not list(staged[0].rglob("tests")) and not list(staged[0].rglob("__pycache__"))


def test_the_vendored_agent_imports_and_builds_its_clients_with_nothing_else(tmp_path: Path):
    """What the instance runs: python3 with only the asset on PYTHONPATH (-S: no site-packages at all)."""
    from stacks.constructs.worker_install import staged_worker_asset

    stage = staged_worker_asset()
    path = ":".join(str(stage / d) for d in ("worker", "lambda", "vendor"))
    code = ("import boto3, crossfleet_worker.agent, crossfleet_worker.runners; s = boto3.session.Session("
            "region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='y'); "
            "[s.client(n) for n in ('sqs', 's3', 'dynamodb', 'autoscaling', 'cloudwatch')]; print(boto3.__file__)")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": path, "AWS_EC2_METADATA_DISABLED": "true"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(stage / "vendor")), "boto3 came from the asset, not the environment"
