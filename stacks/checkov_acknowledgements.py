"""checkov findings crossfleet accepts, each with the check id, the resource and why (like nag_acknowledgements).

They are written into each resource's template Metadata as checkov's own skip format
(`Metadata: {checkov: {skip: [{id, comment}]}}`), so the reason travels with the resource. tests/test_synth_matrix.py
runs checkov over every template of the synth matrix and requires each failed check to be acknowledged here, and
each acknowledgement to match a check that really fails (a stale one is an error too).
"""

from __future__ import annotations

from collections import defaultdict

from aws_cdk import CfnResource, Stack

SQS_MANAGED = ("The queue is encrypted with SQS-managed SSE (SqsManagedSseEnabled, set by the construct and "
               "asserted in tests/test_region_stack.py); this checkov version recognises only KmsMasterKeyId. A KMS "
               "key would add a key policy every producer needs, for messages that hold job specs, not secrets.")
LAMBDA_OUTSIDE_KMS_ENV = ("The environment holds only resource names, queue URLs and policy numbers, no secrets; "
                          "Lambda encrypts it at rest with the AWS-managed key, and a customer key would add a key "
                          "policy for nothing secret.")
LOGS_SERVICE_KEY = ("CloudWatch Logs encrypts every log group at rest with a service key; these logs hold job ids, "
                    "decisions and flow records, no payloads or credentials, and a customer key per log group "
                    "would add key policy and cost without narrowing who may read them (IAM does that).")

ACKNOWLEDGEMENTS: dict[str, list[tuple[str, str]]] = {
    "WorkQueues/Intake/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "WorkQueues/IntakeDeadLetters/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "WorkQueues/Rejects/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "WorkQueues/CpuJobs/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "WorkQueues/CpuDeadLetters/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "WorkQueues/GpuJobs/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "WorkQueues/GpuDeadLetters/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "CapacityEvents/DeadLetters/Resource": [("CKV_AWS_27", SQS_MANAGED)],
    "Rebalancer/Function/Resource": [
        ("CKV_AWS_116", "Invoked by an EventBridge schedule with zero retries: a failed tick is replaced by the next "
                        "one a minute later, and re-running an old tick would act on stale data, so a DLQ would "
                        "only collect events nobody should replay; failures raise the RebalancerErrors alarm."),
        ("CKV_AWS_173", LAMBDA_OUTSIDE_KMS_ENV)],
    "IntakeRouter/Function/Resource": [
        ("CKV_AWS_116", "Invoked by an SQS event source mapping: a message it cannot route stays on the intake queue "
                        "and goes to the intake queue's redrive DLQ after maxReceiveCount; a function DLQ applies "
                        "only to asynchronous invocations, which this function never gets."),
        ("CKV_AWS_173", LAMBDA_OUTSIDE_KMS_ENV)],
    "CapacityEvents/Function/Resource": [
        ("CKV_AWS_116", "Invoked by EventBridge rules whose target has its own dead-letter queue "
                        "(CapacityEvents/DeadLetters, 4 retries over 30 minutes); that is where unrecorded capacity "
                        "signals wait, so a second DLQ on the function would never receive anything."),
        ("CKV_AWS_173", LAMBDA_OUTSIDE_KMS_ENV)],
    "Custom::VpcRestrictDefaultSGCustomResourceProvider/Handler": [
        ("CKV_AWS_116", "CDK's own custom-resource handler that strips the default security group's rules; "
                        "CloudFormation invokes it synchronously during deploys and reports a failure as a failed "
                        "stack operation, so there is no asynchronous event to dead-letter.")],
    "Rebalancer/Logs/Resource": [("CKV_AWS_158", LOGS_SERVICE_KEY)],
    "IntakeRouter/Logs/Resource": [("CKV_AWS_158", LOGS_SERVICE_KEY)],
    "CapacityEvents/Logs/Resource": [("CKV_AWS_158", LOGS_SERVICE_KEY)],
    "Network/FlowLogs/Resource": [("CKV_AWS_158", LOGS_SERVICE_KEY)],
    "State/Table/Resource": [
        ("CKV_AWS_119", "Encrypted with the AWS-managed DynamoDB key (aws/dynamodb), which CloudTrail logs; access "
                        "is narrowed per role and per partition by dynamodb:LeadingKeys (tests/test_iam_scope.py), "
                        "which a customer key policy could not express. A CMK is a deliberate later change.")],
    "Results/AccessLogs/Resource": [
        ("CKV_AWS_18", "This bucket receives the results bucket's (and the endpoint log bucket's) server access "
                       "logs; logging the log bucket into itself would recurse. It is versioned and ACL-free.")],
    "GravitonFleet/InstanceRole/DefaultPolicy/Resource": [
        ("CKV_AWS_111", "ssm:UpdateInstanceInformation and the four ssmmessages channel actions (Session Manager, the "
                        "only way onto instances) and cloudwatch:PutMetricData (namespace-conditioned) support no "
                        "resource-level permissions; every other write names its queue, table or key prefix.")],
    "AcceleratorCluster/InstanceRole/DefaultPolicy/Resource": [
        ("CKV_AWS_111", "ssm:UpdateInstanceInformation and the four ssmmessages channel actions (Session Manager, the "
                        "only way onto instances) and cloudwatch:PutMetricData (namespace-conditioned) support no "
                        "resource-level permissions; every other write names its queue, table or key prefix.")],
    "RealtimeEndpoint/LoadBalancer/Https/Resource": [
        ("CKV_AWS_103", "The listener uses an ELBSecurityPolicy-TLS13 policy (TLS 1.2 and 1.3 only, asserted in "
                        "tests/test_realtime_endpoint.py); this checkov version's list of accepted policies "
                        "predates the TLS13 policy names.")],
}


def acknowledge_checkov_findings(stack: Stack) -> None:
    """Attach each acknowledgement to its resource, by construct path under the stack; absent paths are skipped
    (not every configuration has an endpoint)."""
    skips: dict[CfnResource, list[dict[str, str]]] = defaultdict(list)
    prefix = f"{stack.node.path}/"
    for construct in stack.node.find_all():
        if isinstance(construct, CfnResource) and construct.node.path.startswith(prefix):
            for check, reason in ACKNOWLEDGEMENTS.get(construct.node.path[len(prefix):], []):
                skips[construct].append({"id": check, "comment": reason})
    for resource, entries in skips.items():
        resource.add_metadata("checkov", {"skip": entries})
