"""The whole synthesized app deployed into moto's server (CloudFormation on loopback), then driven end to end.

Assets are published and templates created the way `cdk deploy` does it (crossfleet/emulator.py). Jobs from
the Azure trace go in with `crossfleet submit`; the router, the rebalancer and worker agents run in-process
against the emulator with the settings read back from what was deployed.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_cdk import App
from moto.core import DEFAULT_ACCOUNT_ID as ACCOUNT
from moto.server import ThreadedMotoServer

from crossfleet import emulator
from crossfleet.cli import main as cli_main
from crossfleet.config import parse_config
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.core.settings import RouterSettings, Settings
from crossfleet_control.handlers.rebalancer import build_dependencies
from crossfleet_control.handlers.router import build_router
from crossfleet_control.orchestration.rebalance_cycle import run_cycle
from crossfleet_worker.agent import Agent, WorkerSettings
from stacks.app_builder import build_app

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_inference_2023_code.csv"
# What moto still warns about after the emulator shim, and why that is fine.
TOLERATED_WARNINGS = {"AWS::CDK::Metadata": "CDK's own analytics metadata resource: nothing to emulate"}
# The default app configures no alarm emails, so it has no SNS subscriptions to skip; no real-time endpoint, so
# no separate egress rules (tests/test_local_playground.py deploys one); and its GPU group has no placement group
# (three types; see tests/test_aws_rules.py).
EXPECTED_SKIPS = set(emulator.EMULATOR_SKIPS) - {"AWS::SNS::Subscription", "AWS::EC2::SecurityGroupEgress",
                                                 "AWS::EC2::PlacementGroup"}


@dataclass
class Deployed:
    url: str
    out_dir: Path
    statuses: dict[str, dict[str, Any]]
    skipped: dict[str, dict[str, str]]
    warnings: set[str]
    templates: dict[str, dict[str, Any]]

    def client(self, service: str, region: str = "us-east-1") -> Any:
        return boto3.session.Session(region_name=region).client(service, endpoint_url=self.url)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    out_dir = tmp_path_factory.mktemp("cdk.out")
    app = App(outdir=str(out_dir))
    build_app(app, parse_config({"regions": ["us-east-1", "us-east-2", "us-west-2"]}), nag=False)
    app.synth()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    try:
        result = emulator.deploy_assembly(out_dir, url, ACCOUNT)
        yield Deployed(url=url, out_dir=out_dir, statuses=result.statuses, skipped=result.skipped,
                       warnings=result.warnings, templates=result.templates)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_every_stack_reaches_create_complete(deployed: Deployed):
    assert set(deployed.statuses) == {"crossfleet-dev-us-east-1", "crossfleet-dev-us-east-2",
                                      "crossfleet-dev-us-west-2"}
    for name, status in deployed.statuses.items():
        assert status["StackStatus"] == "CREATE_COMPLETE", (name, status.get("StackStatusReason"))


def test_only_known_types_are_skipped_and_each_is_checked_by_template(deployed: Deployed):
    for name, skipped in deployed.skipped.items():
        assert set(skipped.values()) == EXPECTED_SKIPS, f"{name}: a new unsupported type needs a reason here"
        template = deployed.templates[name]["Resources"]
        # What the emulator could not create, asserted on the template instead:
        assert not [r for r in template.values() if r["Type"] == "AWS::EC2::PlacementGroup"]
        policies = [r for r in template.values() if r["Type"] == "AWS::SQS::QueuePolicy"]
        assert len(policies) == 8 and all("aws:SecureTransport" in json.dumps(p) for p in policies)
        bucket_policies = [r for r in template.values() if r["Type"] == "AWS::S3::BucketPolicy"]
        assert len(bucket_policies) == 2 and all("aws:SecureTransport" in json.dumps(p) for p in bucket_policies)
        hooks = [r["Properties"] for r in template.values() if r["Type"] == "AWS::AutoScaling::LifecycleHook"]
        assert sorted(h["LifecycleTransition"] for h in hooks) == ["autoscaling:EC2_INSTANCE_TERMINATING"] * 2
        alarms = [r["Properties"] for r in template.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
        assert len(alarms) == 13 and all(a["AlarmActions"] for a in alarms), "every alarm notifies the topic"
        keys = [r["Properties"] for r in template.values() if r["Type"] == "AWS::KMS::Key"]
        assert [k["EnableKeyRotation"] for k in keys] == [True]
        assert "cloudwatch.amazonaws.com" in json.dumps(keys[0]["KeyPolicy"])
        topic_policies = [r for r in template.values() if r["Type"] == "AWS::SNS::TopicPolicy"]
        assert len(topic_policies) == 1 and "aws:SecureTransport" in json.dumps(topic_policies[0])
    unexpected = {w for w in deployed.warnings if not any(t in w for t in TOLERATED_WARNINGS)}
    assert unexpected == set(), "moto skipped a resource type nobody has accounted for"


def test_deployed_resources_have_the_properties_crossfleet_depends_on(deployed: Deployed):
    for region in ("us-east-1", "us-east-2", "us-west-2"):
        groups = {g["AutoScalingGroupName"]: g for g in deployed.client("autoscaling", region)
                  .describe_auto_scaling_groups()["AutoScalingGroups"]}
        cpu, gpu = groups[f"crossfleet-dev-{region}-cpu"], groups[f"crossfleet-dev-{region}-gpu"]
        assert (cpu["MinSize"], cpu["MaxSize"], gpu["MinSize"], gpu["MaxSize"]) == (1, 20, 0, 4)
        overrides = [o["InstanceType"] for o in cpu["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]]
        assert overrides[0] == "m9g.16xlarge"
        sqs = deployed.client("sqs", region)
        urls = sqs.list_queues(QueueNamePrefix="crossfleet-dev")["QueueUrls"] + sqs.list_queues()["QueueUrls"]
        redriven = [u for u in set(urls) if "RedrivePolicy" in sqs.get_queue_attributes(
            QueueUrl=u, AttributeNames=["RedrivePolicy"]).get("Attributes", {})]
        assert len(redriven) == 3, "cpu, gpu and intake queues each have a DLQ"
        functions = {f["Handler"]: f for f in deployed.client("lambda", region).list_functions()["Functions"]}
        template = deployed.templates[f"crossfleet-dev-{region}"]["Resources"]
        for handler in ("crossfleet_control.handlers.rebalancer.handler", "crossfleet_control.handlers.router.handler"):
            assert functions[handler]["Runtime"] == "python3.13"
            # moto's CloudFormation drops Architectures (it reports x86_64): the template is the evidence.
            (declared,) = [r["Properties"] for r in template.values()
                           if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == handler]
            assert declared["Architectures"] == ["arm64"]
        rules = deployed.client("events", region).list_rules()["Rules"]
        assert any(r.get("ScheduleExpression") == "rate(1 minute)" for r in rules)
        tables = deployed.client("dynamodb", region).list_tables()["TableNames"]
        assert len(tables) == 1
        keys = deployed.client("dynamodb", region).describe_table(TableName=tables[0])["Table"]["KeySchema"]
        assert [k["AttributeName"] for k in keys] == ["pk", "sk"]


def _outputs(deployed: Deployed, region: str) -> dict[str, str]:
    stack = deployed.client("cloudformation", region).describe_stacks(StackName=f"crossfleet-dev-{region}")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Stacks"][0]["Outputs"]}


def _function_env(deployed: Deployed, handler: str, variable: str) -> str:
    functions = deployed.client("lambda").list_functions()["Functions"]
    return next(f["Environment"]["Variables"][variable] for f in functions if f["Handler"] == handler)


def _worker_settings(deployed: Deployed, pool: str) -> WorkerSettings:
    """Read back the settings the launch template's user data would write on an instance."""
    ec2 = deployed.client("ec2")
    for template in ec2.describe_launch_templates()["LaunchTemplates"]:
        version = ec2.describe_launch_template_versions(
            LaunchTemplateId=template["LaunchTemplateId"])["LaunchTemplateVersions"][0]
        script = base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
        text = script.split("<<'CROSSFLEET_SETTINGS'\n", 1)[1].split("\nCROSSFLEET_SETTINGS", 1)[0]
        settings = json.loads(text)
        if settings["pool"] == pool and settings["region"] == "us-east-1":
            return WorkerSettings(**{**settings, "wait_seconds": 0, "retry_backoff_seconds": 0})
    raise AssertionError(f"no launch template for {pool}")


