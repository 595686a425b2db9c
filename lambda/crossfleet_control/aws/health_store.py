"""Capacity health in the state table, and how the configured regions see each other's.

Design (instead of a DynamoDB global table): each region writes only its own breakers and GPU summary, under
partition `capacity#<region>` of its own state table; a reader queries each configured region's table directly
(at most four regions, one GetItem each per cycle). A region that cannot be read is unknown, and unknown is never
a failover target, which is the safe answer when the region itself is in trouble. Nothing replicates, so
there is no replication lag or conflict to reason about, and cross-region access is scoped in IAM to the
`capacity#` partition (dynamodb:LeadingKeys).

Breakers are updated with optimistic concurrency (a version attribute), because the capacity-events Lambda
and the rebalancer may both write one in the same second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crossfleet_control.core.capacity_health import Breaker, Offering, RegionSummary, Signal, apply
from crossfleet_control.core.table_schema import PARTITION_KEY, SORT_KEY

SUMMARY_KEY = "summary#gpu"
WRITE_ATTEMPTS = 4


def capacity_partition(region: str) -> str:
    return f"capacity#{region}"


@dataclass
class HealthStore:
    client: Any
    table_name: str
    region: str
    # Clients for the other configured regions' tables: region -> (client, table name).
    peers: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    on_error: Callable[[str, Exception], None] = lambda where, error: None

    def breakers(self) -> list[Breaker]:
        items = self.client.query(
            TableName=self.table_name, ConsistentRead=True,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": capacity_partition(self.region)},
                                       ":prefix": {"S": "offering#"}})["Items"]
        return [_breaker(self.region, item) for item in items]

    def record(self, signals: Iterable[Signal]) -> list[Breaker]:
        """Apply each signal to its offering's breaker; return the breakers as written."""
        written = []
        for signal in signals:
            written.append(self._update(signal))
        return written

    def _update(self, signal: Signal) -> Breaker:
        key = {PARTITION_KEY: {"S": capacity_partition(signal.offering.region)},
               SORT_KEY: {"S": signal.offering.sort_key}}
        for _ in range(WRITE_ATTEMPTS):
            item = self.client.get_item(TableName=self.table_name, Key=key, ConsistentRead=True).get("Item")
            before = _breaker(signal.offering.region, item) if item else Breaker(signal.offering)
            after = apply(before, signal)
            data = {k: v for k, v in asdict(after).items() if k not in ("offering", "version")}
            try:
                self.client.put_item(
                    TableName=self.table_name,
                    Item={**key, "data": {"S": json.dumps(data)}, "version": {"N": str(before.version + 1)},
                          "state": {"S": after.state}},
                    ConditionExpression="attribute_not_exists(version) OR version = :seen",
                    ExpressionAttributeValues={":seen": {"N": str(before.version)}})
                return Breaker(**{**asdict(after), "offering": after.offering, "version": before.version + 1})
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        raise RuntimeError(f"breaker {signal.offering.sort_key}: {WRITE_ATTEMPTS} concurrent writers in a row")

    def publish(self, summary: RegionSummary) -> None:
        data = summary_to_dict(summary)
        self.client.put_item(TableName=self.table_name, Item={
            PARTITION_KEY: {"S": capacity_partition(self.region)}, SORT_KEY: {"S": SUMMARY_KEY},
            "data": {"S": json.dumps(data)}, "peak_want": {"N": str(summary.peak_want)}})

    def summaries(self) -> dict[str, RegionSummary]:
        """Every configured region's published GPU summary this region can read, its own included."""
        found = {}
        for region, (client, table) in {self.region: (self.client, self.table_name), **self.peers}.items():
            try:
                item = client.get_item(TableName=table, Key={
                    PARTITION_KEY: {"S": capacity_partition(region)}, SORT_KEY: {"S": SUMMARY_KEY}}).get("Item")
            except (BotoCoreError, ClientError) as error:
                self.on_error(f"dynamodb.get_item[{region} capacity]", error)
                continue
            if item:
                beside = {k: int(item[k]["N"]) for k in _BESIDE_DATA if "N" in item.get(k, {})}
                found[region] = summary_from_dict({**json.loads(item["data"]["S"]), **beside})
        return found


_SUMMARY_FIELDS = frozenset(f.name for f in fields(RegionSummary))
# Published beside `data`, not in it: the first release reads `data` as RegionSummary(**data) and would fail on it.
_BESIDE_DATA = ("peak_want",)


def summary_to_dict(summary: RegionSummary) -> dict[str, Any]:
    """A summary as the first release's readers can build it (the decision record's `peers`): the fields added
    since are left out."""
    return {k: v for k, v in asdict(summary).items() if k not in _BESIDE_DATA}


def summary_from_dict(data: Mapping[str, Any]) -> RegionSummary:
    """A peer's summary, whichever release wrote it: fields this release does not know are ignored (a peer region
    upgraded first adds some), fields it knows but the item lacks take their defaults."""
    return RegionSummary(**{k: v for k, v in data.items() if k in _SUMMARY_FIELDS})


def _breaker(region: str, item: Mapping[str, Any]) -> Breaker:
    data = json.loads(item["data"]["S"])
    return Breaker(offering=Offering.from_sort_key(region, item[SORT_KEY]["S"]),
                   version=int(item.get("version", {}).get("N", "0")), **data)
