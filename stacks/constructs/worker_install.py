"""The worker agent's delivery to instances: one S3 asset per stack, and the user data that installs it.

The asset carries everything the agent imports: the worker, the shared controller package and its Python
dependencies (vendor/), copied from this environment, whose versions constraints.txt pins. Instances install
nothing from the network at boot, so the code they run is exactly what was synthesized and tested.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

ROOT = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "tests", "*.md")
# The agent's third-party imports and theirs (boto3 -> botocore, s3transfer, jmespath; botocore -> dateutil,
# urllib3; dateutil -> six), all pure Python.
VENDORED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
# botocore's API models are most of its size; the agent calls these services only (worker/crossfleet_worker).
BOTOCORE_SERVICES = ("sqs", "s3", "dynamodb", "autoscaling", "cloudwatch", "sts")


@functools.cache
def staged_worker_asset() -> Path:
    """Build the asset's directory once per process (a private temporary directory: parallel runs do not race)."""
    stage = Path(tempfile.mkdtemp(prefix="crossfleet-worker-asset-"))
    # Synthesis copies the asset into the cloud assembly, so the staging folder is not needed after the process.
    atexit.register(shutil.rmtree, stage, ignore_errors=True)
    shutil.copytree(ROOT / "worker", stage / "worker", ignore=IGNORED)
    shutil.copytree(ROOT / "lambda" / "crossfleet_control", stage / "lambda" / "crossfleet_control", ignore=IGNORED)
    vendor = stage / "vendor"
    vendor.mkdir()
    for name in VENDORED:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"{name} is not installed: run make setup (it vendors into the worker asset)")
        if spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations)))
            data_ignore = _botocore_models if name == "botocore" else IGNORED
            shutil.copytree(source, vendor / name, ignore=data_ignore)
        else:
            shutil.copy2(spec.origin, vendor / Path(spec.origin).name)
    return stage


def _botocore_models(folder: str, names: list[str]) -> set[str]:
    ignored = set(IGNORED(folder, names))
    if Path(folder).name == "data" and Path(folder).parent.name == "botocore":
        # Keep the shared files (endpoints, partitions, retry and default configuration) and the used services.
        ignored |= {n for n in names if (Path(folder) / n).is_dir() and n not in BOTOCORE_SERVICES}
    return ignored


def worker_asset(scope: Construct) -> s3_assets.Asset:
    return s3_assets.Asset(scope, "WorkerAgentAsset", path=str(staged_worker_asset()))


def worker_user_data(*, asset: s3_assets.Asset, settings: dict[str, Any],
                     warm_lane: dict[str, Any] | None = None) -> ec2.UserData:
    """Fetch and unpack the asset, write the settings file, run the installer (systemd unit).

    `warm_lane` (region, group_name, launch_hook, units): a warm-lane instance. The installer then starts
    nothing; the user data's last line (`warm_lane_boot_commands`, after every preparation step) enables
    crossfleet-warm-lane.service, which starts the units only when the instance is going InService."""
    settings_json = Stack.of(asset).to_json_string(settings)
    user_data = ec2.UserData.for_linux()
    user_data.add_commands(
        "set -euo pipefail",
        "install -d -m 0755 /opt/crossfleet /etc/crossfleet",
        f"aws s3 cp s3://{asset.s3_bucket_name}/{asset.s3_object_key} /opt/crossfleet/worker.zip --only-show-errors",
        "cd /opt/crossfleet && python3 -m zipfile -e worker.zip /opt/crossfleet",
        "cat > /etc/crossfleet/worker.json <<'CROSSFLEET_SETTINGS'",
        settings_json,
        "CROSSFLEET_SETTINGS",
    )
    if warm_lane is None:
        user_data.add_commands("bash /opt/crossfleet/worker/install.sh")
        return user_data
    user_data.add_commands(
        "cat > /etc/crossfleet/warm-lane.json <<'CROSSFLEET_WARM_LANE'",
        Stack.of(asset).to_json_string(warm_lane),
        "CROSSFLEET_WARM_LANE",
        "CROSSFLEET_WARM_LANE=1 bash /opt/crossfleet/worker/install.sh",
    )
    return user_data


def warm_lane_boot_commands(*, model_server_image: str | None) -> list[str]:
    """The warm-lane user data's last lines: pull the model server's image onto the root volume now (that is
    what the warm pool keeps), then run the boot gate, now and at every later boot."""
    pull = [f"docker pull {model_server_image}"] if model_server_image else []
    return [*pull, "systemctl enable --now crossfleet-warm-lane.service"]
