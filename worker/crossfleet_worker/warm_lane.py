"""Every boot of a warm-lane instance: start the worker only when Auto Scaling is putting the instance in service.

A warm pool instance boots twice in two different roles (EC2 Auto Scaling User Guide, "Warm pools for Amazon EC2
Auto Scaling" and "Retrieve the target lifecycle state through instance metadata"):
- its first boot prepares it for the pool (target lifecycle state Warmed:Stopped): user data has pulled the
  agent, the model server's image and the weights; nothing may take jobs, because Auto Scaling stops the
  instance as soon as the launch hook completes, and a job taken now would be cut off by the stop;
- a later start from Warmed:Stopped puts it in service (target state InService): the worker starts now.
A launch straight into the lane (the pool is empty) has target state InService on its first boot.

Either way the launch lifecycle hook is completed with CONTINUE once the instance is ready for where it goes.

Runs as root (systemctl), so it is installed root-owned outside the agent's directory and uses the standard
library and the AWS CLI only: nothing the unprivileged agent could rewrite is executed as root.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMDS = "http://169.254.169.254"
WARMED_PREFIX = "Warmed:"


@dataclass(frozen=True)
class LaneSettings:
    region: str
    group_name: str
    launch_hook: str
    units: tuple[str, ...]  # started in order when going InService (model server before the worker)

    @classmethod
    def from_json(cls, text: str) -> LaneSettings:
        raw = json.loads(text)
        return cls(region=raw["region"], group_name=raw["group_name"], launch_hook=raw["launch_hook"],
                   units=tuple(raw["units"]))


def imds_reader(base: str = IMDS, timeout: float = 2.0) -> Callable[[str], str | None]:
    """IMDSv2 reads (the launch templates require v2): a token, then each path with it; None for a 404."""
    token: list[str] = []

    def read(path: str) -> str | None:
        if not token:
            request = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                token.append(response.read().decode())
        request = urllib.request.Request(f"{base}/latest/meta-data/{path}",
                                         headers={"X-aws-ec2-metadata-token": token[0]})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
    return read


def target_state(read: Callable[[str], str | None], *, attempts: int = 60, wait_seconds: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The target lifecycle state, waited for: it may not be published yet this early in the boot."""
    for attempt in range(attempts):
        try:
            state = read("autoscaling/target-lifecycle-state")
        except (OSError, urllib.error.URLError):
            state = None
        if state:
            return state.strip()
        if attempt + 1 < attempts:
            sleep(wait_seconds)
    return None


def boot(settings: LaneSettings, read: Callable[[str], str | None],
         run: Callable[[Sequence[str]], int], *, sleep: Callable[[float], None] = time.sleep) -> str:
    """What this boot does; returns what it did ("prepared", "started" or "held")."""
    state = target_state(read, sleep=sleep)
    if state is not None and state.startswith(WARMED_PREFIX):
        # Being prepared for the warm pool (or returned to it): the worker stays stopped.
        outcome = "prepared"
    elif state == "InService":
        for unit in settings.units:
            if run(["systemctl", "start", unit]) != 0:
                # Not ready: leave the hook open; its timeout ABANDONs the instance and Auto Scaling replaces it.
                print(f"crossfleet warm lane: {unit} did not start; launch hook left to time out", file=sys.stderr)
                return "held"
        outcome = "started"
    else:
        # Unknown or unreadable: taking jobs could be wrong, completing could put an unready instance in service.
        print(f"crossfleet warm lane: target lifecycle state {state!r}; worker not started", file=sys.stderr)
        return "held"
    instance_id = read("instance-id") or ""
    code = run(["aws", "autoscaling", "complete-lifecycle-action", "--region", settings.region,
                "--auto-scaling-group-name", settings.group_name, "--lifecycle-hook-name", settings.launch_hook,
                "--instance-id", instance_id, "--lifecycle-action-result", "CONTINUE"])
    if code != 0:
        # No action pending (already completed or timed out): nothing is waiting on this instance.
        print("crossfleet warm lane: no launch lifecycle action to complete", file=sys.stderr)
    return outcome


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    settings = LaneSettings.from_json(Path(argv[0] if argv else "/etc/crossfleet/warm-lane.json").read_text())
    outcome = boot(settings, imds_reader(), lambda command: subprocess.run(list(command), check=False).returncode)
    print(f"crossfleet warm lane: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
