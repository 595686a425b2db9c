"""The `network` section: the VPC every region's stack builds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.errors import ConfigError


@dataclass(frozen=True)
class NetworkConfig:
    cidr: str
    nat_gateways: int
    interface_endpoints: bool
    flow_log_retention_days: int
    # Where instances fetch model weights (through the S3 gateway endpoint, so no NAT is needed): s3://bucket/prefix/
    models_s3_uri: str | None = None

    @property
    def isolated(self) -> bool:
        """No NAT: instances reach only the VPC's endpoints (S3 and DynamoDB gateways, the interface endpoints)."""
        return self.nat_gateways == 0

    @property
    def models_bucket(self) -> str | None:
        return self.models_s3_uri[len("s3://"):].split("/", 1)[0] if self.models_s3_uri else None

    @property
    def models_prefix(self) -> str:
        return self.models_s3_uri[len("s3://"):].split("/", 1)[1] if self.models_s3_uri else ""


def parse_network(raw: Any) -> NetworkConfig:
    path = "network"
    s = p.section(raw, path, ("cidr", "nat_gateways", "interface_endpoints", "flow_log_retention_days",
                              "models_s3_uri"))
    cidr = s.get("cidr", "10.40.0.0/16")
    match = re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})/(\d{1,2})", str(cidr))
    if not isinstance(cidr, str) or not match or not 16 <= int(match.group(5)) <= 20 or any(
            int(octet) > 255 for octet in match.groups()[:4]):
        raise ConfigError(p.join(path, "cidr"), cidr, "an IPv4 CIDR block from /16 to /20, e.g. 10.40.0.0/16")
    retention = p.integer(s, path, "flow_log_retention_days", 30, minimum=1)
    allowed_retention = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 3653)
    if retention not in allowed_retention:
        raise ConfigError(p.join(path, "flow_log_retention_days"), retention,
                          f"a CloudWatch Logs retention: one of {', '.join(map(str, allowed_retention))}")
    models = s.get("models_s3_uri")
    if models is not None and not (isinstance(models, str) and re.fullmatch(
            r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([A-Za-z0-9!_.*'()-]+/)*", models)):
        raise ConfigError(p.join(path, "models_s3_uri"), models,
                          "an S3 prefix ending in /, e.g. s3://my-models/crossfleet/ (synced to /models at boot)")
    return NetworkConfig(
        cidr=cidr, models_s3_uri=models,
        nat_gateways=p.integer(s, path, "nat_gateways", 1, minimum=0, maximum=3),
        interface_endpoints=p.boolean(s, path, "interface_endpoints", True),
        flow_log_retention_days=retention,
    )
