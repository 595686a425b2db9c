"""The worker agent's delivery to instances: one S3 asset per stack, and the user data that installs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

ROOT = Path(__file__).resolve().parents[2]
# The asset holds the worker and the shared controller package (job schema, ledger), nothing else.
ASSET_EXCLUDES = ["*", ".*", "!worker", "!worker/**", "!lambda", "!lambda/crossfleet_control",
                  "!lambda/crossfleet_control/**", "**/__pycache__", "**/*.pyc", "**/.*"]


def worker_asset(scope: Construct) -> s3_assets.Asset:
    return s3_assets.Asset(scope, "WorkerAgentAsset", path=str(ROOT), exclude=ASSET_EXCLUDES)


def worker_user_data(*, asset: s3_assets.Asset, settings: dict[str, Any]) -> ec2.UserData:
    """Fetch and unpack the asset, write the settings file, run the installer (systemd unit)."""
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
        "bash /opt/crossfleet/worker/install.sh",
    )
    return user_data
