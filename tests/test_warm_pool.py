"""The GPU pool's optional warm pool: config rules, the warm lane's template, its boot gate, its sizing and its
simulation (docs/aws-rules.md, "Warm pools")."""

from __future__ import annotations

import json
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from crossfleet.config import ConfigError, parse_config
from crossfleet.sim.engine import Simulation
from crossfleet.sim.scenario import WARM_START_SECONDS, parse_scenario
from crossfleet_control.aws.fleets import AutoScalingFleets, WarmLane
from crossfleet_control.core.settings import Settings
from crossfleet_worker import warm_lane
from tests.cdk_helpers import SynthesizedApp, asg_for_pool, resources_of_type, tag_value
from tests.test_worker_install import render

ROOT = Path(__file__).resolve().parents[1]
WARM = {"regions": ["us-east-1"], "accelerator_cluster": {
    "spot": True, "max_size": 8, "warm_pool": {"size": 2, "max_prepared": 4}},
    "realtime": {"enabled": True, "certificate_arns": {
        "us-east-1": "arn:aws:acm:us-east-1:123456789012:certificate/0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"}}}
LANE = "crossfleet-dev-us-east-1-gpu-warm"
PREFIX = "crossfleet config: regions[0].accelerator_cluster.warm_pool"


# -- config: refused in one line wherever AWS (or a reservation's economics) would ---------------------------
@pytest.mark.parametrize(("cluster", "message"), [
    pytest.param({"instance_types": ["p5.48xlarge"], "fallback_instance_types": [], "availability_zone": "us-east-1a",
                  "capacity_block_id": "cr-0123456789abcdef0", "warm_pool": {"size": 2}},
                 f"{PREFIX} = {{'size': 2}} is not allowed: null with a capacity_block_id (a block's instances are "
                 "launched with market type capacity-block and end with the block; run them with min_size instead)",
                 id="capacity-block"),
    pytest.param({"instance_types": ["p5.48xlarge"], "fallback_instance_types": [], "availability_zone": "us-east-1a",
                  "capacity_reservation_id": "cr-0123456789abcdef0", "warm_pool": {"size": 2}},
                 f"{PREFIX} = {{'size': 2}} is not allowed: null with a capacity_reservation_id (the reservation is "
                 "paid whether its instances run or not; run them with min_size instead)", id="reservation"),
    pytest.param({"max_size": 8, "warm_pool": {"size": 4, "max_prepared": 2}},
                 f"{PREFIX}.max_prepared = 2 is not allowed: at least warm_pool.size (4): the lane's in-service plus "
                 "warm instances", id="max-prepared-below-size"),
    pytest.param({"max_size": 4, "warm_pool": {"size": 2, "max_prepared": 6}},
                 f"{PREFIX}.max_prepared = 6 is not allowed: at most accelerator_cluster.max_size (4): the lane is "
                 "part of the GPU pool", id="max-prepared-above-pool-max"),
    pytest.param({"warm_pool": {"size": 2, "state": "Hibernated"}},
                 f"{PREFIX}.state = 'Hibernated' is not allowed: Stopped (Running costs as much as an in-service "
                 "instance: raise min_size instead; Hibernated needs a hibernation-supported type with less than "
                 "150 GB of RAM)", id="hibernated"),
    pytest.param({"warm_pool": {"size": 2, "instance_type": "g6.xlarge"}},
                 f"{PREFIX}.instance_type = 'g6.xlarge' is not allowed: one of the group's types (p5.48xlarge, "
                 "p5en.48xlarge, g6e.12xlarge): the lane launches one of them only", id="type-not-in-group"),
    pytest.param({"warm_pool": {"size": 0}},
                 f"{PREFIX}.size = 0 is not allowed: a whole number at least 1 and at most 1000", id="empty-pool"),
    pytest.param({"warm_pool": {"min_size": 2}},
                 f"{PREFIX}.min_size = 2 is not allowed: unknown key; did you mean 'size'? known keys: size, "
                 "max_prepared, state, instance_type", id="misspelt-key"),
])
def test_a_warm_pool_aws_would_refuse_is_refused_in_one_line(cluster: dict[str, Any], message: str):
    with pytest.raises(ConfigError) as caught:
        parse_config({"regions": ["us-east-1"], "accelerator_cluster": cluster})
    assert str(caught.value) == message and "\n" not in message


