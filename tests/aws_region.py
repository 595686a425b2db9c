"""A crossfleet region built in moto the way the stacks build it: work queues with DLQs, the state table
(same keys and TTL attribute), and two tagged Auto Scaling groups, plus the rebalancer's settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs.models import sqs_backends

from crossfleet.config import parse_config
from crossfleet.config.offerings import offerings
from crossfleet_control.core.policy_types import PolicySettings
from crossfleet_control.core.settings import PoolSettings, Settings
from crossfleet_control.core.table_schema import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE
from crossfleet_control.handlers.rebalancer import build_dependencies
from crossfleet_control.orchestration.dependencies import Dependencies

DEPLOYMENT = "crossfleet-test"


@dataclass
class Region:
    name: str
    session: boto3.session.Session
    settings: Settings
    queue_names: dict[str, str]
    dlq_names: dict[str, str]
    intake_url: str = ""
    rejects_url: str = ""
    results_bucket: str = ""

    def client(self, service: str) -> Any:
        return self.session.client(service)

    def deps(self, mode: str | None = None, **policy: Any) -> Dependencies:
        settings = self.settings
        if mode or policy:
            settings = Settings(**{**settings.__dict__, "mode": mode or settings.mode,
                                   "policy": PolicySettings(**{**settings.policy.__dict__, **policy})})
        return build_dependencies(settings, session=self.session)

    def send(self, pool: str, bodies: list[dict[str, Any] | str]) -> None:
        sqs = self.client("sqs")
        url = self.settings.pools[pool].queue_url
        for start in range(0, len(bodies), 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": b if isinstance(b, str) else json.dumps(b)}
                for i, b in enumerate(bodies[start:start + 10])])

    def job_ids(self, pool: str, *, dead_letters: bool = False) -> list[str]:
        """Every job id in a queue, visible or not (read from moto's backend, so nothing is disturbed)."""
        name = (self.dlq_names if dead_letters else self.queue_names)[pool]
        queue = sqs_backends[DEFAULT_ACCOUNT_ID][self.name].queues[name]
        ids = []
        for message in queue._messages:
            body = json.loads(message.body) if message.body.startswith("{") else {}
            inner = body.get("body", "{}") if isinstance(body.get("body"), str) else "{}"
            ids.append(body.get("id") or body.get("job_id")
                       or (json.loads(inner).get("id") if inner.startswith("{") else None))
        return [i for i in ids if i]

    def dead_letter_bodies(self, pool: str) -> list[dict[str, Any]]:
        queue = sqs_backends[DEFAULT_ACCOUNT_ID][self.name].queues[self.dlq_names[pool]]
        return [json.loads(m.body) for m in queue._messages]

    def reset_visibility(self) -> None:
        """Make held messages visible again, as time passing would."""
        for name in (*self.queue_names.values(), *self.dlq_names.values()):
            for message in sqs_backends[DEFAULT_ACCOUNT_ID][self.name].queues[name]._messages:
                message.change_visibility(0) if hasattr(message, "change_visibility") else None
                message.visible_at = 0

    def desired(self, pool: str) -> int:
        group = self.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.settings.pools[pool].group_name])["AutoScalingGroups"][0]
        return group["DesiredCapacity"]


