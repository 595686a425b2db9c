"""EC2 and Auto Scaling adapter for the capacity-events function: one instance's facts, and a group drained
through its termination lifecycle hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crossfleet_control.aws import logs
from crossfleet_control.core.capacity_signals import GROUP_TAG, InstanceFacts

# Instances that still hold (or are about to hold) work; anything else is already leaving.
_DRAINABLE = ("InService", "Pending", "Pending:Wait", "Pending:Proceed")


@dataclass
class InstanceLookup:
    ec2: Any
    autoscaling: Any

    def facts(self, instance_id: str) -> InstanceFacts | None:
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except Exception as error:  # gone already, or not ours to see: no facts, no signal
            logs.warning("no facts for the event's instance: no signal", instance_id=instance_id, error=str(error))
            return None
        for reservation in reservations:
            for instance in reservation.get("Instances", []):
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                return InstanceFacts(instance_type=instance["InstanceType"],
                                     market="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
                                     group_name=tags.get(GROUP_TAG))
        return None

    def drain_group(self, group: str) -> int:
        """Terminate every live instance of the group with desired capacity decremented: the termination hook
        lets each worker finish or requeue its jobs first."""
        instances = self.autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[group])["AutoScalingGroups"][0].get("Instances", [])
        drained = 0
        for instance in instances:
            if instance.get("LifecycleState") not in _DRAINABLE:
                continue
            try:
                self.autoscaling.terminate_instance_in_auto_scaling_group(
                    InstanceId=instance["InstanceId"], ShouldDecrementDesiredCapacity=True)
                drained += 1
            except Exception as error:  # already terminating is fine: the hook is running for it
                logs.warning("drain: terminate refused", instance_id=instance["InstanceId"], error=str(error))
        return drained
