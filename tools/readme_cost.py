"""Write README.md's "What it costs" table from `crossfleet cost` for the default config (cdk.json).

Run `python tools/readme_cost.py` after changing the defaults or the price table; a test fails while the
README's table differs from the command's output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "lambda")]

from crossfleet import cost  # noqa: E402
from crossfleet.config import parse_config  # noqa: E402

BEGIN, END = "<!-- cost:begin (tools/readme_cost.py) -->\n", "<!-- cost:end -->"


def render() -> str:
    context = json.loads((ROOT / "cdk.json").read_text())["context"]["crossfleet"]
    return cost.table(cost.estimate(parse_config(context)))


def main() -> None:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    start, stop = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    readme_path.write_text(readme[:start] + render() + "\n" + readme[stop:])
    print(f"wrote the cost table into {readme_path}")


if __name__ == "__main__":
    main()
