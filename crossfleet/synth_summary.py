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
            tags = {t["Key"]: t["Value"] for t in props.get("Tags", [])}
            pool = tags.get("crossfleet:pool", logical_id)
            if tags.get("crossfleet:lane"):
                # The GPU pool's warm lane: a second group of the pool, with the warm pool.
                pool = f"{pool} ({tags['crossfleet:lane']} lane)"
            mixed = props.get("MixedInstancesPolicy")
            if mixed:
                types = [o["InstanceType"] for o in mixed["LaunchTemplate"].get("Overrides", [])]
            else:
                # One type, in the launch template (a reservation-pinned group or a warm lane).
                ref = props.get("LaunchTemplate", {}).get("LaunchTemplateId", {})
                template_data = resources.get(ref.get("Ref", "") if isinstance(ref, dict) else "", {})
                types = [template_data.get("Properties", {}).get("LaunchTemplateData", {}).get("InstanceType",
                                                                                            "(launch template)")]
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
