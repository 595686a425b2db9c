"""Regenerate crossfleet/config/offerings.json, the pinned instance-type offerings table.

Why a pinned table: synth must not call AWS, yet a config naming an instance type that a region does not
offer (m9g or g6e in us-west-1, say) should fail at synth, not at launch. The table is generated from the
region offerings and instance-type data that moto ships (itself recorded from EC2's
DescribeInstanceTypeOfferings / DescribeInstanceTypes), so a refresh is: upgrade moto, run this script,
review the diff. With an AWS account, compare against
`aws ec2 describe-instance-type-offerings --region R --location-type region` (and `--location-type
availability-zone` for the per-AZ lists).

Per-AZ lists (`zones`) are by AZ *name* as moto recorded them in one account. AZ names map to different physical
zones in each account (EC2 documentation on AZ IDs: IDs are the same across accounts, names are not), so they
show that a type is offered in only some of a region's zones, not which of *your* zones: compare with your own
account before relying on a name.
"""

from __future__ import annotations

import gzip
import json
import re
from importlib import metadata, resources
from pathlib import Path

US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
# Families a crossfleet pool can use, plus common x86 general-purpose families so that a misplaced x86
# type gets an "architecture" error rather than "unknown type".
FAMILIES = re.compile(
    r"^(m9g|c9g|r9g|m8g|c8g|r8g|m7g|c7g|r7g|g5g|p4d|p4de|p5|p5e|p5en|p6-b200|g5|g6|g6e|inf2|trn1|trn2"
    r"|m7i|c7i|r7i|m7a|c7a|m6i|c6i)\.[0-9a-z-]+$"
)
OUT = Path(__file__).resolve().parents[1] / "crossfleet" / "config" / "offerings.json"


def _load_gz(relative: str) -> object:
    base = resources.files("moto.ec2") / "resources"
    return json.loads(gzip.decompress((base / relative).read_bytes()))


def main() -> None:
    types_data = _load_gz("instance_types.json.gz")
    by_region: dict[str, set[str]] = {}
    by_zone: dict[str, dict[str, set[str]]] = {}  # region -> instance type -> AZ names
    for region in US_REGIONS:
        offered = _load_gz(f"instance_type_offerings/region/{region}.json.gz")
        by_region[region] = {o["InstanceType"] for o in offered}
        zonal = _load_gz(f"instance_type_offerings/availability-zone/{region}.json.gz")
        by_zone[region] = {}
        for o in zonal:
            by_zone[region].setdefault(o["InstanceType"], set()).add(o["Location"])

    table: dict[str, dict[str, object]] = {}
    for name, info in sorted(types_data.items()):
        if not FAMILIES.match(name):
            continue
        archs = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
        gpus = info.get("GpuInfo", {}).get("Gpus", [])
        neuron = info.get("NeuronInfo", {}).get("NeuronDevices", []) or info.get(
            "InferenceAcceleratorInfo", {}
        ).get("Accelerators", [])
        if gpus:
            accelerator = gpus[0].get("Manufacturer", "unknown").lower()
            count = sum(g.get("Count", 0) for g in gpus)
        elif neuron or name.startswith(("inf2", "trn")):
            accelerator = "neuron"
            count = sum(d.get("Count", 0) for d in neuron)
        else:
            accelerator, count = "none", 0
        regions = [r for r in US_REGIONS if name in by_region[r]]
        network = info.get("NetworkInfo", {})
        table[name] = {
            "arch": "arm64" if "arm64" in archs else (archs[0] if archs else "unknown"),
            "vcpus": info.get("VCpuInfo", {}).get("DefaultVCpus", 0),
            "memory_gib": round(info.get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024, 1),
            "accelerator": accelerator,
            "accelerator_count": count,
            "regions": regions,
            "zones": {r: sorted(by_zone[r].get(name, ())) for r in regions},
            # EC2 DescribeInstanceTypes NetworkInfo.EfaInfo.MaximumEfaInterfaces; 0 = no EFA.
            "efa_max_interfaces": (network.get("EfaInfo", {}).get("MaximumEfaInterfaces", 0)
                                   if network.get("EfaSupported") else 0),
        }
    document = {
        "source": f"moto {metadata.version('moto')} EC2 instance type and region offering data",
        "regions": list(US_REGIONS),
        "instance_types": table,
    }
    OUT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(table)} instance types to {OUT}")


if __name__ == "__main__":
    main()
