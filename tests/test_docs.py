"""Generated documentation stays true to the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_current_and_explains_every_key():
    reference = _load("config_reference")
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference.render(), "run: python tools/config_reference.py"
    for row in reference.rows():
        assert not row.endswith("|  |"), f"no meaning given for {row.split('|')[1]}"
