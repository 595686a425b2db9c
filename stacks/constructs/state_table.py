"""The DynamoDB table for job and controller state (ledger, leases, overrides, decision log)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from crossfleet.config.control import StateConfig
from crossfleet_control.core.table_schema import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE


class StateTable(Construct):
    table: dynamodb.Table

    def __init__(self, scope: Construct, id_: str, *, config: StateConfig, table_name: str) -> None:
        """A fixed name: the other configured regions read this region's capacity summary from it."""
        super().__init__(scope, id_)
        self.table = dynamodb.Table(
            self, "Table", table_name=table_name,
            partition_key=dynamodb.Attribute(name=PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True),
            time_to_live_attribute=TTL_ATTRIBUTE,
            # Job history is the audit trail: keep it when the stack goes, unless config says otherwise.
            removal_policy=RemovalPolicy.RETAIN if config.retain_on_delete else RemovalPolicy.DESTROY,
        )
