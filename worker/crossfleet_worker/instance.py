"""What the instance itself says: its id, a Spot interruption notice, a pending scale-in (IMDSv2)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

IMDS = "http://169.254.169.254"


@dataclass
class InstanceMetadata:
    """IMDSv2 only (the launch templates require it): a session token first, then each read with it."""

    base: str = IMDS
    timeout: float = 2.0
    _token: str | None = field(default=None, repr=False)

    def _get(self, path: str) -> str | None:
        if self._token is None:
            request = urllib.request.Request(f"{self.base}/latest/api/token", method="PUT",
                                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                self._token = response.read().decode()
        request = urllib.request.Request(f"{self.base}{path}", headers={"X-aws-ec2-metadata-token": self._token})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:
            if error.code == 404:  # no notice: the normal case
                return None
            if error.code == 401:  # token expired: fetch a new one next time
                self._token = None
            raise

    def instance_id(self) -> str:
        return self._get("/latest/meta-data/instance-id") or "unknown"

    def spot_interruption(self) -> bool:
        notice = self._get("/latest/meta-data/spot/instance-action")
        return bool(notice and json.loads(notice).get("action") in ("terminate", "stop", "hibernate"))

    def terminating(self) -> bool:
        """The Auto Scaling group has started this instance's termination (our lifecycle hook holds it)."""
        return self._get("/latest/meta-data/autoscaling/target-lifecycle-state") == "Terminated"
