"""Print what `make synth` produced: stacks, regions, each fleet's instance types and sizes.

Read from the synthesized templates rather than the config, so the summary shows what would deploy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(out_dir: Path) -> list[str]:
    manifest = json.loads((out_dir / "manifest.json").read_text())
    lines = []
    for artifact in manifest["artifacts"].values():
        if artifact.get("type") != "aws:cloudformation:stack":
            continue
        template = json.loads((out_dir / artifact["properties"]["templateFile"]).read_text())
        region = artifact["environment"].rsplit("/", 1)[-1]
        resources = template.get("Resources", {})
        lines.append(f"{artifact['displayName']}  region={region}  resources={len(resources)}")
        for logical_id, resource in sorted(resources.items()):
            if resource["Type"] != "AWS::AutoScaling::AutoScalingGroup":
                continue
            props = resource["Properties"]
            pool = next((t["Value"] for t in props.get("Tags", []) if t["Key"] == "crossfleet:pool"), logical_id)
            mixed = props.get("MixedInstancesPolicy")
            if mixed:
                types = [o["InstanceType"] for o in mixed["LaunchTemplate"].get("Overrides", [])]
            else:
                types = ["(launch template type: reservation-pinned)"]
            sizes = f"min={props['MinSize']:<3} max={props['MaxSize']:<4}"
            lines.append(f"  pool {pool:<4} {sizes} types={', '.join(types)}")
    return lines


def main() -> None:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "cdk.out")
    lines = summarize(out_dir)
    print(f"==> synthesized {sum(1 for line in lines if not line.startswith(' '))} stacks into {out_dir}/")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