class EchoRunner:
    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    def run(self, job: Any, payload: bytes) -> bytes:
        self.runs[job.id] = self.runs.get(job.id, 0) + 1
        return b'{"completion": "ok"}'


@pytest.mark.skipif(not TRACE.exists(), reason="the shared Azure trace is not beside the repo")
def test_jobs_flow_through_the_deployed_system(deployed: Deployed, tmp_path: Path, capsys):
    outputs = _outputs(deployed, "us-east-1")
    # A slice of the real trace as `either` inference jobs, plus CPU-only agent steps and GPU-only fine-tunes.
    rows = TRACE.read_text().splitlines()[1:61]
    jobs = [{"id": f"trace-{i}", "class": "inference", "placement": "either", "deadline_seconds": 120,
             "size": {"input_tokens": int(r.split(",")[1]), "output_tokens": int(r.split(",")[2])},
             "payload": {"prompt": "def f():"}} for i, r in enumerate(rows)]
    jobs += [{"id": f"agent-{i}", "class": "agent", "placement": "cpu_only", "deadline_seconds": 60,
              "size": {"cpu_seconds": 3}} for i in range(15)]
    jobs += [{"id": f"tune-{i}", "class": "finetune", "placement": "gpu_only", "deadline_seconds": 3600,
              "size": {"gpu_seconds": 600}} for i in range(5)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(j) for j in jobs))
    # moto would hand intake messages to the deployed router Lambda, which it can only run in Docker; the
    # router runs in-process below instead, so its event source mapping is switched off in the emulator.
    lambdas = deployed.client("lambda")
    for mapping in lambdas.list_event_source_mappings()["EventSourceMappings"]:
        lambdas.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
    assert cli_main(["submit", str(path), "--region", "us-east-1", "--endpoint-url", deployed.url]) == 0
    assert "80 submitted, 0 invalid, 0 failed" in capsys.readouterr().err

    # The router, with the settings the deployed Lambda has, fed the way its SQS event source feeds it.
    router = build_router(RouterSettings.from_json(
        _function_env(deployed, "crossfleet_control.handlers.router.handler", "CROSSFLEET_ROUTER_SETTINGS")))
    sqs = deployed.client("sqs")
    while messages := sqs.receive_message(QueueUrl=outputs["IntakeQueueUrl"],
                                          MaxNumberOfMessages=10).get("Messages", []):
        result = router.route_batch([{"messageId": m["MessageId"], "body": m["Body"]} for m in messages])
        assert result["batchItemFailures"] == []
        for message in messages:
            sqs.delete_message(QueueUrl=outputs["IntakeQueueUrl"], ReceiptHandle=message["ReceiptHandle"])

    # The rebalancer on a simulated clock, with the deployed settings.
    settings = Settings.from_json(_function_env(deployed, "crossfleet_control.handlers.rebalancer.handler",
                                                "CROSSFLEET_SETTINGS"))
    deps = build_dependencies(settings)
    clock = [time.time()]
    deps.clock = deps.state.clock = lambda: clock[0]
    autoscaling = deployed.client("autoscaling")

    def desired() -> dict[str, int]:
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[
            settings.pools["cpu"].group_name, settings.pools["gpu"].group_name])["AutoScalingGroups"]
        return {g["AutoScalingGroupName"].rsplit("-", 1)[1]: g["DesiredCapacity"] for g in groups}

    start = desired()
    run_cycle(deps, {}, holder="tick-0", remaining_ms=lambda: 50_000)
    under_backlog = desired()
    assert under_backlog["gpu"] > start["gpu"] == 0, "the GPU pool scales up from zero under its backlog"

    # Worker agents with the settings the launch templates install, and a fast runner.
    runners = {pool: EchoRunner() for pool in ("cpu", "gpu")}
    ledger = Ledger(deployed.client("dynamodb"), settings.table_name)
    agents = [Agent(settings=_worker_settings(deployed, pool), sqs=deployed.client("sqs"), s3=deployed.client("s3"),
                    autoscaling=deployed.client("autoscaling"), ledger=ledger, runner=runners[pool],
                    owner=f"i-{pool}-{n}", log=lambda _: None) for pool in ("cpu", "gpu") for n in range(2)]
    for _ in range(20):
        if not any([agent.poll_once(wait_seconds=0) for agent in agents]):
            break

    # Idle now: back to min once the warm-start forecast has let the burst go (its window) and the scale-in delay
    # has passed after that.
    policy_settings = settings.policy
    idle_minutes = int((policy_settings.forecast_window_seconds + policy_settings.scale_in_delay_seconds) // 60) + 2
    for minute in range(1, idle_minutes + 1):
        clock[0] += 60
        run_cycle(deps, {}, holder=f"tick-{minute}", remaining_ms=lambda: 50_000)
    assert desired() == {"cpu": settings.pools["cpu"].min_size, "gpu": settings.pools["gpu"].min_size}

    for job in jobs:
        head = ledger.head(job["id"])
        assert head["status"] == "succeeded", job["id"]
        history = [h["status"] for h in ledger.history(job["id"])]
        assert history.count("succeeded") == 1 and history[0] == "queued"
        ran_on = head["pool"]
        assert ran_on in {"cpu_only": ["cpu"], "gpu_only": ["gpu"], "either": ["cpu", "gpu"]}[job["placement"]]
        assert runners[ran_on].runs[job["id"]] == 1, "exactly once"
    decisions = deps.state.recent_decisions(20)
    changed = [d for d in decisions if any(p["current"] != p["desired"] for p in d["pools"].values())]
    assert changed and all(p["reason"] for d in changed for p in d["pools"].values())


# -- the operator's CLI against the deployed system ------------------------------------------------------------

def _cli_json(deployed: Deployed, capsys, *args: str) -> Any:
    assert cli_main([*args, "--endpoint-url", deployed.url, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def decided(deployed: Deployed) -> Deployed:
    """At least one rebalancer decision in us-east-1: the trace-driven flow test leaves many, but it is skipped
    when ../shared/traces is not beside the clone, and the operator commands below must not depend on it."""
    settings = Settings.from_json(_function_env(deployed, "crossfleet_control.handlers.rebalancer.handler",
                                                "CROSSFLEET_SETTINGS"))
    deps = build_dependencies(settings)
    if not deps.state.recent_decisions(1):
        run_cycle(deps, {}, holder="operator-tests", remaining_ms=lambda: 50_000)
    return deployed


def test_status_shows_every_pool_of_every_configured_region(decided: Deployed, capsys):
    deployed = decided
    rows = _cli_json(deployed, capsys, "status")
    assert {(r["region"], r["pool"]) for r in rows} == {(region, pool) for region in
                                                        ("us-east-1", "us-east-2", "us-west-2")
                                                        for pool in ("cpu", "gpu")}
    groups = {g["AutoScalingGroupName"]: g for g in deployed.client("autoscaling").describe_auto_scaling_groups()[
        "AutoScalingGroups"]}
    for row in rows:
        if row["region"] == "us-east-1":
            assert row["desired"] == groups[f"crossfleet-dev-us-east-1-{row['pool']}"]["DesiredCapacity"]
            assert row["instance_type"] == {"cpu": "m9g.16xlarge", "gpu": "p5.48xlarge"}[row["pool"]]
            # The rebalancer saw every launch succeed.
            assert row["capacity"] == "healthy", row
    assert cli_main(["status", "--endpoint-url", deployed.url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["region", "pool", "instance_type", "desired"] and len(table) == 7


def test_plan_changes_nothing_and_explain_shows_reasons(decided: Deployed, capsys):
    deployed = decided
    state_before = deployed.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    decisions_before = _cli_json(deployed, capsys, "explain", "--last", "50")
    planned = _cli_json(deployed, capsys, "plan")
    assert set(planned["pools"]) == {"cpu", "gpu"} and all(p["reason"] for p in planned["pools"].values())
    assert _cli_json(deployed, capsys, "explain", "--last", "50") == decisions_before, "plan records nothing"
    state_after = deployed.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert [g["DesiredCapacity"] for g in state_after] == [g["DesiredCapacity"] for g in state_before]
    assert decisions_before and all(p["reason"] for d in decisions_before for p in d["pools"].values())


def test_freeze_pin_and_drain_are_honoured_by_the_next_cycle(deployed: Deployed, capsys):
    settings = Settings.from_json(_function_env(deployed, "crossfleet_control.handlers.rebalancer.handler",
                                                "CROSSFLEET_SETTINGS"))
    deps = build_dependencies(settings)
    deps.clock = deps.state.clock = lambda: time.time() + 3600  # after the flow test's simulated hour

    def cycle() -> dict[str, Any]:
        run_cycle(deps, {}, holder=f"ops-{time.monotonic()}", remaining_ms=lambda: 50_000)
        return deps.state.recent_decisions(1)[0]

    assert cli_main(["freeze", "cpu", "--note", "kernel patching", "--endpoint-url", deployed.url]) == 0
    assert "takes effect at the next rebalancer cycle" in capsys.readouterr().out
    assert cycle()["pools"]["cpu"]["reason"] == "frozen by operator: kernel patching"
    assert {r["pool"]: r["override"] for r in _cli_json(deployed, capsys, "status", "--region", "us-east-1")} == {
        "cpu": "frozen", "gpu": ""}
    assert cli_main(["pin", "gpu", "2", "--endpoint-url", deployed.url]) == 0
    decision = cycle()
    assert decision["pools"]["gpu"]["desired"] == 2 and "pinned at 2 by operator" in decision["pools"]["gpu"]["reason"]
    assert cli_main(["drain", "gpu", "--endpoint-url", deployed.url]) == 0
    assert cycle()["pools"]["gpu"]["desired"] == 0
    for pool in ("cpu", "gpu"):
        assert cli_main(["unfreeze", pool, "--endpoint-url", deployed.url]) == 0
    assert "operator" not in json.dumps(cycle()["pools"])
    capsys.readouterr()


def test_operator_commands_fail_clearly(deployed: Deployed, capsys, monkeypatch, tmp_path):
    assert cli_main(["freeze", "tpu", "--endpoint-url", deployed.url]) == 2
    assert "pool 'tpu': one of cpu, gpu" in capsys.readouterr().err
    # A US region the config does not deploy to is refused before any AWS call (it used to look for its stack).
    assert cli_main(["status", "--region", "us-west-1", "--endpoint-url", deployed.url]) == 2
    assert capsys.readouterr().err == ("crossfleet status: --region 'us-west-1' is not allowed: one of the "
                                       "configured regions us-east-1, us-east-2, us-west-2\n")
    # A config whose stacks were never deployed says which stack is missing.
    other = tmp_path / "prod.json"
    other.write_text(json.dumps({"stage": "prod", "regions": ["us-east-1"]}))
    assert cli_main(["status", "--config", str(other), "--endpoint-url", deployed.url]) == 1
    assert "no stack crossfleet-prod-us-east-1 in us-east-1: deploy it first" in capsys.readouterr().err
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert cli_main(["explain", "--endpoint-url", deployed.url]) == 1
    assert "no AWS credentials found" in capsys.readouterr().err


def test_cli_edges_answer_in_one_line_with_the_right_exit_code(deployed: Deployed, capsys, tmp_path):
    """Each edge a new user hit: an unknown region, a zero count, a pin beyond the group's max, a job still in the
    intake queue, and JSON that echoes what was set."""
    def run(*args: str) -> tuple[int, str, str]:
        code = cli_main([*args, "--endpoint-url", deployed.url])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, _, err = run("status", "--region", "us-central-9")
    assert code == 2 and err.count("\n") == 1 and "'us-central-9' is not allowed" in err
    with pytest.raises(SystemExit) as usage:  # argparse's own one-line usage error, exit 2
        cli_main(["explain", "--last", "0", "--endpoint-url", deployed.url])
    assert usage.value.code == 2 and "argument --last: 0 is not allowed: 1 or more" in capsys.readouterr().err
    code, _, err = run("pin", "cpu", "50")
    assert (code, err) == (2, "crossfleet pin: cpu 50 is not allowed: 1 to 20 (cpu's min and max size)\n")
    code, out, _ = run("pin", "gpu", "3", "--note", "load test", "--json")
    assert code == 0 and json.loads(out)["override"] == {"frozen": False, "pinned_desired": 3, "note": "load test"}
    assert run("unfreeze", "gpu")[0] == 0

    # Submitted but not yet placed: the job waits in the intake queue (no router runs here).
    jobs = tmp_path / "one.jsonl"
    jobs.write_text(json.dumps({"id": "waiting-1", "class": "inference", "placement": "either",
                                "deadline_seconds": 60, "size": {"input_tokens": 10, "output_tokens": 10}}) + "\n")
    assert run("submit", str(jobs))[0] == 0
    code, _, err = run("job", "waiting-1")
    assert code == 1 and "holds 1 message(s) the router has not placed yet" in err
    deployed.client("sqs").purge_queue(QueueUrl=deployed.client("sqs").get_queue_url(
        QueueName="crossfleet-dev-us-east-1-intake")["QueueUrl"])
