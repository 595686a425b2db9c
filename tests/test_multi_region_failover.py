"""Two configured regions in moto: us-east-1's GPUs fail every launch for a stretch, then come back.

Everything that would run in AWS runs here on moto with a shared, stepped clock: the intake router, both
regions' rebalancers, us-east-1's capacity-events Lambda (fed the EventBridge events AWS would send), and worker
agents. moto launches every instance it is asked for, so the shortage is injected on us-east-1's Auto Scaling
reads (its GPU instances are gone and its scaling activities fail), which is what the rebalancer would see.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from moto import mock_aws

from crossfleet_control.aws.controller_state import ControllerState
from crossfleet_control.aws.health_store import HealthStore
from crossfleet_control.aws.ledger import Ledger
from crossfleet_control.aws.metrics import MetricsRecorder
from crossfleet_control.core.capacity_health import PROBING, SHORT, STATUS_RANK
from crossfleet_control.core.capacity_signals import LAUNCH_SUCCESSFUL, EventSettings
from crossfleet_control.core.settings import PeerRegion
from crossfleet_control.orchestration.capacity_events import CapacityEvents
from crossfleet_control.orchestration.intake_routing import Router, routing_view
from crossfleet_control.orchestration.rebalance_cycle import run_cycle
from tests.aws_region import DEPLOYMENT, Region, build_region
from tests.jobfactory import job_message
from tests.test_capacity_health import ICE, launch_event
from tests.test_intake_and_worker import RecordingRunner, agent_for, drain_intake, router_for

CONFIGURED = ("us-east-1", "us-west-2")
SHORTAGE_MINUTES = range(2, 8)


class World:
    """Both regions, the clock, and the injected shortage."""

    def __init__(self) -> None:
        self.now = time.time()
        self.short = False
        self.sent_to: Counter = Counter()
        self.east = build_region("us-east-1", cpu_desired=2, gpu_desired=1, gpu_max=4)
        self.west = build_region("us-west-2", cpu_desired=1, gpu_desired=1, gpu_max=4)
        for here, there in ((self.east, self.west), (self.west, self.east)):
            here.settings = replace(here.settings, peers={there.name: PeerRegion(
                there.settings.pools["gpu"].queue_url, there.settings.table_name)})
            # Every SQS send by anyone in this region's session, by the region of the queue it went to.
            for operation in ("SendMessage", "SendMessageBatch"):
                here.session.events.register(f"before-parameter-build.sqs.{operation}", self._record_send)
        east_gpu = self.east.settings.pools["gpu"].group_name
        self.east.session.events.register("after-call.auto-scaling.DescribeAutoScalingGroups",
                                          lambda parsed, **_: self._hide_instances(parsed, east_gpu))
        self.east.session.events.register("after-call.auto-scaling.DescribeScalingActivities",
                                          lambda parsed, **_: self._fail_activities(parsed))
        self.deps = {}
        for region in (self.east, self.west):
            deps = region.deps()
            deps.clock = lambda: self.now
            self.deps[region.name] = deps
        self.events = CapacityEvents(
            EventSettings(deployment=DEPLOYMENT, region="us-east-1", table_name=self.east.settings.table_name,
                          groups={p: s.group_name for p, s in self.east.settings.pools.items()}),
            HealthStore(self.east.client("dynamodb"), self.east.settings.table_name, "us-east-1"),
            self.east.client("ec2"), self.east.client("autoscaling"),
            MetricsRecorder(DEPLOYMENT, "us-east-1", stream=io.StringIO()))
        self.router = self._router(self.east, self.west)
        self.runners = {(r, p): RecordingRunner() for r in CONFIGURED for p in ("cpu", "gpu")}
        self.agents = {(r.name, p): agent_for(r, p, self.runners[(r.name, p)], f"{r.name}-{p}")
                       for r in (self.east, self.west) for p in ("cpu", "gpu")}
        # As deployed (worker settings' peer_tables): a failed-over job is claimed in its origin's ledger.
        ledgers = {r.name: Ledger(r.client("dynamodb"), r.settings.table_name) for r in (self.east, self.west)}
        for agent in self.agents.values():
            agent.ledger_for = ledgers.__getitem__
        self.seen_instances: set[str] = set()
        self.east_gpu_health: list[dict[str, Any]] = []
        self.east_gpu_desired: list[int] = []

    def _record_send(self, params: dict[str, Any], **_: Any) -> None:
        self.sent_to[urlparse(params["QueueUrl"]).hostname.split(".")[1]] += 1

    def _hide_instances(self, parsed: dict[str, Any], group_name: str) -> None:
        if self.short:
            for group in parsed.get("AutoScalingGroups", []):
                if group["AutoScalingGroupName"] == group_name:
                    group["Instances"] = []

    def _fail_activities(self, parsed: dict[str, Any]) -> None:
        if self.short:
            parsed["Activities"] = [{"StatusCode": "Failed", "StatusMessage": ICE,
                                     "StartTime": datetime.fromtimestamp(self.now, tz=UTC)}]

    def _router(self, region: Region, other: Region) -> Router:
        dynamodb = region.client("dynamodb")
        state = ControllerState(dynamodb, region.settings.table_name, region.name)
        store = HealthStore(dynamodb, region.settings.table_name, region.name)
        return router_for(region, peers={other.name: other.settings.pools["gpu"].queue_url},
                          view=lambda settings: routing_view(state, store, settings.pool_instance_types, CONFIGURED,
                                                             self.now, 300.0))

    def submit(self, bodies: list[dict[str, Any]]) -> None:
        sqs = self.east.client("sqs")
        for body in bodies:
            sqs.send_message(QueueUrl=self.east.intake_url, MessageBody=json.dumps(body))
        assert drain_intake(self.east, self.router) == []

    def minute(self) -> None:
        self.now += 60
        if self.short:  # the group keeps failing: AWS sends one event per failed launch activity
            self.events.handle(launch_event(self.east.settings.pools["gpu"].group_name, at=self.now), self.now)
        for name in ("us-west-2", "us-east-1"):
            result = run_cycle(self.deps[name], {}, holder=f"{name}-rebalancer", remaining_ms=lambda: 50_000)
            assert result["status"] == "ok", result
        record = self.deps["us-east-1"].state.recent_decisions(1)[0]
        self.east_gpu_health.append(record["health"]["gpu"])
        self.east_gpu_desired.append(record["pools"]["gpu"]["desired"])
        if not self.short:
            self._report_launches()

    def _report_launches(self) -> None:
        """What EventBridge would deliver for each new instance in us-east-1's GPU group."""
        group = self.east.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.east.settings.pools["gpu"].group_name])["AutoScalingGroups"][0]
        for instance in group["Instances"]:
            if instance["InstanceId"] not in self.seen_instances:
                self.seen_instances.add(instance["InstanceId"])
                self.events.handle(launch_event(group["AutoScalingGroupName"], kind=LAUNCH_SUCCESSFUL,
                                                instance=instance["InstanceId"], at=self.now), self.now)

    def work(self) -> None:
        """Workers on every pool that has instances in service drain their queues."""
        for (name, pool), agent in self.agents.items():
            region = self.east if name == "us-east-1" else self.west
            group = region.client("autoscaling").describe_auto_scaling_groups(
                AutoScalingGroupNames=[region.settings.pools[pool].group_name])["AutoScalingGroups"][0]
            if not any(i["LifecycleState"] == "InService" for i in group["Instances"]):
                continue  # no instance, no worker
            while agent.poll_once(wait_seconds=0):
                pass

    def dead_letters(self) -> list[str]:
        return [i for region in (self.east, self.west) for pool in ("cpu", "gpu")
                for i in region.job_ids(pool, dead_letters=True)]

    def ran_on(self, job_id: str) -> list[tuple[str, str]]:
        return [key for key, runner in self.runners.items() if runner.runs[job_id]]


