"""Every figure of the service model names its source, or says it is an estimate and why.

The simulator and the Lambda size fleets from data/instance_profiles.json, so an unsourced figure there silently
decides every benchmark result. These checks keep each family's `source` string complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

PROFILES = Path(__file__).resolve().parents[1] / "lambda/crossfleet_control/core/data/instance_profiles.json"
FAMILIES: dict[str, dict[str, Any]] = json.loads(PROFILES.read_text())["families"]
# The only tags the file's `about` defines; an estimate must say why inside its tag: "[E: reason]".
TAG = re.compile(r"\[([^\]]*)\]")
ESTIMATE = re.compile(r"\[E(?::\s*([^\]]*))?\]")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_names_a_source_for_each_figure(family: str) -> None:
    source = FAMILIES[family].get("source", "")
    assert source.strip(), f"{family}: empty source"
    # Each figure the model reads is named in the source (CPU families cite prefill and decode together as "rates").
    for words in (("price",), ("prefill", "rates"), ("decode", "rates"), ("stream",), ("boot",), ("power",),
                  ("batch-1 decode",)):
        assert any(word in source for word in words), f"{family}: no source for {'/'.join(words)}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_estimate_says_why(family: str) -> None:
    source = FAMILIES[family]["source"]
    for match in TAG.finditer(source):
        tag = match.group(1)
        assert tag in {"A", "B", "D"} or tag.startswith("E:"), f"{family}: unknown or bare tag [{tag}]"
    for match in ESTIMATE.finditer(source):
        reason = (match.group(1) or "").strip()
        assert len(reason.split()) >= 5, f"{family}: estimate without a reason: {match.group(0)!r}"


@pytest.mark.parametrize("family", sorted(f for f, e in FAMILIES.items() if e["unit"] == "accelerator"))
def test_gpu_prefill_figure_is_quoted_in_its_source(family: str) -> None:
    """The prefill rate sizes every GPU fleet on the prompt-heavy code trace: its number must appear with its source."""
    entry = FAMILIES[family]
    figure = f"{entry['prefill_tps_per_unit']:,}"
    source = entry["source"]
    assert figure in source or "[E:" in source.split("prefill", 1)[1][:200], f"{family}: prefill {figure} not quoted"


def test_the_checks_catch_a_bare_estimate() -> None:
    """The old g6e entry ('prefill 3,000 tok/s [E]') must fail the estimate check."""
    assert any(not (m.group(1) or "").strip() for m in ESTIMATE.finditer("prefill 3,000 tok/s [E]; power [E]"))
