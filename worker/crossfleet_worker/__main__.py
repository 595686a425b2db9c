"""`python3 -m crossfleet_worker /etc/crossfleet/worker.json`: what the systemd unit starts."""

from __future__ import annotations

import sys
from pathlib import Path

import boto3
from botocore.config import Config

from crossfleet_control.aws.ledger import Ledger
from crossfleet_worker.agent import Agent, WorkerSettings, run_forever
from crossfleet_worker.instance import InstanceMetadata
from crossfleet_worker.job_metrics import JobMetrics
from crossfleet_worker.runners import build_runner


def main() -> None:
    settings = WorkerSettings.from_json(Path(sys.argv[1] if len(sys.argv) > 1 else "/etc/crossfleet/worker.json")
                                        .read_text())
    session = boto3.session.Session(region_name=settings.region)
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    metadata = InstanceMetadata()
    ledgers: dict[str, Ledger] = {}

    def peer_ledgers(region: str) -> Ledger:
        """Jobs from another region are claimed in its ledger (one client per region, made on first use)."""
        if region not in ledgers:
            ledgers[region] = Ledger(session.client("dynamodb", region_name=region, config=config),
                                     settings.peer_tables[region])
        return ledgers[region]

    agent = Agent(settings=settings, sqs=session.client("sqs", config=config), s3=session.client("s3", config=config),
                  autoscaling=session.client("autoscaling", config=config),
                  ledger=Ledger(session.client("dynamodb", config=config), settings.table_name),
                  runner=build_runner(settings.runner), owner=metadata.instance_id(),
                  ledger_for=peer_ledgers,
                  job_metrics=JobMetrics(session.client("cloudwatch", config=config), settings.deployment,
                                         settings.region, settings.pool))
    # The pool's lifecycle hook timeout, less a margin for the requeue and the completion call.
    run_forever(agent, metadata, drain_budget_seconds=settings.drain_budget_seconds)


if __name__ == "__main__":
    main()
