"""A job reaches only its own payload and returns its result through the agent (issue 20, item 2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from crossfleet_control.core.jobs import payload_uri_problem
from crossfleet_control.core.settings import RouterSettings
from crossfleet_control.orchestration.intake_routing import Router, RoutingView
from crossfleet_worker.agent import Agent
from crossfleet_worker.runners import CommandRunner, JobFailed, build_runner
from tests.cdk_helpers import SynthesizedApp, asg_for_pool, launch_template_of, resources_of_type
from tests.iam_eval import evaluate, role_statements
from tests.jobfactory import job_message, make_job
from tests.test_worker_install import render as render_user_data

BUCKET = "crossfleet-dev-results-abc"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("uri", [
    f"s3://{BUCKET}/results/job-7/attempt-1",  # another job's result: the reported attack
    f"s3://{BUCKET}/payloads/../results/job-7/attempt-1",
    f"s3://{BUCKET}/payloads//x", f"s3://{BUCKET}/payloads/", f"s3://{BUCKET}/payloadsX/a",
    "s3://someone-elses-bucket/payloads/a", f"s3://{BUCKET}x/payloads/a",
])
def test_payload_references_outside_this_deployments_payloads_prefix_are_refused(uri: str):
    problem = payload_uri_problem(make_job(payload={"s3_uri": uri}), BUCKET)
    assert problem is not None and f"must be under s3://{BUCKET}/payloads/" in problem


def test_payload_references_under_the_prefix_and_inline_payloads_pass():
    assert payload_uri_problem(make_job(payload={"s3_uri": f"s3://{BUCKET}/payloads/team/a.json"}), BUCKET) is None
    assert payload_uri_problem(make_job(payload={"prompt": "hi"}), BUCKET) is None
    assert payload_uri_problem(make_job(payload={"s3_uri": f"s3://{BUCKET}/payloads/a"}), "") is not None, \
        "no bucket configured refuses every reference"


class _CapturingRouter(Router):
    rejected: list[tuple[str | None, str]]

    def reject(self, body: str, reason: str, job_id: str | None) -> None:
        self.rejected.append((job_id, reason))


def test_the_router_rejects_a_payload_pointing_at_another_jobs_result():
    settings = RouterSettings(deployment="crossfleet-dev", region="us-east-1", table_name="t",
                              queue_urls={"cpu": "q"}, rejects_url="r", results_bucket=BUCKET)
    router = _CapturingRouter(settings=settings, sqs=None, ledger=None,  # type: ignore[arg-type]
                              health=lambda: RoutingView({}), metrics=None)  # type: ignore[arg-type]
    router.rejected = []
    body = json.dumps(job_message(id="thief", payload={"s3_uri": f"s3://{BUCKET}/results/victim/attempt-1"}))
    router._route(body, RoutingView({}))
    assert router.rejected == [("thief", f"payload.s3_uri='s3://{BUCKET}/results/victim/attempt-1': must be under "
                                         f"s3://{BUCKET}/payloads/ (this deployment's payload prefix)")]


def test_the_worker_refuses_it_too_without_reading_s3():
    reads: list[Any] = []
    agent = SimpleNamespace(settings=SimpleNamespace(results_bucket=BUCKET),
                            s3=SimpleNamespace(get_object=lambda **kw: reads.append(kw)))
    job = make_job(payload={"s3_uri": f"s3://{BUCKET}/results/victim/attempt-1"})
    with pytest.raises(JobFailed, match="must be under"):
        Agent._payload(agent, job)  # type: ignore[arg-type]
    assert reads == []


def test_command_jobs_run_as_the_job_user_with_no_capabilities_and_a_clean_environment(monkeypatch, tmp_path):
    seen: dict[str, Any] = {}

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        seen.update(argv=argv, env=kwargs["env"])
        folder = Path(argv[argv.index("--") + 2]).parent
        seen["modes"] = (oct(folder.stat().st_mode & 0o777), oct((folder / "input.json").stat().st_mode & 0o777))
        (folder / "output").write_bytes(b"done")
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    runner = build_runner({"kind": "command", "argv": ["/opt/job", "{input}", "{output}"], "run_as": "crossfleet-job"})
    assert isinstance(runner, CommandRunner)
    assert runner.run(make_job(), b"{}") == b"done"
    argv = seen["argv"]
    assert argv[:argv.index("--")] == ["setpriv", "--reuid=crossfleet-job", "--regid=crossfleet-job",
                                       "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
                                       "--bounding-set=-all", "--no-new-privs"]
    assert argv[argv.index("--") + 1] == "/opt/job"
    assert set(seen["env"]) == {"PATH", "HOME", "LANG"}, "no AWS_* or agent environment leaks into the job"
    assert seen["modes"] == ("0o733", "0o644")


@pytest.mark.parametrize("pool", ["cpu", "gpu"])
def test_instances_deny_jobs_the_metadata_service_and_workers_cannot_read_results(default_app: SynthesizedApp,
                                                                                  pool: str):
    # The rules are applied at every boot by crossfleet-job-isolation.service, which the worker unit requires.
    rules = (ROOT / "worker" / "isolate-jobs.sh").read_text()
    assert 'meta skuid "crossfleet-job" ip daddr 169.254.169.254 reject' in rules
    assert "--uid-owner crossfleet-job -d 169.254.169.254 -j REJECT" in rules
    assert "exit 1" in rules, "no packet filter: fail closed"
    unit = (ROOT / "worker" / "crossfleet-worker.service").read_text()
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID" in unit and "User=crossfleet" in unit
    template = default_app.template_json("us-east-1")
    group = asg_for_pool(template, pool)
    role_id = launch_template_of(template, group)["Properties"]["LaunchTemplateData"]["IamInstanceProfile"]
    role_ids = [k for k, v in resources_of_type(template, "AWS::IAM::InstanceProfile").items()
                if k == role_id["Arn"]["Fn::GetAtt"][0]]
    (profile,) = role_ids
    role = resources_of_type(template, "AWS::IAM::InstanceProfile")[profile]["Properties"]["Roles"][0]["Ref"]
    statements = role_statements(template, role)
    bucket = next(k for k in resources_of_type(template, "AWS::S3::Bucket") if k.startswith("ResultsBucket"))
    assert evaluate(statements, "s3:GetObject", f"<{bucket}.Arn>/payloads/team/a.json").allowed
    assert not evaluate(statements, "s3:GetObject", f"<{bucket}.Arn>/results/victim/attempt-1").allowed
    assert evaluate(statements, "s3:PutObject", f"<{bucket}.Arn>/results/job/attempt-1").allowed
    assert not evaluate(statements, "s3:PutObject", f"<{bucket}.Arn>/payloads/a").allowed
    script = render_user_data(launch_template_of(template, group)["Properties"]["LaunchTemplateData"]["UserData"])
    settings = json.loads(script.split("<<'CROSSFLEET_SETTINGS'\n", 1)[1].split("\nCROSSFLEET_SETTINGS", 1)[0])
    assert settings["runner"]["kind"] == "http", "default runner runs no job code on the host"


def test_command_runners_are_deployed_to_run_as_the_job_user():
    from tests.cdk_helpers import synthesize

    app = synthesize({"regions": ["us-east-2"], "worker": {"cpu_runner": {"kind": "command", "argv": ["/opt/x"]}}},
                     nag=False)
    template = app.template_json("us-east-2")
    script = render_user_data(launch_template_of(template, asg_for_pool(template, "cpu"))[
        "Properties"]["LaunchTemplateData"]["UserData"])
    settings = json.loads(script.split("<<'CROSSFLEET_SETTINGS'\n", 1)[1].split("\nCROSSFLEET_SETTINGS", 1)[0])
    assert settings["runner"]["run_as"] == "crossfleet-job"


def test_results_bucket_is_versioned(default_app: SynthesizedApp):
    template = default_app.template_json("us-east-1")
    bucket = next(v for k, v in resources_of_type(template, "AWS::S3::Bucket").items() if k.startswith("ResultsBucket"))
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any("NoncurrentVersionExpiration" in r for r in rules), "old versions do not pile up"
