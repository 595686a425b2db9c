"""The regional network: private subnets for instances, endpoints for the AWS APIs they call, flow logs."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from crossfleet.config.network import NetworkConfig

# Interface endpoints for what instances and controllers call, so that control traffic stays off the NAT:
# SSM Session Manager (ssm, ssmmessages, ec2messages), the work queues, metrics and logs, and the
# Auto Scaling API the worker calls to complete lifecycle actions.
INTERFACE_ENDPOINTS = {
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "AutoScaling": ec2.InterfaceVpcEndpointAwsService.AUTOSCALING,
}


class Network(Construct):
    """VPC over explicit AZs. Instances live in private subnets and never get public IPs."""

    vpc: ec2.Vpc
    instance_subnets: ec2.SubnetSelection
    flow_log_group: logs.LogGroup

    def __init__(self, scope: Construct, id_: str, *, config: NetworkConfig,
                 availability_zones: tuple[str, ...]) -> None:
        super().__init__(scope, id_)
        subnets = [ec2.SubnetConfiguration(name="instances", subnet_type=(
            ec2.SubnetType.PRIVATE_WITH_EGRESS if config.nat_gateways else ec2.SubnetType.PRIVATE_ISOLATED),
            cidr_mask=20)]
        if config.nat_gateways:
            # Public subnets hold only the NAT gateways (model downloads, package installs need egress).
            subnets.insert(0, ec2.SubnetConfiguration(name="egress", subnet_type=ec2.SubnetType.PUBLIC,
                                                      cidr_mask=24, map_public_ip_on_launch=False))
        self.vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.cidr),
            availability_zones=list(availability_zones),
            nat_gateways=config.nat_gateways,
            subnet_configuration=subnets,
            restrict_default_security_group=True,
        )
        self.instance_subnets = ec2.SubnetSelection(subnet_group_name="instances")

        self.flow_log_group = logs.LogGroup(
            self, "FlowLogs", removal_policy=RemovalPolicy.DESTROY,
        )
        # Config validation already limits the value to CloudWatch Logs' allowed retentions; the L2 enum is
        # keyed by name, so set the day count on the L1 resource directly.
        flow_logs_cfn = self.flow_log_group.node.default_child
        assert isinstance(flow_logs_cfn, logs.CfnLogGroup)
        flow_logs_cfn.retention_in_days = config.flow_log_retention_days
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(
            self.flow_log_group), traffic_type=ec2.FlowLogTrafficType.ALL)

        # Gateway endpoints are free; S3 also serves the worker agent's asset and job outputs. Their policies are
        # set by limit_endpoints once the resources they may reach exist.
        self.s3_endpoint = self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3,
                                                         subnets=[self.instance_subnets])
        self.dynamodb_endpoint = self.vpc.add_gateway_endpoint(
            "DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB, subnets=[self.instance_subnets])
        self.interface_endpoints: dict[str, ec2.InterfaceVpcEndpoint] = {}
        if config.interface_endpoints:
            for name, service in INTERFACE_ENDPOINTS.items():
                self.interface_endpoints[name] = self.vpc.add_interface_endpoint(
                    name, service=service, subnets=self.instance_subnets, private_dns_enabled=True)

    def limit_endpoints(self, *, s3_objects: list[str], table_arn: str, queue_arns: list[str],
                        read_only_objects: list[str], read_only_buckets: list[str]) -> None:
        """Endpoint policies: what may pass through each endpoint, whoever the caller (VPC User Guide, "Control
        access to VPC endpoints using endpoint policies"). Traffic from the instance subnets to S3 and DynamoDB
        in this region takes the gateway endpoints whatever its destination, so these are also the limit for
        anything on an instance holding other credentials: nothing can be copied to another account's bucket."""
        anyone = [iam.AnyPrincipal()]
        self.s3_endpoint.add_to_policy(iam.PolicyStatement(
            sid="ThisDeploymentsObjects", principals=anyone, actions=["s3:GetObject", "s3:PutObject"],
            resources=s3_objects))
        self.s3_endpoint.add_to_policy(iam.PolicyStatement(
            sid="ReadOnlyObjects", principals=anyone, actions=["s3:GetObject"], resources=read_only_objects))
        if read_only_buckets:
            self.s3_endpoint.add_to_policy(iam.PolicyStatement(
                sid="ListModelPrefix", principals=anyone, actions=["s3:ListBucket"], resources=read_only_buckets))
        self.dynamodb_endpoint.add_to_policy(iam.PolicyStatement(
            sid="ThisRegionsStateTableOnly", principals=anyone,
            actions=["dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem",
                     "dynamodb:BatchWriteItem", "dynamodb:BatchGetItem", "dynamodb:ConditionCheckItem"],
            resources=[table_arn]))
        sqs_endpoint = self.interface_endpoints.get("Sqs")
        if sqs_endpoint is not None:
            sqs_endpoint.add_to_policy(iam.PolicyStatement(
                sid="ThisRegionsWorkQueuesOnly", principals=anyone,
                actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                         "sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
                resources=queue_arns))
        # The other interface endpoints (SSM, ssmmessages, ec2messages, CloudWatch, Logs, Auto Scaling) keep the
        # default policy: their callers' actions have no resource-level permissions (Session Manager, metrics) or
        # are already limited to this deployment's groups by the instance role.