def build_region(name: str = "us-east-1", *, cpu_desired: int = 1, gpu_desired: int = 0,
                 cpu_max: int = 20, gpu_max: int = 4, raw_config: dict[str, Any] | None = None) -> Region:
    """Call inside `mock_aws()`."""
    config = parse_config(raw_config or {"regions": [name]})
    region_config = next(r for r in config.regions if r.region == name)
    session = boto3.session.Session(region_name=name)
    sqs, dynamodb = session.client("sqs"), session.client("dynamodb")
    ec2, autoscaling = session.client("ec2"), session.client("autoscaling")

    dynamodb.create_table(
        TableName=f"{DEPLOYMENT}-state", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": PARTITION_KEY, "AttributeType": "S"},
                              {"AttributeName": SORT_KEY, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
                   {"AttributeName": SORT_KEY, "KeyType": "RANGE"}])
    dynamodb.update_time_to_live(TableName=f"{DEPLOYMENT}-state", TimeToLiveSpecification={
        "Enabled": True, "AttributeName": TTL_ATTRIBUTE})

    pools: dict[str, PoolSettings] = {}
    queue_names, dlq_names = {}, {}
    fleets = {"cpu": (region_config.graviton_fleet, cpu_desired, cpu_max),
              "gpu": (region_config.accelerator_cluster, gpu_desired, gpu_max)}
    for pool, (fleet, desired, max_size) in fleets.items():
        dlq_names[pool] = f"{DEPLOYMENT}-{pool}-dlq"
        queue_names[pool] = f"{DEPLOYMENT}-{pool}-jobs"
        dlq_url = sqs.create_queue(QueueName=dlq_names[pool])["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue_url = sqs.create_queue(QueueName=queue_names[pool], Attributes={
            "VisibilityTimeout": str(config.queues.visibility_timeout_seconds),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": config.queues.max_receive_count})})["QueueUrl"]
        instance_type = fleet.instance_types[0]
        template = f"{DEPLOYMENT}-{pool}"
        ec2.create_launch_template(LaunchTemplateName=template, LaunchTemplateData={
            "ImageId": "ami-12c6146b", "InstanceType": instance_type,
            "MetadataOptions": {"HttpTokens": "required"}})
        group_name = f"{DEPLOYMENT}-{name}-{pool}"
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group_name, LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinSize=fleet.min_size, MaxSize=max_size, DesiredCapacity=desired, AvailabilityZones=[f"{name}a"],
            Tags=[{"Key": "crossfleet:deployment", "Value": DEPLOYMENT, "PropagateAtLaunch": True,
                   "ResourceId": group_name, "ResourceType": "auto-scaling-group"},
                  {"Key": "crossfleet:pool", "Value": pool, "PropagateAtLaunch": True,
                   "ResourceId": group_name, "ResourceType": "auto-scaling-group"}])
        info = offerings()[instance_type]
        pools[pool] = PoolSettings(group_name=group_name, queue_url=queue_url, dead_letter_url=dlq_url,
                                   instance_type=instance_type, vcpus=info.vcpus,
                                   accelerators=info.accelerator_count, min_size=fleet.min_size,
                                   max_size=max_size)
    settings = Settings(deployment=DEPLOYMENT, region=name, mode="enforce", table_name=f"{DEPLOYMENT}-state",
                        schedule_seconds=60, lease_seconds=55, decision_ttl_seconds=86400, pools=pools,
                        policy=PolicySettings(target_wait_seconds=120, scale_in_delay_seconds=600,
                                              max_scale_up_step=10, max_scale_in_step=2, move_budget=200),
                        max_receive_count=config.queues.max_receive_count)
    intake_url = sqs.create_queue(QueueName=f"{DEPLOYMENT}-{name}-intake")["QueueUrl"]
    rejects_url = sqs.create_queue(QueueName=f"{DEPLOYMENT}-{name}-rejects")["QueueUrl"]
    bucket = f"{DEPLOYMENT}-{name}-results"
    s3 = session.client("s3")
    if name == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": name})
    queue_names["rejects"] = f"{DEPLOYMENT}-{name}-rejects"
    queue_names["intake"] = f"{DEPLOYMENT}-{name}-intake"
    return Region(name=name, session=session, settings=settings, queue_names=queue_names, dlq_names=dlq_names,
                  intake_url=intake_url, rejects_url=rejects_url, results_bucket=bucket)


class LambdaContext:
    """What the Lambda runtime hands a handler: its request id and the time it has left."""

    def __init__(self, request_id: str, remaining_ms: int = 50_000) -> None:
        self.aws_request_id, self._remaining = request_id, remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining


def rebalancer_environment(settings: Settings) -> str:
    """CROSSFLEET_SETTINGS as the Rebalancer construct writes it for the deployed function."""
    return json.dumps({**settings.__dict__, "pools": {p: s.__dict__ for p, s in settings.pools.items()},
                       "policy": settings.policy.__dict__})
