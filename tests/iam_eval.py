"""A small evaluator of the synthesized templates' identity policies, enough to ask "may this role do X to Y".

It understands what crossfleet's policies use: Allow/Deny, Action and Resource with '*' wildcards, and the
condition operators StringEquals, StringLike, ArnLike, Bool, Null, NumericLessThanEquals and their ForAllValues /
ForAnyValue forms, over a request context given by the test. Intrinsic references (Fn::GetAtt, Ref, Fn::Join) are
resolved to "<logicalId>" markers, so a resource is matched by logical id. A condition key the request does not
carry is absent (ForAllValues over an absent key is true, exactly as in IAM: which is why Null checks matter).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def render(value: Any) -> str:
    """A template value as a string: intrinsics become <LogicalId> / <LogicalId.Attr> / <Pseudo>."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (name, arg), = value.items()
        if name == "Ref":
            return f"<{arg}>"
        if name == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>"
        if name == "Fn::Join":
            return arg[0].join(render(v) for v in arg[1])
        if name == "Fn::Select":
            return f"<select:{render(arg[1])}>"
    return json.dumps(value, sort_keys=True)


def role_statements(template: Mapping[str, Any], role_id: str) -> list[dict[str, Any]]:
    """Every statement of the inline and attached customer policies of one role (AWS-managed ones excluded)."""
    statements: list[dict[str, Any]] = []
    resources = template["Resources"]
    role = resources[role_id]["Properties"]
    for policy in role.get("Policies", []):
        statements.extend(as_list(policy["PolicyDocument"]["Statement"]))
    for resource in resources.values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and \
                {"Ref": role_id} in resource["Properties"].get("Roles", []):
            statements.extend(as_list(resource["Properties"]["PolicyDocument"]["Statement"]))
    for arn in role.get("ManagedPolicyArns", []):
        if isinstance(arn, dict) and "Ref" in arn and arn["Ref"] in resources:
            statements.extend(as_list(resources[arn["Ref"]]["Properties"]["PolicyDocument"]["Statement"]))
    return statements


def managed_policy_statements(template: Mapping[str, Any], policy_id: str) -> list[dict[str, Any]]:
    return as_list(template["Resources"][policy_id]["Properties"]["PolicyDocument"]["Statement"])


def _match(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _matches_any(patterns: Iterable[Any], value: str, *, case: bool = True) -> bool:
    return any(_match(render(p) if case else render(p).lower(), value if case else value.lower())
               for p in patterns)


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    wanted = [render(v) for v in as_list(expected)]
    present = key in context
    values = [str(v) for v in as_list(context[key])] if present else []
    if operator == "Null":
        return (not present) == (wanted[0] == "true")
    qualifier, _, base = operator.rpartition(":")
    if base in ("StringEquals", "ArnEquals"):
        def test(v: str) -> bool:
            return v in wanted
    elif base in ("StringLike", "ArnLike"):
        def test(v: str) -> bool:
            return any(_match(w, v) for w in wanted)
    elif base == "StringNotEquals":
        def test(v: str) -> bool:
            return v not in wanted
    elif base == "Bool":
        def test(v: str) -> bool:
            return v.lower() == wanted[0].lower()
    elif base == "NumericLessThanEquals":
        def test(v: str) -> bool:
            return float(v) <= float(wanted[0])
    else:
        raise AssertionError(f"condition operator {operator} not understood by this evaluator")
    if qualifier == "ForAllValues":
        return all(test(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(test(v) for v in values)
    return present and all(test(v) for v in values) if base != "StringNotEquals" else \
        (not present or all(test(v) for v in values))


def _applies(statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]) -> bool:
    if not _matches_any(as_list(statement.get("Action", [])), action, case=False):
        return False
    if not _matches_any(as_list(statement.get("Resource", [])), resource):
        return False
    for operator, pairs in statement.get("Condition", {}).items():
        for key, expected in pairs.items():
            if not _condition_holds(operator, key, expected, context):
                return False
    return True


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    why: str


def evaluate(statements: list[dict[str, Any]], action: str, resource: str,
             context: Mapping[str, Any] | None = None) -> Verdict:
    """IAM's identity-policy logic: an explicit Deny wins, then any Allow, else implicitly denied."""
    context = context or {}
    allows = []
    for statement in statements:
        if _applies(statement, action, resource, context):
            if statement["Effect"] == "Deny":
                return Verdict(False, f"denied by {statement.get('Sid')}")
            allows.append(statement.get("Sid", "?"))
    return Verdict(bool(allows), f"allowed by {allows}" if allows else "no statement allows it")
