"""The real-time inference path: one internal HTTPS endpoint in front of both pools' model servers.

An internal Application Load Balancer (TLS at the listener, access logs to S3) with two listener rules, a target
group per pool, each bound to its pool's Auto Scaling group (so the instances the rebalancer sizes are the targets):

- priority 10, requests with `x-crossfleet-size: short` (a prompt Graviton prefills within the TTFT limit; the
  client sets the header): a weighted forward that splits them between the pools. The rebalancer owns these
  weights after deployment (the template's are the starting split).
- priority 20, every other request (long prompts, unlabelled requests): the GPU target group alone.

The load balancer routes only on what it sees (paths, headers, weights), so the prompt's size reaches it as the
client's label; a client that does not label is served by the GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from crossfleet.config.realtime import ModelServerConfig, RealtimeConfig
from crossfleet_control.core.serving import SHORT, SIZE_HEADER

HTTPS_PORT = 443
RULE_PRIORITY = 10
GPU_RULE_PRIORITY = 20
# How long a generation may stream: the listener's idle timeout, and each pool's deregistration delay (capped in
# a Capacity Block group by the block's window: crossfleet.config.fleets.CAPACITY_BLOCK_DRAIN_SECONDS).
STREAM_SECONDS = 900


class RealtimeEndpoint(Construct):
    config: RealtimeConfig
    load_balancer: elbv2.ApplicationLoadBalancer
    listener: elbv2.ApplicationListener
    rule: elbv2.ApplicationListenerRule  # the weighted rule for short requests (the rebalancer's)
    gpu_rule: elbv2.ApplicationListenerRule  # everything else: GPUs only
    target_groups: dict[str, elbv2.ApplicationTargetGroup]
    access_logs: s3.Bucket

    def __init__(self, scope: Construct, id_: str, *, config: RealtimeConfig, certificate_arn: str, vpc: ec2.IVpc,
                 subnets: ec2.SubnetSelection, groups: Mapping[str, autoscaling.AutoScalingGroup],
                 instance_security_groups: Mapping[str, ec2.ISecurityGroup],
                 servers: Mapping[str, ModelServerConfig], retain_on_delete: bool,
                 server_access_logs: s3.IBucket, vpc_cidr: str,
                 deregistration_seconds: Mapping[str, int] | None = None,
                 extra_groups: Mapping[str, list[autoscaling.AutoScalingGroup]] | None = None) -> None:
        """`extra_groups`: more groups serving a pool (the GPU pool's warm lane), attached to its target group."""
        super().__init__(scope, id_)
        self.config = config
        deregistration_seconds = deregistration_seconds or {pool: STREAM_SECONDS for pool in servers}
        # ALB access logs are delivered only to SSE-S3 buckets (not KMS).
        self.access_logs = s3.Bucket(
            self, "AccessLogs", encryption=s3.BucketEncryption.S3_MANAGED, enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            removal_policy=RemovalPolicy.RETAIN if retain_on_delete else RemovalPolicy.DESTROY,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED, versioned=True,
            server_access_logs_bucket=server_access_logs, server_access_logs_prefix="endpoint-logs/",
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90),
                                              noncurrent_version_expiration=Duration.days(30))])

        security_group = ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
                                           description="crossfleet real-time endpoint: HTTPS from allowed clients")
        # The configured CIDR as a literal (not the VPC's token) so the rule can be checked at synth.
        clients = config.allowed_cidrs or (vpc_cidr,)
        for cidr in clients:
            security_group.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(HTTPS_PORT), "HTTPS clients")

        self.load_balancer = elbv2.ApplicationLoadBalancer(
            self, "LoadBalancer", vpc=vpc, vpc_subnets=subnets, internet_facing=False,
            security_group=security_group, drop_invalid_header_fields=True,
            # Like the stateful resources: protected unless the config says this deployment is disposable.
            deletion_protection=retain_on_delete,
            # Long generations stream for minutes; the default 60 s idle timeout would cut them.
            idle_timeout=Duration.seconds(STREAM_SECONDS))
        self.load_balancer.log_access_logs(self.access_logs, prefix="alb")

        self.target_groups = {}
        for pool, server in servers.items():
            group = elbv2.ApplicationTargetGroup(
                self, f"{pool.capitalize()}Targets", vpc=vpc, port=server.port,
                protocol=elbv2.ApplicationProtocol.HTTP, target_type=elbv2.TargetType.INSTANCE,
                # A model server is healthy once its weights are loaded: llama.cpp and vLLM answer 200 then.
                health_check=elbv2.HealthCheck(path=server.health_path, port=str(server.port),
                                               healthy_http_codes="200", interval=Duration.seconds(15),
                                               timeout=Duration.seconds(5), healthy_threshold_count=2,
                                               unhealthy_threshold_count=3),
                # A deregistering target keeps its in-flight requests until this delay ends (ELB, "Target groups for
                # your Application Load Balancers", Deregistration delay) and Auto Scaling deregisters before the
                # termination hook, so a stream gets as long as the idle timeout allows it. A target with nothing
                # in flight is released at once, so the long delay costs only while streams are running.
                deregistration_delay=Duration.seconds(deregistration_seconds[pool]))
            groups[pool].attach_to_application_target_group(group)
            for extra in (extra_groups or {}).get(pool, []):
                extra.attach_to_application_target_group(group)
            # Only the load balancer reaches the model server port, and only from its own security group.
            instance_security_groups[pool].add_ingress_rule(
                security_group, ec2.Port.tcp(server.port), f"model server ({pool}) from the endpoint")
            security_group.add_egress_rule(instance_security_groups[pool], ec2.Port.tcp(server.port),
                                           f"to the {pool} model servers")
            self.target_groups[pool] = group

        self.listener = self.load_balancer.add_listener(
            "Https", port=HTTPS_PORT, protocol=elbv2.ApplicationProtocol.HTTPS, open=False,
            certificates=[elbv2.ListenerCertificate.from_arn(certificate_arn)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            default_action=elbv2.ListenerAction.fixed_response(404, content_type="text/plain",
                                                               message_body="no route"))
        gpu_weight = config.initial_gpu_weight
        weights = {"cpu": 100 - gpu_weight, "gpu": gpu_weight}
        self.rule = elbv2.ApplicationListenerRule(
            self, "WeightedForward", listener=self.listener, priority=RULE_PRIORITY,
            conditions=[elbv2.ListenerCondition.http_header(SIZE_HEADER, [SHORT])],
            action=elbv2.ListenerAction.weighted_forward([
                elbv2.WeightedTargetGroup(target_group=self.target_groups[pool], weight=weights[pool])
                for pool in self.target_groups]))
        # A long prompt takes seconds of Graviton prefill: whatever the split, it goes to the GPUs.
        self.gpu_rule = elbv2.ApplicationListenerRule(
            self, "LongToGpu", listener=self.listener, priority=GPU_RULE_PRIORITY,
            conditions=[elbv2.ListenerCondition.path_patterns(["/*"])],
            action=elbv2.ListenerAction.forward([self.target_groups["gpu"]]))

    @property
    def url(self) -> str:
        return f"https://{self.load_balancer.load_balancer_dns_name}"


def model_server_commands(server: ModelServerConfig, *, gpu: bool, start: bool = True) -> list[str]:
    """User-data lines that run the pool's model server as a systemd unit (restarted if it dies).

    start False (a warm-lane instance): installed, neither started nor enabled; the lane's boot gate starts it
    when the instance goes in service."""
    args = " ".join(server.container_args())
    gpus = "--gpus all " if gpu else ""
    return [
        # AL2023 ships docker in its repositories; the GPU AMI already has it with the NVIDIA runtime.
        "command -v docker >/dev/null || dnf install -y -q docker",
        "systemctl enable --now docker",
        "cat > /etc/systemd/system/crossfleet-model-server.service <<'CROSSFLEET_UNIT'",
        "[Unit]",
        "Description=crossfleet model server",
        "After=docker.service network-online.target",
        "Requires=docker.service",
        "[Service]",
        "Restart=always",
        "RestartSec=10",
        f"ExecStartPre=-/usr/bin/docker pull {server.image}",
        "ExecStartPre=-/usr/bin/docker rm -f crossfleet-model-server",
        f"ExecStart=/usr/bin/docker run --rm --name crossfleet-model-server {gpus}"
        f"-p {server.port}:{server.port} -v /opt/crossfleet/models:/models {server.image} {args}",
        "ExecStop=/usr/bin/docker stop crossfleet-model-server",
        "[Install]",
        "WantedBy=multi-user.target",
        "CROSSFLEET_UNIT",
        "install -d -m 0755 /opt/crossfleet/models",
        "systemctl daemon-reload",
        *(["systemctl enable --now crossfleet-model-server"] if start else []),
    ]
