"""Which state-table partitions each role may read, write and delete, asked of the synthesized policies.

Partitions (crossfleet_control.aws): job#ID (ledger), rebalancer#REGION (lease, memory, operator overrides),
decisions#REGION (decision log), capacity#REGION (breakers, GPU summary). A key the template does not bound shows
up here as allowed, so each test fails on an unconditioned grant such as grant_read_write_data.
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import CfnElement, Stack
from aws_cdk import aws_iam as iam

from tests.cdk_helpers import SynthesizedApp
from tests.iam_eval import evaluate, managed_policy_statements, role_statements

REGION = "us-east-1"
OTHER = "us-west-2"
# What each kind of request is, in IAM terms: (action, extra context).
READS = ("dynamodb:GetItem", "dynamodb:Query")
WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem")
DELETES = ("dynamodb:DeleteItem",)
PARTITIONS = {
    "job": "job#4f1c2d", "controller": f"rebalancer#{REGION}", "decisions": f"decisions#{REGION}",
    "capacity": f"capacity#{REGION}", "other-region-controller": f"rebalancer#{OTHER}",
}


def _logical_id(stack: Stack, role: iam.IRole) -> str:
    element = role.node.default_child
    assert isinstance(element, CfnElement)
    return stack.get_logical_id(element)


def _roles(app: SynthesizedApp) -> dict[str, str]:
    stack = app.stacks[REGION]
    return {"worker-cpu": _logical_id(stack, stack.graviton_fleet.instances.role),
            "worker-gpu": _logical_id(stack, stack.accelerator_cluster.instances.role),
            "rebalancer": _logical_id(stack, stack.rebalancer.function.role),  # type: ignore[arg-type]
            "router": _logical_id(stack, stack.router.function.role),  # type: ignore[arg-type]
            "capacity-events": _logical_id(stack, stack.capacity_events.function.role)}  # type: ignore[arg-type]


def _table(app: SynthesizedApp) -> str:
    stack = app.stacks[REGION]
    return f"<{_logical_id_of(stack, stack.state.table)}.Arn>"


def _logical_id_of(stack: Stack, construct: Any) -> str:
    element = construct.node.default_child
    assert isinstance(element, CfnElement)
    return stack.get_logical_id(element)


def _access(app: SynthesizedApp, statements: list[dict[str, Any]]) -> dict[str, set[str]]:
    """For each partition: which of read / write / delete every action of that kind is allowed on."""
    table = _table(app)
    access: dict[str, set[str]] = {}
    for name, key in PARTITIONS.items():
        granted = set()
        for kind, actions in (("read", READS), ("write", WRITES), ("delete", DELETES)):
            if any(evaluate(statements, a, table, {"dynamodb:LeadingKeys": [key]}).allowed for a in actions):
                granted.add(kind)
        access[name] = granted
    return access


EXPECTED = {
    # Workers: the ledger and nothing else (no override, breaker, lease or decision; no delete).
    "worker-cpu": {"job": {"read", "write"}},
    "worker-gpu": {"job": {"read", "write"}},
    # The controller: its lease/memory/overrides (read; it writes lease and memory there), decisions, breakers, and
    # the ledger of the jobs it moves. Never another region's controller partition, never a delete.
    "rebalancer": {"job": {"read", "write"}, "controller": {"read", "write"}, "decisions": {"read", "write"},
                   "capacity": {"read", "write"}},
    # The router: writes the ledger, reads the latest decision and the breakers to place jobs.
    "router": {"job": {"read", "write"}, "decisions": {"read"}, "capacity": {"read"}},
    # Capacity events: this region's breakers and GPU summary only.
    "capacity-events": {"capacity": {"read", "write"}},
}


def test_operators_suggested_policy_reads_state_and_writes_only_overrides(default_app: SynthesizedApp):
    """Overrides are items in the controller's partition (sort key override#POOL): the only write operators get."""
    stack = default_app.stacks[REGION]
    template = default_app.template_json(REGION)
    statements = managed_policy_statements(template, _logical_id_of(stack, stack.operator_policy.policy))
    access = {name: kinds for name, kinds in _access(default_app, statements).items() if kinds}
    assert access == {"job": {"read"}, "controller": {"read", "write", "delete"}, "decisions": {"read"},
                      "capacity": {"read"}}
    assert not evaluate(statements, "dynamodb:Scan", _table(default_app), {}).allowed
    assert "OperatorPolicyArn" in template["Outputs"]


@pytest.mark.parametrize("role", list(EXPECTED))
def test_each_role_reads_and_writes_only_its_partitions(default_app: SynthesizedApp, role: str):
    template = default_app.template_json(REGION)
    statements = role_statements(template, _roles(default_app)[role])
    access = {name: kinds for name, kinds in _access(default_app, statements).items() if kinds}
    assert access == EXPECTED[role]


@pytest.mark.parametrize("role", list(EXPECTED))
def test_no_role_may_scan_or_touch_the_table_without_naming_partitions(default_app: SynthesizedApp, role: str):
    """A Scan carries no partition key; ForAllValues alone would let it through (the Null check refuses it)."""
    template = default_app.template_json(REGION)
    statements = role_statements(template, _roles(default_app)[role])
    table = _table(default_app)
    for action in ("dynamodb:Scan", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteTable",
                   "dynamodb:UpdateTable", "dynamodb:PartiQLUpdate"):
        verdict = evaluate(statements, action, table, {})
        assert not verdict.allowed, f"{role} {action} without keys: {verdict.why}"


def test_a_worker_cannot_pin_the_gpu_pool_or_forge_a_breaker(default_app: SynthesizedApp):
    """The issue's attack, spelled out: an override#gpu item or a capacity# breaker, written with worker rights,
    alone or hidden in a batch with a legitimate ledger write."""
    template = default_app.template_json(REGION)
    table = _table(default_app)
    for role in ("worker-cpu", "worker-gpu"):
        statements = role_statements(template, _roles(default_app)[role])
        for keys in ([f"rebalancer#{REGION}"], [f"capacity#{REGION}"], ["job#1", f"rebalancer#{REGION}"]):
            for action in ("dynamodb:PutItem", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"):
                assert not evaluate(statements, action, table, {"dynamodb:LeadingKeys": keys}).allowed, (role, keys)
        assert evaluate(statements, "dynamodb:BatchWriteItem", table,
                        {"dynamodb:LeadingKeys": ["job#1", "job#2"]}).allowed, "the ledger still works"