def test_a_spot_main_group_keeps_its_warm_pool_because_the_lane_is_on_demand():
    config = parse_config({"regions": ["us-east-1"], "accelerator_cluster": {
        "spot": True, "warm_pool": {"size": 2, "instance_type": "g6e.12xlarge"}}})
    warm = config.regions[0].accelerator_cluster.warm_pool
    assert warm is not None and (warm.size, warm.max_prepared, warm.state, warm.instance_type) == \
        (2, 2, "Stopped", "g6e.12xlarge")
    assert parse_config({}).regions[0].accelerator_cluster.warm_pool is None, "off unless configured"


# -- the template: a separate On-Demand one-type lane carries the warm pool ----------------------------------
@pytest.fixture(scope="module")
def warm_app() -> SynthesizedApp:
    from tests.test_synth_matrix import MATRIX, synthesized

    assert MATRIX["warm-pool"] == WARM, "the synth matrix (cdk-nag, cfn-lint, checkov) covers this config"
    return synthesized("warm-pool")


def _groups(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["Properties"]["AutoScalingGroupName"]: g
            for g in resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup").values()}


def test_the_warm_pool_sits_on_a_one_type_on_demand_lane_not_on_the_mixed_spot_group(warm_app: SynthesizedApp):
    template = warm_app.template_json("us-east-1")
    groups = _groups(template)
    main, lane = asg_for_pool(template, "gpu"), groups[LANE]
    # The main group keeps its prioritized types and its Spot option ...
    distribution = main["Properties"]["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0
    # ... and the lane has what PutWarmPool requires: no mixed instances policy, no Spot request.
    assert "MixedInstancesPolicy" not in lane["Properties"]
    assert tag_value(lane, "crossfleet:pool") == "gpu" and tag_value(lane, "crossfleet:lane") == "warm"
    lane_template = template["Resources"][lane["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]]
    data = lane_template["Properties"]["LaunchTemplateData"]
    assert data["InstanceType"] == "p5.48xlarge" and "InstanceMarketOptions" not in data
    # A stopped instance needs an EBS root device (warm pools' Limitations); encrypted gp3 like every pool.
    root = data["BlockDeviceMappings"][0]["Ebs"]
    assert root["VolumeType"] == "gp3" and root["Encrypted"] is True
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert (lane["Properties"]["MinSize"], lane["Properties"]["MaxSize"]) == ("0", "4")
    pools = list(resources_of_type(template, "AWS::AutoScaling::WarmPool").values())
    assert len(pools) == 1
    assert pools[0]["Properties"] == {
        "AutoScalingGroupName": {"Ref": next(k for k, v in template["Resources"].items() if v is lane)},
        "MinSize": 2, "MaxGroupPreparedCapacity": 4, "PoolState": "Stopped",
        "InstanceReusePolicy": {"ReuseOnScaleIn": False}}


def test_no_warm_pool_no_lane(default_app: SynthesizedApp):
    template = default_app.template_json("us-east-1")
    assert not resources_of_type(template, "AWS::AutoScaling::WarmPool")
    assert not any(name.endswith("-warm") for name in _groups(template))


def test_the_lane_holds_instances_in_preparation_and_drains_them_on_scale_in(warm_app: SynthesizedApp):
    template = warm_app.template_json("us-east-1")
    hooks = {h["Properties"]["LifecycleHookName"]: h["Properties"]
             for h in resources_of_type(template, "AWS::AutoScaling::LifecycleHook").values()}
    prepare, drain = hooks[f"{LANE}-prepare"], hooks[f"{LANE}-drain"]
    assert prepare["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert prepare["DefaultResult"] == "ABANDON", "a preparation that never finished is not stopped into the pool"
    assert drain["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert drain["DefaultResult"] == "CONTINUE"


def _lane_user_data(template: dict[str, Any]) -> str:
    lane = _groups(template)[LANE]
    lane_template = template["Resources"][lane["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]]
    return render(lane_template["Properties"]["LaunchTemplateData"]["UserData"])


def test_the_lane_prepares_at_first_boot_and_starts_nothing_until_it_goes_in_service(warm_app: SynthesizedApp):
    script = _lane_user_data(warm_app.template_json("us-east-1"))
    lines = script.splitlines()
    assert "CROSSFLEET_WARM_LANE=1 bash /opt/crossfleet/worker/install.sh" in lines
    assert "bash /opt/crossfleet/worker/install.sh" not in lines, "the plain install starts the worker at once"
    assert not any("enable --now crossfleet-model-server" in line or "enable --now crossfleet-worker" in line
                   for line in lines)
    # The image is pulled onto the root volume now (what the warm pool keeps); the gate runs last.
    pulls = [i for i, line in enumerate(lines) if line.startswith("docker pull ")]
    assert pulls and lines[-1] == "systemctl enable --now crossfleet-warm-lane.service" and pulls[-1] < len(lines) - 1
    settings = json.loads(script.split("<<'CROSSFLEET_SETTINGS'\n", 1)[1].split("\nCROSSFLEET_SETTINGS", 1)[0])
    assert (settings["pool"], settings["group_name"], settings["lifecycle_hook"]) == ("gpu", LANE, f"{LANE}-drain")
    assert settings["queue_url"].startswith("<<Ref:WorkQueuesGpuJobs"), "the lane consumes the GPU queue"
    gate = json.loads(script.split("<<'CROSSFLEET_WARM_LANE'\n", 1)[1].split("\nCROSSFLEET_WARM_LANE", 1)[0])
    assert gate == {"region": "us-east-1", "group_name": LANE, "launch_hook": f"{LANE}-prepare",
                    "units": ["crossfleet-model-server.service", "crossfleet-worker.service"]}


def _statements(template: dict[str, Any], role_prefix: str) -> list[dict[str, Any]]:
    return [s for key, policy in resources_of_type(template, "AWS::IAM::Policy").items() if key.startswith(role_prefix)
            for s in policy["Properties"]["PolicyDocument"]["Statement"]]


def test_the_rebalancer_sizes_the_lane_and_may_not_switch_its_market(warm_app: SynthesizedApp):
    template = warm_app.template_json("us-east-1")
    statements = _statements(template, "RebalancerRole")
    sizing = next(s for s in statements if s.get("Sid") == "SizeOnlyThisDeploymentsGroups")
    assert any(f"autoScalingGroupName/{LANE}" in json.dumps(r) for r in sizing["Resource"])
    updates = [s for s in statements if s.get("Action") == "autoscaling:UpdateAutoScalingGroup"
               and s["Effect"] == "Allow"]
    assert updates and not any(LANE in json.dumps(s["Resource"]) for s in updates)
    function = next(f for f in resources_of_type(template, "AWS::Lambda::Function").values()
                    if "CROSSFLEET_SETTINGS" in f["Properties"].get("Environment", {}).get("Variables", {}))
    settings = json.loads(render(function["Properties"]["Environment"]["Variables"]["CROSSFLEET_SETTINGS"]))
    assert (settings["pools"]["gpu"]["warm_lane_group"], settings["pools"]["gpu"]["warm_lane_max"]) == (LANE, 4)
    assert "warm_lane_group" not in settings["pools"]["cpu"]


def test_lane_instances_complete_their_own_hooks_and_serve_behind_the_endpoint(warm_app: SynthesizedApp):
    template = warm_app.template_json("us-east-1")
    statements = _statements(template, "AcceleratorClusterInstanceRole")
    complete = next(s for s in statements if s.get("Sid") == "CompleteOwnScaleInHook")
    assert any(f"autoScalingGroupName/{LANE}" in json.dumps(r) for r in complete["Resource"])
    lane = _groups(template)[LANE]
    main = asg_for_pool(template, "gpu")
    assert lane["Properties"]["TargetGroupARNs"] == main["Properties"]["TargetGroupARNs"]


# -- the boot gate (worker/crossfleet_worker/warm_lane.py) ----------------------------------------------------
LANE_SETTINGS = warm_lane.LaneSettings(region="us-east-1", group_name=LANE, launch_hook=f"{LANE}-prepare",
                                       units=("crossfleet-model-server.service", "crossfleet-worker.service"))


def _boot(states: list[str | None], *, failing: str | None = None) -> tuple[str, list[list[str]]]:
    calls: list[list[str]] = []
    answers = iter(states)

    def read(path: str) -> str | None:
        return next(answers) if path == "autoscaling/target-lifecycle-state" else "i-0123456789abcdef0"

    def run(command: Any) -> int:
        calls.append(list(command))
        return 1 if failing and failing in command else 0

    return warm_lane.boot(LANE_SETTINGS, read, run, sleep=lambda _: None), calls


def test_an_instance_being_prepared_for_the_warm_pool_takes_no_jobs():
    outcome, calls = _boot([None, None, "Warmed:Stopped"])
    assert outcome == "prepared"
    assert not any(c[:2] == ["systemctl", "start"] for c in calls)
    assert calls == [["aws", "autoscaling", "complete-lifecycle-action", "--region", "us-east-1",
                      "--auto-scaling-group-name", LANE, "--lifecycle-hook-name", f"{LANE}-prepare",
                      "--instance-id", "i-0123456789abcdef0", "--lifecycle-action-result", "CONTINUE"]]


def test_a_start_from_the_warm_pool_starts_the_server_then_the_worker_then_completes_the_hook():
    outcome, calls = _boot(["InService"])
    assert outcome == "started"
    assert calls[:2] == [["systemctl", "start", "crossfleet-model-server.service"],
                         ["systemctl", "start", "crossfleet-worker.service"]]
    assert calls[2][:3] == ["aws", "autoscaling", "complete-lifecycle-action"] and len(calls) == 3


@pytest.mark.parametrize(("states", "failing"), [([None] * 60, None), (["Detached"], None),
                                                 (["InService"], "crossfleet-worker.service")])
def test_an_unknown_state_or_a_failed_start_holds_the_instance(states: list[str | None], failing: str | None):
    outcome, calls = _boot(states, failing=failing)
    assert outcome == "held"
    assert not any(c[:2] == ["aws", "autoscaling"] for c in calls), "the hook times out into ABANDON"


def test_job_isolation_is_reapplied_at_every_boot_before_the_worker():
    """A stop and start (every warm-pool instance) or a reboot empties nft/iptables: the worker must not run
    command jobs without the IMDS filter. Before the warm lane, install.sh applied it once, in memory."""
    worker = (ROOT / "worker" / "crossfleet-worker.service").read_text()
    isolation = (ROOT / "worker" / "crossfleet-job-isolation.service").read_text()
    installer = (ROOT / "worker" / "install.sh").read_text()
    assert "Requires=crossfleet-job-isolation.service" in worker
    assert re.search(r"^After=.*crossfleet-job-isolation\.service", worker, re.MULTILINE)
    assert "WantedBy=multi-user.target" in isolation and "Type=oneshot" in isolation
    assert "ExecStart=/usr/local/sbin/crossfleet-isolate-jobs" in isolation
    assert "systemctl enable --now crossfleet-job-isolation.service" in installer
    assert "nft -f" not in installer, "the rules live in the unit's script, not applied once by the installer"
    # Root runs a root-owned copy: /opt/crossfleet belongs to the unprivileged agent.
    assert "install -m 0755 -o root -g root /opt/crossfleet/worker/isolate-jobs.sh" in installer
    lane_unit = (ROOT / "worker" / "crossfleet-warm-lane.service").read_text()
    assert "ExecStart=/usr/bin/python3 /usr/local/lib/crossfleet/warm_lane.py" in lane_unit
    # In lane mode the installer returns before enabling the worker (the gate starts it).
    lane_branch = installer.split('if [ "${CROSSFLEET_WARM_LANE:-0}" = "1" ]; then', 1)[1].split("fi\n", 1)[0]
    assert "exit 0" in lane_branch and "crossfleet-worker" not in lane_branch.replace("crossfleet-warm-lane", "")


# -- the rebalancer fills the lane first (crossfleet_control.aws.fleets) --------------------------------------
@pytest.mark.parametrize(("desired", "split"), [(0, (0, 0)), (1, (1, 0)), (3, (1, 2)), (5, (1, 4)), (9, (5, 4))])
def test_the_lane_takes_the_instances_above_the_main_groups_minimum_first(desired: int, split: tuple[int, int]):
    assert WarmLane(LANE, max_size=4, main_min_size=1).split(desired) == split


class FakeAutoScaling:
    def __init__(self) -> None:
        self.desired: dict[str, int] = {}

    def describe_auto_scaling_groups(self, AutoScalingGroupNames: list[str]) -> dict[str, Any]:
        def group(name: str, desired: int, states: list[str]) -> dict[str, Any]:
            return {"AutoScalingGroupName": name, "DesiredCapacity": desired, "MinSize": 1, "MaxSize": 8,
                    "Instances": [{"LifecycleState": s} for s in states],
                    "Tags": [{"Key": "crossfleet:deployment", "Value": "crossfleet-dev"}]}
        assert LANE in AutoScalingGroupNames
        return {"AutoScalingGroups": [group("gpu", 2, ["InService", "InService"]),
                                      group(LANE, 3, ["InService", "Pending:Wait", "InService"])]}

    def describe_scaling_activities(self, AutoScalingGroupName: str, MaxRecords: int) -> dict[str, Any]:
        from datetime import datetime

        at = datetime.fromtimestamp(1000, tz=UTC)
        status = "Failed" if AutoScalingGroupName == LANE else "Successful"
        return {"Activities": [{"StartTime": at, "StatusCode": status,
                                "Description": "Launching a new EC2 instance: i-0"}]}

    def set_desired_capacity(self, AutoScalingGroupName: str, DesiredCapacity: int,
                             HonorCooldown: bool) -> None:
        self.desired[AutoScalingGroupName] = DesiredCapacity


def test_the_policy_sees_one_gpu_pool_and_its_desired_capacity_is_split_over_both_groups():
    client = FakeAutoScaling()
    fleets = AutoScalingFleets(client, {"gpu": "gpu"}, on_error=lambda *_: None,
                               lanes={"gpu": WarmLane(LANE, max_size=4, main_min_size=1)})
    seen = fleets.telemetry()["gpu"]
    assert (seen.desired, seen.in_service, seen.pending) == (5, 4, 1)
    fleets.set_desired("gpu", 7)
    assert client.desired == {LANE: 4, "gpu": 3}
    assert fleets.launch_activity("gpu", now=1100) == (1, 1), "the lane's launches and failures count for the pool"


def test_the_lambda_reads_the_lane_from_its_settings():
    raw = {"deployment": "d", "region": "us-east-1", "mode": "enforce", "table_name": "t", "schedule_seconds": 60,
           "lease_seconds": 60, "decision_ttl_seconds": 1, "policy": {},
           "pools": {"gpu": {"group_name": "g", "queue_url": "q", "dead_letter_url": "dl",
                             "instance_type": "g6e.xlarge", "vcpus": 4, "accelerators": 1, "min_size": 0, "max_size": 8,
                             "warm_lane_group": LANE, "warm_lane_max": 4}}}
    pool = Settings.from_json(json.dumps(raw)).pools["gpu"]
    assert (pool.warm_lane_group, pool.warm_lane_max) == (LANE, 4)


# -- the simulator: warm starts are quicker; stopped volumes and preparations are paid -----------------------
def _scenario(warm_pool: dict[str, Any] | None) -> dict[str, Any]:
    gpu: dict[str, Any] = {"instance_type": "g6e.xlarge", "min_size": 0, "max_size": 10, "start": 0}
    if warm_pool is not None:
        gpu["warm_pool"] = warm_pool
    return {"duration_seconds": 600, "drain_seconds": 0, "control_period_seconds": 60,
            "regions": {"us-east-1": {"cpu": {"instance_type": "m9g.16xlarge", "min_size": 0, "max_size": 1,
                                              "start": 0}, "gpu": gpu}},
            "workload": {"synthetic": []}}


class Launcher:
    """Asks for `want` GPU instances at the first control step; nothing else."""

    name = "launcher"

    def __init__(self, want: int) -> None:
        self.want = want

    def route(self, record: Any) -> str:
        return "gpu"

    def control(self, now: float, region: str, pools: dict[str, Any], sim: Simulation) -> None:
        if now == 60:
            sim.set_desired(pools["gpu"], self.want, now)


def test_launches_from_the_warm_pool_are_ready_sooner_up_to_its_size():
    sim = Simulation(parse_scenario(_scenario({"size": 2, "max_prepared": 3})), [], Launcher(5)).run()
    pool = sim.pools["us-east-1"]["gpu"]
    boots = sorted(i.ready_at - i.launched_at for i in pool.instances)
    cold = pool.profile.boot_seconds
    assert cold > WARM_START_SECONDS
    # Two stopped instances start; their replacements are still being prepared, so the rest boot cold.
    assert boots == [WARM_START_SECONDS] * 2 + [cold] * 3 and pool.warm_starts == 2
    plain = Simulation(parse_scenario(_scenario(None)), [], Launcher(5)).run().pools["us-east-1"]["gpu"]
    assert sorted(i.ready_at - i.launched_at for i in plain.instances) == [cold] * 5


def test_stopped_instances_cost_their_volumes_and_each_refill_costs_a_preparation():
    idle = Simulation(parse_scenario(_scenario({"size": 3})), [], Launcher(0)).run()
    pool = idle.pools["us-east-1"]["gpu"]
    gp3 = 0.08 * 200 / (30 * 86400)  # $/GB-month x GiB per second (crossfleet/sim/scenario.py)
    assert pool.cost_usd == pytest.approx(3 * 600 * gp3) and pool.cost_usd > 0
    used = Simulation(parse_scenario(_scenario({"size": 2})), [], Launcher(2)).run()
    warm, cold = used.pools["us-east-1"]["gpu"], Simulation(parse_scenario(_scenario(None)), [], Launcher(2)).run()
    price = warm.price_per_hour / 3600
    # Same two running instances (they start 23 s sooner but run to the end either way), plus two
    # preparations of replacements at the instance's price, plus the volumes.
    extra = warm.cost_usd - cold.pools["us-east-1"]["gpu"].cost_usd
    assert extra == pytest.approx(2 * warm.profile.boot_seconds * price + 2 * 540 * gp3 + 2 * 60 * gp3, rel=0.05)


@pytest.mark.parametrize(("pool", "warm", "message"), [
    ("cpu", {"size": 1}, "regions.us-east-1.cpu.warm_pool = {'size': 1} is not allowed: only on the gpu pool "
                         "(crossfleet deploys the warm lane for the GPU pool)"),
    ("gpu", {"size": 11}, "regions.us-east-1.gpu.warm_pool.size = 11 is not allowed: a whole number at least 1 "
                          "and at most 10"),
])
def test_scenario_warm_pools_follow_the_deployment_rules(pool: str, warm: dict[str, Any], message: str):
    raw = _scenario(None)
    raw["regions"]["us-east-1"][pool]["warm_pool"] = warm
    with pytest.raises(ConfigError) as caught:
        parse_scenario(raw)
    assert str(caught.value) == f"crossfleet config: {message}"


def test_a_spot_priced_pool_has_no_warm_lane_in_the_simulator():
    raw = _scenario({"size": 1})
    raw["regions"]["us-east-1"]["gpu"]["spot_fraction"] = 0.5
    with pytest.raises(ConfigError, match="warm lane is On-Demand"):
        parse_scenario(raw)


def test_the_shipped_warm_pool_scenario_is_steady_plus_the_pool_property_only():
    steady = json.loads((ROOT / "scenarios" / "steady.json").read_text())
    warm = json.loads((ROOT / "scenarios" / "steady-warm-pool.json").read_text())
    for region in warm["regions"].values():
        assert region["gpu"].pop("warm_pool") == {"size": 12}
    for key in ("name", "description"):
        warm.pop(key), steady.pop(key)
    assert warm == steady


def test_the_lanes_failed_launches_feed_the_gpu_pools_capacity_breakers(warm_app: SynthesizedApp):
    from crossfleet_control.core.capacity_signals import LAUNCH_UNSUCCESSFUL, EventSettings, interpret

    template = warm_app.template_json("us-east-1")
    rule = next(r for r in resources_of_type(template, "AWS::Events::Rule").values()
                if "aws.autoscaling" in json.dumps(r["Properties"].get("EventPattern", {})))
    assert LANE in rule["Properties"]["EventPattern"]["detail"]["AutoScalingGroupName"]
    settings = EventSettings(deployment="crossfleet-dev", region="us-east-1", table_name="t",
                             groups={"cpu": "c", "gpu": "g"}, lanes={LANE: "gpu"})
    assert (settings.pool_of(LANE), settings.pool_of("g"), settings.pool_of("other"), settings.pool_of(None)) == \
        ("gpu", "gpu", None, None)
    event = {"detail-type": LAUNCH_UNSUCCESSFUL, "time": "2026-01-01T00:00:00Z",
             "detail": {"AutoScalingGroupName": LANE, "StatusCode": "Failed",
                        "StatusMessage": "We currently do not have sufficient p5.48xlarge capacity in the "
                                         "Availability Zone you requested (us-east-1a). "
                                         "Launching EC2 instance failed."}}
    signals = interpret(event, settings, None, now=0.0)
    assert signals and all(s.offering.pool == "gpu" for s in signals)


def test_the_asset_carries_the_boot_units_and_the_gate_runs_on_the_standard_library_alone(
        default_app: SynthesizedApp, tmp_path: Path):
    import subprocess
    import sys

    out = Path(default_app.app.synth().directory)
    (staged,) = [d for d in out.glob("asset.*") if (d / "worker").is_dir()]
    for name in ("isolate-jobs.sh", "crossfleet-job-isolation.service", "crossfleet-warm-lane.service",
                 "crossfleet_worker/warm_lane.py"):
        assert (staged / "worker" / name).is_file(), name
    # Root runs the gate from a root-owned copy with no PYTHONPATH: standard library only (-S: no site-packages).
    gate = tmp_path / "warm_lane.py"
    gate.write_text((staged / "worker" / "crossfleet_worker" / "warm_lane.py").read_text())
    done = subprocess.run([sys.executable, "-S", "-c", f"import runpy; runpy.run_path({str(gate)!r}, run_name='t')"],
                          capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


def test_make_synths_summary_names_the_lane_and_its_type(warm_app: SynthesizedApp):
    from crossfleet.synth_summary import summarize

    lines = summarize(Path(warm_app.app.synth().directory))
    assert any("pool gpu (warm lane)" in line and "types=p5.48xlarge" in line and "max=4" in line for line in lines)
    assert any(line.strip().startswith("pool gpu ") and "p5en.48xlarge" in line for line in lines)


def test_launches_into_the_warm_pool_are_not_counted_as_launches_for_the_runaway_guard():
    """A warm lane refills its pool after every warm start: those preparations never show as in service or pending,
    so counting them would let refills trip the runaway guard (failure case 18) with nothing wrong."""
    from datetime import datetime

    class Refilling(FakeAutoScaling):
        def describe_scaling_activities(self, AutoScalingGroupName: str, MaxRecords: int) -> dict[str, Any]:
            at = datetime.fromtimestamp(1000, tz=UTC)
            if AutoScalingGroupName != LANE:
                return {"Activities": []}
            return {"Activities": [{"StartTime": at, "StatusCode": "Successful",
                                    "Description": f"Launching a new EC2 instance into warm pool: i-{n}"}
                                   for n in range(12)]
                    + [{"StartTime": at, "StatusCode": "Successful",
                        "Description": "Launching a new EC2 instance: i-in-service"}]}

    fleets = AutoScalingFleets(Refilling(), {"gpu": "gpu"}, on_error=lambda *_: None,
                               lanes={"gpu": WarmLane(LANE, max_size=4, main_min_size=1)})
    assert fleets.launch_activity("gpu", now=1100) == (0, 1)
