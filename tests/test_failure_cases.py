"""docs/failure-cases.md stays true: every case 1-23 names tests, and every named test exists. Plus the tests
for cases that had none."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

from moto import mock_aws

from crossfleet_control.orchestration.rebalance_cycle import run_cycle
from tests.aws_region import DEPLOYMENT, build_region
from tests.fakes import capture_metrics
from tests.jobfactory import job_message

ROOT = Path(__file__).resolve().parents[1]
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def table_rows() -> dict[int, str]:
    rows = {}
    for line in (ROOT / "docs" / "failure-cases.md").read_text().splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|", line)
        if match:
            rows[int(match.group(1))] = line
    return rows


def test_every_failure_case_names_tests_that_exist():
    rows = table_rows()
    assert sorted(rows) == list(range(1, 24)), "one row per failure case 1-23"
    defined: dict[str, set[str]] = {}
    for number, row in rows.items():
        nodes = NODE.findall(row)
        assert nodes, f"case {number} names no test"
        for path, name in nodes:
            if path not in defined:
                tree = ast.parse((ROOT / path).read_text())  # a missing file fails here, by name
                defined[path] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            assert name in defined[path], f"case {number}: {path}::{name} does not exist"


def test_a_group_without_this_deployments_tag_is_not_sized():
    """Case 22: a group that lost (or never had) this deployment's tag is not ours: the cycle leaves its
    desired capacity alone and reports it, although its queue is deep enough to scale it up."""
    with mock_aws():
        region = build_region(cpu_desired=1)
        group = region.settings.pools["cpu"].group_name
        region.client("autoscaling").delete_tags(Tags=[{
            "ResourceId": group, "ResourceType": "auto-scaling-group", "Key": "crossfleet:deployment",
            "Value": DEPLOYMENT}])
        region.send("cpu", [job_message(placement="cpu_only", preference="cpu", submitted_at=time.time())
                            for _ in range(300)])
        deps = region.deps()
        metrics = capture_metrics(deps)
        run_cycle(deps, {}, holder="tagless", remaining_ms=lambda: 50_000)
        assert region.desired("cpu") == 1, "a foreign group is never resized"
        assert '"Operation": "foreign_group"' in metrics.getvalue()
