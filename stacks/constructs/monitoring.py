"""What operators see and what pages them: a dashboard per region, alarms to an SNS topic.

Widgets use CDK's CloudWatch constructs directly: most panels plot crossfleet's own EMF metrics (namespace
`crossfleet`, emitted by the rebalancer), which general-purpose monitoring libraries do not know about.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crossfleet.config.monitoring import MonitoringConfig
from crossfleet_control.aws.metrics import NAMESPACE

FIVE_MINUTES = Duration.minutes(5)
ONE_MINUTE = Duration.minutes(1)


@dataclass(frozen=True)
class PoolView:
    name: str
    group_name: str
    queue: sqs.Queue
    dead_letter_queue: sqs.Queue
    price_per_hour: float  # on-demand price of the primary type, for the $/h estimate
    watts: float  # per instance, for the kWh/h estimate (a labelled estimate)


class Monitoring(Construct):
    topic: sns.Topic
    dashboard: cloudwatch.Dashboard
    alarms: dict[str, cloudwatch.Alarm]

    def __init__(self, scope: Construct, id_: str, *, config: MonitoringConfig, deployment: str, region: str,
                 pools: list[PoolView], intake_dead_letters: sqs.Queue, rejects: sqs.Queue,
                 rebalancer: lambda_.Function) -> None:
        super().__init__(scope, id_)
        # CloudWatch cannot publish to a topic encrypted with the AWS-managed SNS key: a key of our own.
        key = kms.Key(self, "AlarmTopicKey", enable_key_rotation=True,
                      description=f"crossfleet {deployment} alarm topic in {region}")
        # Only CloudWatch acting for this account (confused-deputy guard: aws:SourceAccount, IAM User Guide "The
        # confused deputy problem"; CloudWatch User Guide on alarm actions to encrypted SNS topics).
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsOfThisAccountOnly", actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")], resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}}))
        self.topic = sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True,
                               display_name=f"crossfleet {deployment} {region} alarms")
        for email in config.alarm_emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))

        dimensions = {"Deployment": deployment, "Region": region}
        self.alarms = {}

        def alarm(name: str, metric: cloudwatch.IMetric, threshold: float, description: str, *,
                  periods: int = 1, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                  missing=cloudwatch.TreatMissingData.NOT_BREACHING) -> None:
            created = cloudwatch.Alarm(
                self, name, metric=metric, threshold=threshold, evaluation_periods=periods,
                comparison_operator=comparison, treat_missing_data=missing,
                alarm_name=f"{deployment}-{region}-{name}", alarm_description=f"{description} Runbook: "
                f"docs/runbook.md#{name.lower()}")
            created.add_alarm_action(actions.SnsAction(self.topic))
            self.alarms[name] = created

        for pool in pools:
            title = pool.name.capitalize()
            alarm(f"{title}DeadLetters", pool.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=FIVE_MINUTES, statistic="Maximum"), 1, f"Jobs of the {pool.name} pool were dead-lettered.")
            alarm(f"{title}OldestJob", pool.queue.metric_approximate_age_of_oldest_message(
                period=ONE_MINUTE, statistic="Maximum"), config.oldest_job_alarm_seconds,
                f"A queued {pool.name} job waited over {config.oldest_job_alarm_seconds} s.", periods=3)
            alarm(f"{title}CapacityShortage", cloudwatch.Metric(
                namespace=NAMESPACE, metric_name="FailedLaunches", dimensions_map={**dimensions, "Pool": pool.name},
                period=ONE_MINUTE, statistic="Maximum"), 1,
                f"The {pool.name} group failed to launch for {config.shortage_alarm_minutes} minutes running.",
                periods=config.shortage_alarm_minutes)
            alarm(f"{title}RunawayLaunches", cloudwatch.Metric(
                namespace=NAMESPACE, metric_name="RunawayGuardHolds", dimensions_map={**dimensions, "Pool": pool.name},
                period=ONE_MINUTE, statistic="Maximum"), 1,
                f"The {pool.name} pool hit its launch cap: instances launch but do not become usable "
                "(bad AMI, driver, user data).", periods=3)
        alarm("IntakeDeadLetters", intake_dead_letters.metric_approximate_number_of_messages_visible(
            period=FIVE_MINUTES, statistic="Maximum"), 1, "Submissions the router could not handle after retries.")
        alarm("RejectsRising", rejects.metric_number_of_messages_sent(period=Duration.minutes(15), statistic="Sum"),
              10, "Producers are sending invalid jobs (10 or more in 15 minutes).")
        alarm("RebalancerErrors", rebalancer.metric_errors(period=FIVE_MINUTES, statistic="Sum"), 1,
              "The rebalancer Lambda failed.", periods=2)
        alarm("RebalancerMissedCycles", rebalancer.metric_invocations(period=FIVE_MINUTES, statistic="Sum"), 3,
              "The rebalancer ran fewer than 3 times in 5 minutes (schedule or quota problem).",
              comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
              missing=cloudwatch.TreatMissingData.BREACHING)
        alarm("ControllerCallErrors", cloudwatch.Metric(
            namespace=NAMESPACE, metric_name="Errors", dimensions_map=dimensions, period=FIVE_MINUTES,
            statistic="Sum"), 10, "The rebalancer's AWS calls are failing (throttling, permissions).")

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"{deployment}-{region}",
                                              default_interval=Duration.hours(3))
        self.dashboard.add_widgets(*region_widgets(deployment, region, pools))


def pool_metric(deployment: str, region: str, name: str, pool: str, statistic: str = "Maximum") -> cloudwatch.Metric:
    return cloudwatch.Metric(namespace=NAMESPACE, metric_name=name, region=region, statistic=statistic,
                             period=ONE_MINUTE, label=f"{region} {pool}",
                             dimensions_map={"Deployment": deployment, "Region": region, "Pool": pool})


def group_metric(region: str, group_name: str, name: str, label: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(namespace="AWS/AutoScaling", metric_name=name, region=region, statistic="Average",
                             period=ONE_MINUTE, label=label, dimensions_map={"AutoScalingGroupName": group_name})


def global_widgets(deployment: str, pools_by_region: dict[str, list[tuple[str, str]]]) -> list[cloudwatch.IWidget]:
    """Every region side by side, from metrics whose dimensions are known without cross-region references."""
    widgets: list[cloudwatch.IWidget] = []
    for metric_name, title in (("Backlog", "backlog (jobs)"), ("DesiredCapacity", "desired capacity"),
                               ("FailedLaunches", "failed launches"),
                               ("CapacityStatus", "capacity status (0 healthy .. 3 short)")):
        widgets.append(cloudwatch.GraphWidget(title=f"all regions: {title}", width=8, left=[
            pool_metric(deployment, region, metric_name, pool) for region, pools in pools_by_region.items()
            for pool, _ in pools]))
    widgets.append(cloudwatch.GraphWidget(title="all regions: instances in service", width=24, left=[
        group_metric(region, group, "GroupInServiceInstances", f"{region} {pool}")
        for region, pools in pools_by_region.items() for pool, group in pools]))
    return widgets


def region_widgets(deployment: str, region: str, pools: list[PoolView]) -> list[cloudwatch.IWidget]:
    """One region's panels."""
    def in_region(pool: PoolView, name: str) -> cloudwatch.Metric:
        return group_metric(region, pool.group_name, name, f"{pool.name} {name}")

    cost = {f"c{i}": in_region(p, "GroupInServiceInstances") for i, p in enumerate(pools)}
    return [
        cloudwatch.GraphWidget(title=f"{region}: backlog per pool (jobs)", width=8,
                               left=[pool_metric(deployment, region, "Backlog", p.name) for p in pools]),
        cloudwatch.GraphWidget(title=f"{region}: oldest queued job (s)", width=8,
                               left=[p.queue.metric_approximate_age_of_oldest_message(
                                   period=ONE_MINUTE, statistic="Maximum", label=p.name) for p in pools]),
        cloudwatch.GraphWidget(title=f"{region}: desired / in service / pending", width=8,
                               left=[m for p in pools for m in (
                                   pool_metric(deployment, region, "DesiredCapacity", p.name),
                                   in_region(p, "GroupInServiceInstances"),
                                   in_region(p, "GroupPendingInstances"))]),
        cloudwatch.GraphWidget(title=f"{region}: moves by reason", width=8, left=[
            cloudwatch.Metric(namespace=NAMESPACE, metric_name="MovesDecided", region=region, statistic="Sum",
                              period=ONE_MINUTE, label=reason,
                              dimensions_map={"Deployment": deployment, "Region": region, "Reason": reason})
            for reason in ("deadline", "idle_capacity", "cheaper", "failover")]),
        cloudwatch.GraphWidget(title=f"{region}: capacity health (failed launches, holds; right: status "
                               "0 healthy, 1 degraded, 2 probing, 3 short, and Spot fallback)", width=8,
                               left=[pool_metric(deployment, region, "FailedLaunches", p.name) for p in pools]
                               + [pool_metric(deployment, region, "Holds", p.name, "Sum") for p in pools],
                               right=[pool_metric(deployment, region, name, p.name) for p in pools
                                      for name in ("CapacityStatus", "SpotFallback")]),
        cloudwatch.GraphWidget(title=f"{region}: jobs finished per minute", width=8,
                               left=[p.queue.metric_number_of_messages_deleted(period=ONE_MINUTE, statistic="Sum",
                                                                               label=p.name) for p in pools]),
        cloudwatch.GraphWidget(title=f"{region}: SLO attainment per pool (% of finished jobs on time)", width=8,
                               left=[cloudwatch.MathExpression(
                                   expression=f"100 * ontime{i} / (ontime{i} + late{i})", label=p.name,
                                   period=FIVE_MINUTES,
                                   # The counts are summed over the expression's own 5 minutes (a period given
                                   # here, not overridden by CDK with a synth warning).
                                   using_metrics={f"ontime{i}": pool_metric(deployment, region, "JobsOnTime", p.name,
                                                                            "Sum").with_(period=FIVE_MINUTES),
                                                  f"late{i}": pool_metric(deployment, region, "JobsLate", p.name,
                                                                          "Sum").with_(period=FIVE_MINUTES)})
                                   for i, p in enumerate(pools)]),
        cloudwatch.GraphWidget(title=f"{region}: estimated $/h and kWh/h (on-demand price, labelled power)",
                               width=16, left=[cloudwatch.MathExpression(
                                   expression=f"c{i} * {p.price_per_hour}", using_metrics=cost,
                                   label=f"{p.name} $/h", period=ONE_MINUTE) for i, p in enumerate(pools)],
                               right=[cloudwatch.MathExpression(
                                   expression=f"c{i} * {p.watts / 1000:.3f}", using_metrics=cost,
                                   label=f"{p.name} kWh/h (estimate)", period=ONE_MINUTE)
                                   for i, p in enumerate(pools)]),
    ]
