"""Generate docs/configuration.md from the config model: every key, its default, what it means.

Run `python tools/config_reference.py` after changing a section of crossfleet/config/; a test fails while the
committed reference is out of date.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambda")]

from crossfleet.config.field_help import FIELD_HELP  # noqa: E402
from crossfleet.config.model import parse_config  # noqa: E402

OUT = ROOT / "docs" / "configuration.md"
HEADER = """# Configuration reference

Generated from `crossfleet/config/` (each section's defaults; meanings from `field_help.py`) by
`tools/config_reference.py`; do not edit by hand.

Configuration is the `crossfleet` block of `cdk.json`, or a whole JSON file given with `cdk synth -c
config=path.json`. Every key is optional; the defaults below synthesize. An entry of `regions` is a region name or
an object with `region`, `availability_zones` and `graviton_fleet` / `accelerator_cluster` keys that override the
top-level sections for that region only. A bad value stops synth with one line naming the key, the value and what
is allowed.

| key | default | meaning |
|---|---|---|
"""


def rows() -> list[str]:
    """One row per leaf key, with the default the model gives it, in the model's own field order."""
    config = parse_config({})
    region = config.regions[0]
    sections = [("", config)]
    sections += [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
                 if dataclasses.is_dataclass(getattr(config, f.name))]
    sections += [("regions[]", region), ("graviton_fleet", region.graviton_fleet),
                 ("accelerator_cluster", region.accelerator_cluster),
                 ("realtime.cpu_server", config.realtime.cpu_server),
                 ("realtime.gpu_server", config.realtime.gpu_server)]
    lines = [f"| `regions` | `{json.dumps([r.region for r in config.regions])}` | {FIELD_HELP['regions']} |"]
    for prefix, value in sections:
        for field in dataclasses.fields(value):
            current = getattr(value, field.name)
            if dataclasses.is_dataclass(current) or field.name == "regions" or field.metadata.get("derived"):
                continue
            key = f"{prefix}.{field.name}" if prefix else field.name
            shown = json.dumps(list(current) if isinstance(current, tuple) else current)
            if key == "regions[].availability_zones":
                # Each region has its own default list: show them all, not the first region's.
                from crossfleet.config.model import DEFAULT_AZS

                shown = "; ".join(f"{r}: {json.dumps(list(azs))}" for r, azs in DEFAULT_AZS.items())
            lines.append(f"| `{key}` | `{shown}` | {FIELD_HELP.get(key, '')} |")
    return lines


def render() -> str:
    return HEADER + "\n".join(rows()) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
