"""The controller package's layers, kept by walking every module's imports with `ast`.

- core/: pure. No boto3, botocore, AWS code or I/O-bound layer: only the standard library and core itself.
- aws/: adapters. May use core's types; never orchestration or handlers.
- orchestration/: may use core and aws; never handlers.
- handlers/: the Lambda entry points, the only modules that read the environment.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lambda" / "crossfleet_control"
LAYERS = ("core", "aws", "orchestration", "handlers")
# Each layer's allowed crossfleet_control layers (its own included).
ALLOWED = {
    "core": {"core"},
    "aws": {"core", "aws"},
    "orchestration": {"core", "aws", "orchestration"},
    "handlers": {"core", "aws", "orchestration", "handlers"},
}
# Third-party roots the pure core must never import (AWS SDKs and anything that could call the network).
FORBIDDEN_IN_CORE = {"boto3", "botocore", "aiobotocore", "s3transfer", "urllib3", "requests", "socket", "http"}


def imported_modules(source: str) -> list[str]:
    """Every module a file imports, at any depth (a function-local import counts as much as a top-level one)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            if node.module == "crossfleet_control":  # `from crossfleet_control import core`
                found += [f"crossfleet_control.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append("." * node.level + (node.module or ""))
    return found


def violations(layer: str, source: str) -> list[str]:
    bad = []
    for module in imported_modules(source):
        if module.startswith("."):
            bad.append(f"relative import {module!r} (imports name their layer)")
            continue
        root = module.split(".")[0]
        if layer == "core" and root in FORBIDDEN_IN_CORE:
            bad.append(f"imports {module}")
        if root == "crossfleet_control":
            parts = module.split(".")
            if len(parts) == 1:
                continue
            if parts[1] not in LAYERS:
                bad.append(f"imports {module}, which is in no layer")
            elif parts[1] not in ALLOWED[layer]:
                bad.append(f"imports {module} ({parts[1]} is above {layer})")
        if layer == "core" and root not in sys.stdlib_module_names and root != "crossfleet_control":
            bad.append(f"imports third-party {module} (the core is standard library only)")
    return bad


def modules_of(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_every_module_imports_only_from_its_own_layer_or_below(layer: str):
    assert modules_of(layer), f"{layer}/ has no modules"
    problems = {str(path.relative_to(PACKAGE)): violations(layer, path.read_text())
                for path in modules_of(layer)}
    assert {path: bad for path, bad in problems.items() if bad} == {}


def test_no_module_sits_outside_the_layers():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], "every controller module belongs to core/, aws/, orchestration/ or handlers/"


def test_only_handlers_read_the_environment():
    readers = [str(path.relative_to(PACKAGE)) for layer in ("core", "aws", "orchestration")
               for path in modules_of(layer) if "os.environ" in path.read_text() or "getenv" in path.read_text()]
    assert readers == []


@pytest.mark.parametrize("source, layer, expected", [
    ("import boto3", "core", "imports boto3"),
    ("def f():\n    from botocore.config import Config", "core", "imports botocore.config"),
    ("from crossfleet_control.aws.ledger import Ledger", "core", "aws is above core"),
    ("from crossfleet_control import handlers", "orchestration", "handlers is above orchestration"),
    ("import numpy", "core", "third-party numpy"),
    ("from . import policy", "core", "relative import"),
])
def test_the_rule_catches_what_it_forbids(source: str, layer: str, expected: str):
    """The walk itself must be able to fail: each forbidden import, even one hidden in a function, is caught."""
    assert any(expected in v for v in violations(layer, source)), violations(layer, source)


def test_the_rule_lets_the_core_use_the_standard_library_and_itself():
    assert violations("core", "import json\nfrom crossfleet_control.core.jobs import Job") == []
