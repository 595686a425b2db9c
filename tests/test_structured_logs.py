"""The Lambdas log one JSON object per line with the request id and, where there is one, the job or decision id."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
from moto import mock_aws

from crossfleet_control.aws import logs
from crossfleet_control.handlers import rebalancer
from tests.aws_region import LambdaContext, Region, build_region, rebalancer_environment
from tests.test_intake_and_worker import router_for


def _entries(text: str) -> list[dict]:
    """Every stdout line that is a log entry (metrics documents, also JSON, carry `_aws` instead)."""
    parsed = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [p for p in parsed if "level" in p]


def test_an_entry_carries_the_bound_fields_and_its_own_and_drops_empty_ones():
    out = io.StringIO()
    logs.bind(function="router", request_id="r-1", region=None)
    logs.error("not routed", stream=out, job_id="j-7", error=None)
    [entry] = _entries(out.getvalue())
    assert {k: entry[k] for k in ("level", "message", "function", "request_id", "job_id")} == {
        "level": "ERROR", "message": "not routed", "function": "router", "request_id": "r-1", "job_id": "j-7"}
    assert "region" not in entry and "error" not in entry
    assert entry["timestamp"].endswith("Z")


@pytest.fixture
def region() -> Iterator[Region]:
    with mock_aws():
        yield build_region(raw_config={"regions": ["us-east-1"]}, cpu_desired=1, gpu_desired=0)


def test_the_rebalancer_logs_its_cycle_with_the_request_and_decision_ids(region: Region, monkeypatch, capsys):
    monkeypatch.setenv("CROSSFLEET_SETTINGS", rebalancer_environment(region.settings))
    monkeypatch.setattr(rebalancer, "_DEPENDENCIES", None)
    capsys.readouterr()
    result = rebalancer.handler({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                LambdaContext("request-42"))
    [cycle] = [e for e in _entries(capsys.readouterr().out) if e["message"] == "cycle"]
    assert cycle["request_id"] == "request-42" and cycle["function"] == "rebalancer"
    assert cycle["decision_id"] == result["fence"] and cycle["status"] == "ok"
    assert region.deps().state.recent_decisions(1)[0]["decision_id"] == result["fence"]


def test_the_router_logs_rejections_with_the_job_id(region: Region, capsys):
    router = router_for(region)
    logs.bind(function="router", request_id="request-7")
    capsys.readouterr()
    body = json.dumps({"schema_version": 1, "id": "bad-1", "class": "nope"})
    router.route_batch([{"messageId": "m-1", "body": body}])
    [rejected] = [e for e in _entries(capsys.readouterr().out) if e["message"] == "rejected"]
    assert rejected["job_id"] == "bad-1" and rejected["request_id"] == "request-7" and rejected["reason"]