def jobs(prefix: str, count: int, now: float, **fields: Any) -> list[dict[str, Any]]:
    return [job_message(id=f"{prefix}-{i}", submitted_at=now, **fields) for i in range(count)]


def test_gpu_shortage_in_one_region_fails_over_and_returns_without_flapping():
    with mock_aws():
        world = World()
        world.minute()  # both regions publish their GPU summaries
        world.minute()
        # Queued on us-east-1's GPUs just before they go.
        world.submit(jobs("queued-gpu-only", 3, world.now, placement="gpu_only")
                     + jobs("queued-either", 3, world.now, placement="either", preference="gpu", deadline_seconds=900))

        for minute in range(2, 40):
            world.short = minute in SHORTAGE_MINUTES
            world.minute()
            if minute == 3:  # the router knows: new work arrives during the shortage
                world.submit(jobs("gpu-only", 4, world.now, placement="gpu_only")
                             + jobs("either", 4, world.now, placement="either", preference="gpu",
                                    deadline_seconds=900)
                             + jobs("cpu-only", 3, world.now, placement="cpu_only", preference="cpu")
                             + [job_message(id="pinned-east", placement="gpu_only", region="us-east-1",
                                            submitted_at=world.now)])
            if minute >= 8:  # after the shortage: steady GPU-only work
                world.submit(jobs(f"after-{minute}", 4, world.now, placement="gpu_only"))
            world.work()

        # During the shortage: GPU-only work finished in us-west-2; `either` work already queued on us-east-1's GPUs
        # finished on its CPUs (it meets its deadline there); new GPU-preferring work was not sent to the short
        # region but to the healthy one.
        for job_id in [f"queued-gpu-only-{i}" for i in range(3)] + [f"gpu-only-{i}" for i in range(4)]:
            assert world.ran_on(job_id) == [("us-west-2", "gpu")], job_id
        for i in range(3):
            assert world.ran_on(f"queued-either-{i}") == [("us-east-1", "cpu")]
        for i in range(4):
            assert world.ran_on(f"either-{i}") == [("us-west-2", "gpu")]
        for i in range(3):
            assert world.ran_on(f"cpu-only-{i}") == [("us-east-1", "cpu")]
        assert world.ran_on("pinned-east") == [("us-east-1", "gpu")], "a region pin waits for its region"
        assert set(world.sent_to) <= set(CONFIGURED), f"work went outside the configuration: {world.sent_to}"

        assert world.dead_letters() == [], "nothing was lost to a redrive while it waited for its region"

        # The shortage was seen within a cycle and left gradually, with no relapse.
        statuses = [h["status"] for h in world.east_gpu_health]
        assert statuses.index(SHORT) == SHORTAGE_MINUTES[0], statuses
        last_short = max(i for i, s in enumerate(statuses) if s == SHORT)
        recovery = world.east_gpu_health[last_short + 1:]
        ranks = [STATUS_RANK[h["status"]] for h in recovery]
        admits = [h["admit"] for h in recovery]
        assert ranks == sorted(ranks, reverse=True), f"status flapped on the way back: {statuses}"
        assert admits == sorted(admits), f"admitted share went down on the way back: {admits}"
        assert recovery[0]["status"] == PROBING and recovery[0]["admit"] < 1.0, "probed before it is trusted"
        assert recovery[-1]["status"] == "healthy" and recovery[-1]["admit"] == 1.0

        # Capacity came back with one probe instance first.
        desired = world.east_gpu_desired[last_short + 1:]
        assert next(d for d in desired if d > 0) == 1, f"the first launch after a shortage is one probe: {desired}"

        # GPU-only work went to us-west-2 while us-east-1 was short, and ran at home once it was not.
        where = {m: world.ran_on(f"after-{m}-0") for m in range(8, 40)}
        home = [m for m, ran in where.items() if ran == [("us-east-1", "gpu")]]
        away = [m for m, ran in where.items() if ran == [("us-west-2", "gpu")]]
        assert home and away and max(away) < min(home), where
