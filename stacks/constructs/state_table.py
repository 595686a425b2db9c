"""The DynamoDB table for job and controller state (ledger, leases, overrides, decision log)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from crossfleet.config.control import StateConfig
from crossfleet_control.core.table_schema import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE

# Item-level actions, split by what they can do. DescribeTable, Scan and the table-level actions are granted to
# no role: a Scan carries no partition key, so dynamodb:LeadingKeys could not bound it.
READ_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:ConditionCheckItem")
WRITE_ACTIONS = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem")
DELETE_ACTIONS = ("dynamodb:DeleteItem",)


def partition_prefixes(region: str) -> dict[str, str]:
    """The table's partitions by owner (crossfleet_control.aws: ledger, controller_state, health_store)."""
    return {"jobs": "job#*", "controller": f"rebalancer#{region}", "decisions": f"decisions#{region}",
            "capacity": f"capacity#{region}"}


def leading_keys_condition(prefixes: Sequence[str]) -> dict[str, dict[str, object]]:
    """Every partition key the request touches must match one of `prefixes`.

    dynamodb:LeadingKeys is multivalued (a BatchWriteItem names many partitions), hence ForAllValues. ForAllValues is
    also true when the key is absent from the request, so the Null check requires it to be present: a request
    without partition keys (Scan) is then refused rather than let through. AWS docs: "Using IAM policy conditions
    for fine-grained access control" (DynamoDB Developer Guide) and "Condition keys for Amazon DynamoDB" (Service
    Authorization Reference); "Single-valued vs. multivalued context keys" (IAM User Guide) for the Null pairing.
    """
    return {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": list(prefixes)},
            "Null": {"dynamodb:LeadingKeys": "false"}}


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
            # Job history is the audit trail: keep it when the stack goes, unless config says otherwise; a retained
            # table is also protected from a stray DeleteTable (a disposable one must stay deletable with the stack).
            removal_policy=RemovalPolicy.RETAIN if config.retain_on_delete else RemovalPolicy.DESTROY,
            deletion_protection=config.retain_on_delete,
        )

    def key_statements(self, sid: str, *, read: Sequence[str] = (), write: Sequence[str] = (),
                       delete: Sequence[str] = ()) -> list[iam.PolicyStatement]:
        """Statements allowing item reads, writes and deletes, each only on partitions matching its prefixes."""
        statements = []
        for suffix, actions, prefixes in (("Read", READ_ACTIONS, read), ("Write", WRITE_ACTIONS, write),
                                          ("Delete", DELETE_ACTIONS, delete)):
            if prefixes:
                statements.append(iam.PolicyStatement(
                    sid=f"{sid}{suffix}", actions=list(actions), resources=[self.table.table_arn],
                    conditions=leading_keys_condition(sorted(set(prefixes)))))
        return statements

    def grant_keys(self, grantee: iam.IGrantable, sid: str, *, read: Sequence[str] = (),
                   write: Sequence[str] = (), delete: Sequence[str] = ()) -> None:
        """Key-scoped access instead of grant_read_write_data, which would allow every item and Scan."""
        for statement in self.key_statements(sid, read=read, write=write, delete=delete):
            grantee.grant_principal.add_to_principal_policy(statement)
