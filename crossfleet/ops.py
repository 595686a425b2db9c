"""Operator actions on a live deployment: read state, explain decisions, plan, freeze, pin and drain pools.

Everything is found from the region stack's outputs, so the commands need only the stack name (by default
NAME-STAGE-REGION from cdk.json) and credentials for the account.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from botocore.exceptions import ClientError

from crossfleet_control.aws.controller_state import ControllerState
from crossfleet_control.core.serving import split


class DeploymentMissing(LookupError):
    """The region has no crossfleet stack by that name (not deployed, wrong stage or account)."""


@dataclass
class RegionView:
    region: str
    stack_name: str
    outputs: dict[str, str]
    session: Any
    endpoint_url: str | None

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint_url)

    @cached_property
    def state(self) -> ControllerState:
        return ControllerState(self.client("dynamodb"), self.outputs["StateTableName"], self.region)

    @cached_property
    def settings(self) -> Any:
        """The rebalancer's settings as deployed (read once from its Lambda's environment)."""
        from crossfleet_control.core.settings import Settings

        configuration = self.client("lambda").get_function_configuration(
            FunctionName=self.outputs["RebalancerFunctionName"])
        return Settings.from_json(configuration["Environment"]["Variables"]["CROSSFLEET_SETTINGS"])


def region_view(session: Any, region: str, stack_name: str, endpoint_url: str | None = None) -> RegionView:
    client = session.client("cloudformation", region_name=region, endpoint_url=endpoint_url)
    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            raise DeploymentMissing(f"no stack {stack_name} in {region}: deploy it first (cdk deploy), or pass "
                                    "--stack") from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if "StateTableName" not in outputs:
        raise DeploymentMissing(f"stack {stack_name} in {region} is not a crossfleet region stack")
    import boto3

    return RegionView(region=region, stack_name=stack_name, outputs=outputs,
                      session=boto3.session.Session(region_name=region), endpoint_url=endpoint_url)


def status(view: RegionView) -> list[dict[str, Any]]:
    """Live state per pool: group sizes, queue depth, operator overrides, the last decision's reason."""
    settings = view.settings
    names = {settings.pools[p].group_name: p for p in settings.pools}
    groups = view.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=list(names))
    by_pool = {names[g["AutoScalingGroupName"]]: g for g in groups["AutoScalingGroups"]}
    _, overrides = view.state.load_controls()
    last = view.state.recent_decisions(1)
    sqs = view.client("sqs")
    rows = []
    for pool, pool_settings in settings.pools.items():
        group = by_pool.get(pool, {})
        attributes = sqs.get_queue_attributes(QueueUrl=pool_settings.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        override = overrides.get(pool)
        states = [i.get("LifecycleState", "") for i in group.get("Instances", [])]
        rows.append({
            "region": view.region, "pool": pool, "instance_type": pool_settings.instance_type,
            "desired": group.get("DesiredCapacity"), "in_service": sum(s == "InService" for s in states),
            "pending": sum(s.startswith("Pending") for s in states), "min": group.get("MinSize"),
            "max": group.get("MaxSize"), "queued": int(attributes["ApproximateNumberOfMessages"]),
            "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
            "override": ("frozen" if override and override.frozen else
                         f"pinned {override.pinned_desired}" if override and override.pinned_desired is not None
                         else ""),
            "capacity": _capacity(last[0].get("health", {}).get(pool)) if last else "",
            "traffic": _traffic(last[0].get("endpoint"), pool) if last else "",
            "last_reason": last[0]["pools"][pool]["reason"] if last and pool in last[0]["pools"] else "",
        })
    return rows


def _traffic(endpoint: dict[str, Any] | None, pool: str) -> str:
    """The pool's share of the real-time endpoint's requests, as last set ("" without an endpoint)."""
    if not endpoint or endpoint.get("gpu_weight") is None:
        return ""
    return f"{split(int(endpoint['gpu_weight']))[pool]}%"


def _capacity(health: dict[str, Any] | None) -> str:
    """The pool's capacity health as the rebalancer last saw it: `healthy`, or e.g. `probing 25%`."""
    if not health:
        return ""
    admit = float(health.get("admit", 1.0))
    return health["status"] + (f" {admit:.0%}" if admit < 1.0 else "")


def plan(view: RegionView) -> dict[str, Any]:
    from crossfleet_control.handlers.rebalancer import build_dependencies
    from crossfleet_control.orchestration.rebalance_cycle import plan as plan_cycle

    return plan_cycle(build_dependencies(view.settings, session=EndpointSession(view.session, view.endpoint_url)))


class EndpointSession:
    """A session whose clients all go to one endpoint (a real account's when None, or an emulator's): what the
    handlers' builders take, so the CLI and the local playground run them against a chosen endpoint."""

    def __init__(self, session: Any, endpoint_url: str | None) -> None:
        self._session, self._endpoint_url = session, endpoint_url

    def client(self, service: str, **kwargs: Any) -> Any:
        return self._session.client(service, endpoint_url=self._endpoint_url, **kwargs)


ENDPOINT = "endpoint"  # `freeze endpoint` holds the real-time split; `pin endpoint N` sets the GPU share (%)


def pin_range(view: RegionView, pool: str) -> tuple[int, int]:
    """What `pin` accepts: the GPU share in % for the endpoint, the group's configured min..max for a pool (the
    policy would clamp anything else, so accepting it would silently pin something else)."""
    if pool == ENDPOINT:
        return 0, 100
    pool_settings = view.settings.pools[pool]
    return pool_settings.min_size, pool_settings.max_size


def check_pool(view: RegionView, pool: str, command: str = "") -> None:
    pools = list(view.settings.pools)
    if view.settings.endpoint is not None:
        pools.append(ENDPOINT)
    if pool not in pools:
        raise ValueError(f"pool {pool!r}: one of {', '.join(pools)}")
    if pool == ENDPOINT and command == "drain":
        raise ValueError("drain takes a pool; pin the endpoint at 0 or 100 instead")
