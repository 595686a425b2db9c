"""What every crossfleet controller Lambda gets: arm64 Python 3.13, its own role and log group, the shared code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

LAMBDA_SOURCE = Path(__file__).resolve().parents[2] / "lambda"
ASSET_EXCLUDES = ["**/__pycache__", "**/*.pyc", "tests", "*.md"]


@dataclass(frozen=True)
class ControllerFunction:
    function: lambda_.Function
    role: iam.Role
    log_group: logs.LogGroup


def controller_function(scope: Construct, *, handler: str, description: str, environment: dict[str, str],
                        timeout_seconds: int) -> ControllerFunction:
    # An explicit role and log group: no AWS-managed execution policy, logs kept a month, nothing else granted.
    log_group = logs.LogGroup(scope, "Logs", retention=logs.RetentionDays.ONE_MONTH,
                              removal_policy=RemovalPolicy.DESTROY)
    role = iam.Role(scope, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description)
    log_group.grant_write(role)
    function = lambda_.Function(
        scope, "Function", runtime=lambda_.Runtime.PYTHON_3_13, architecture=lambda_.Architecture.ARM_64,
        handler=handler, code=lambda_.Code.from_asset(str(LAMBDA_SOURCE), exclude=ASSET_EXCLUDES),
        timeout=Duration.seconds(timeout_seconds), memory_size=256, role=role, log_group=log_group,
        environment=environment, description=description)
    return ControllerFunction(function=function, role=role, log_group=log_group)
