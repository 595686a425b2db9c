"""crossfleet's configuration: one typed, immutable model, validated where it is created.

`parse_config(raw)` turns the JSON mapping from `cdk.json` (or a file named with `-c config=PATH`) into an
`AppConfig`, or raises `ConfigError` naming the key, the value and what is allowed. Every default
synthesizes. The reference of keys lives in docs/configuration.md. Each section parses in its own module
(network, fleets, control, worker, monitoring, realtime); this one holds the top level and the regions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.control import (
    QueueConfig,
    RebalancerConfig,
    StateConfig,
    parse_queues,
    parse_rebalancer,
    parse_state,
)
from crossfleet.config.errors import ConfigError
from crossfleet.config.fleets import (
    ACCELERATOR_KEYS,
    GRAVITON_KEYS,
    AcceleratorClusterConfig,
    GravitonFleetConfig,
    parse_accelerator_cluster,
    parse_graviton_fleet,
)
from crossfleet.config.monitoring import MonitoringConfig, parse_monitoring
from crossfleet.config.network import NetworkConfig, parse_network
from crossfleet.config.realtime import RealtimeConfig, parse_realtime
from crossfleet.config.worker import WorkerConfig, parse_worker

# Compute stays in US commercial regions (the kit's scope, and what the offerings table covers).
US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")

# Explicit AZs so that synth never needs an AZ lookup (and so credentials). AZ names map to different
# physical zones per account: set `availability_zones` per region for a real deployment.
# The zone letters each region's accounts can see (EC2 User Guide, "Regions and Zones": us-east-1 has six
# Availability Zones, us-east-2 three, us-west-1 three of which an account sees two, us-west-2 four). A letter
# past these (us-east-2z) is a typo, not a zone.
AZ_LETTERS = {"us-east-1": "abcdef", "us-east-2": "abc", "us-west-1": "abc", "us-west-2": "abcd"}
DEFAULT_AZS = {
    "us-east-1": ("us-east-1a", "us-east-1b", "us-east-1c"),
    "us-east-2": ("us-east-2a", "us-east-2b", "us-east-2c"),
    "us-west-1": ("us-west-1a", "us-west-1b"),
    "us-west-2": ("us-west-2a", "us-west-2b", "us-west-2c"),
}

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,19}$")


@dataclass(frozen=True)
class RegionConfig:
    region: str
    availability_zones: tuple[str, ...]
    graviton_fleet: GravitonFleetConfig
    accelerator_cluster: AcceleratorClusterConfig


@dataclass(frozen=True)
class AppConfig:
    name: str
    stage: str
    account: str | None
    regions: tuple[RegionConfig, ...]
    network: NetworkConfig
    queues: QueueConfig
    state: StateConfig
    rebalancer: RebalancerConfig
    worker: WorkerConfig
    monitoring: MonitoringConfig
    realtime: RealtimeConfig
    # A production stage: supply-chain pins are required (image digests, model revisions).
    production: bool = False

    @property
    def prefix(self) -> str:
        """Prefix of every stack and tag value, so dev and prod can share an account and region."""
        return f"{self.name}-{self.stage}"

    def stack_name(self, region: str) -> str:
        return f"{self.prefix}-{region}"


_TOP_KEYS = ("name", "stage", "account", "regions", "network", "graviton_fleet", "accelerator_cluster",
             "queues", "state", "rebalancer", "worker", "monitoring", "realtime", "production")
_REGION_KEYS = ("region", "availability_zones", "graviton_fleet", "accelerator_cluster")


def parse_config(raw: Mapping[str, Any] | None) -> AppConfig:
    top = p.section(raw, "", _TOP_KEYS)
    name = _name(top, "name", "crossfleet")
    stage = _name(top, "stage", "dev")
    account = top.get("account")
    if account is not None and not (isinstance(account, str) and re.fullmatch(r"\d{12}", account)):
        raise ConfigError("account", account, "a 12-digit AWS account id as a string, or null")

    network = parse_network(top.get("network"))
    graviton_defaults = p.section(top.get("graviton_fleet"), "graviton_fleet", GRAVITON_KEYS)
    accel_defaults = p.section(top.get("accelerator_cluster"), "accelerator_cluster", ACCELERATOR_KEYS)

    raw_regions = top.get("regions", ["us-east-1", "us-east-2", "us-west-2"])
    if not isinstance(raw_regions, list):
        raise ConfigError("regions", raw_regions, "a list of US regions or region objects")
    if not raw_regions:
        raise ConfigError("regions", raw_regions, f"at least one of {', '.join(US_REGIONS)}")
    regions: list[RegionConfig] = []
    for index, entry in enumerate(raw_regions):
        region = _region(entry, f"regions[{index}]", graviton_defaults, accel_defaults, account)
        if any(r.region == region.region for r in regions):
            raise ConfigError(f"regions[{index}]", region.region, "each region once (it is listed twice)")
        regions.append(region)

    production = p.boolean(top, "", "production", False)
    realtime = parse_realtime(top.get("realtime"), tuple(r.region for r in regions), account, production=production)
    if realtime.enabled and network.isolated:
        for key, server in (("cpu_server", realtime.cpu_server), ("gpu_server", realtime.gpu_server)):
            if not server.model.startswith("/"):
                raise ConfigError(f"realtime.{key}.model", server.model, "a local path under /models, because "
                                  "network.nat_gateways is 0 (no route to a model hub; see network.models_s3_uri)")
    if realtime.enabled:
        for index, region in enumerate(regions):
            if region.accelerator_cluster.kind != "nvidia":
                raise ConfigError(f"regions[{index}].accelerator_cluster.kind", region.accelerator_cluster.kind,
                                  "nvidia while realtime is enabled (the GPU model server is vLLM on CUDA)")
    config = AppConfig(
        name=name, stage=stage, account=account, regions=tuple(regions), network=network,
        queues=parse_queues(top.get("queues")), state=parse_state(top.get("state")),
        rebalancer=parse_rebalancer(top.get("rebalancer")),
        worker=parse_worker(top.get("worker")),
        monitoring=parse_monitoring(top.get("monitoring")),
        realtime=realtime, production=production,
    )
    _cross_check(config)
    return config


def _cross_check(config: AppConfig) -> None:
    """Pairs of settings that are each valid alone but lose or repeat jobs together."""
    queues, worker = config.queues, config.worker
    if worker.heartbeat_seconds * 3 > queues.visibility_timeout_seconds:
        # A job's claim is its message's visibility: renewing less often than three times a lease lets one or two
        # failed renewals lapse it mid-run, and another worker then takes the job (docs/job-lifecycle.md).
        raise ConfigError("worker.heartbeat_seconds", worker.heartbeat_seconds,
                          f"at most a third of queues.visibility_timeout_seconds "
                          f"({queues.visibility_timeout_seconds} s), so a run renews its lease at least 3 times a "
                          f"lease: at most {queues.visibility_timeout_seconds // 3}")
    if queues.max_receive_count < worker.max_attempts + 2:
        # Each attempt is a receive, and so is a delivery that finds the job claimed elsewhere or one the
        # rebalancer samples: with fewer receives than attempts plus two, SQS's own redrive dead-letters a job
        # before its attempts are spent.
        raise ConfigError("queues.max_receive_count", queues.max_receive_count,
                          f"at least worker.max_attempts + 2 ({worker.max_attempts + 2}), so SQS's redrive never "
                          "ends a job before its attempts do")
    if worker.drain_seconds < 60:
        # The drain is the lifecycle hook's timeout less 30 s kept for the requeue and the completion call.
        raise ConfigError("worker.drain_seconds", worker.drain_seconds,
                          "at least 60: the scale-in hook's timeout, of which 30 s are kept to requeue and complete")


def _name(raw: Mapping[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ConfigError(key, value, "2-20 characters: lowercase letters, digits and '-', starting with a letter")
    return value


def _region(entry: Any, path: str, graviton_defaults: Mapping[str, Any],
            accel_defaults: Mapping[str, Any], account: str | None = None) -> RegionConfig:
    if isinstance(entry, str):
        entry = {"region": entry}
    s = p.section(entry, path, _REGION_KEYS)
    region = s.get("region")
    if region not in US_REGIONS:
        raise ConfigError(p.join(path, "region"), region,
                          f"a US region: one of {', '.join(US_REGIONS)} (crossfleet keeps compute in US regions)")
    if account is not None and "availability_zones" not in s:
        # EC2 documentation on AZ IDs: a name like us-west-1a maps to a different physical zone in each
        # account (AZ IDs are the same across accounts), and some accounts have no us-west-1a. The defaults are
        # for synth without an account; a deployment to a named account states its own names.
        raise ConfigError(p.join(path, "availability_zones"), None,
                          f"your account's AZ names in {region} (aws ec2 describe-availability-zones --region "
                          f"{region}), required when account is set: AZ names map to different zones in each "
                          f"account and not every account has {DEFAULT_AZS[region][0]}")
    azs = p.string_list(s, path, "availability_zones", DEFAULT_AZS[region])
    for i, az in enumerate(azs):
        if not re.fullmatch(re.escape(region) + f"[{AZ_LETTERS[region]}]", az):
            raise ConfigError(p.join(p.join(path, "availability_zones"), i), az,
                              f"an availability zone of {region}: {region}{AZ_LETTERS[region][0]} to "
                              f"{region}{AZ_LETTERS[region][-1]}")
    # A region may override any fleet key; the rest comes from the top-level section.
    graviton_raw = {**graviton_defaults, **p.section(s.get("graviton_fleet"), p.join(path, "graviton_fleet"),
                                                      GRAVITON_KEYS)}
    accel_raw = {**accel_defaults, **p.section(s.get("accelerator_cluster"), p.join(path, "accelerator_cluster"),
                                                ACCELERATOR_KEYS)}
    return RegionConfig(
        region=region,
        availability_zones=azs,
        graviton_fleet=parse_graviton_fleet(graviton_raw, p.join(path, "graviton_fleet"), region),
        accelerator_cluster=parse_accelerator_cluster(accel_raw, p.join(path, "accelerator_cluster"), region,
                                                      azs),
    )
