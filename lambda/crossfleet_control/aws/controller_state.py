"""The controller's own records in the state table: lease, operator overrides, memory and the decision log."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from crossfleet_control.core.policy_types import ControllerMemory, Override, PoolMemory, ServingMemory
from crossfleet_control.core.table_schema import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE


class LeaseLost(RuntimeError):
    """Another invocation holds the lease, or took it over: this one must not act."""


@dataclass
class ControllerState:
    """Lease, operator overrides, controller memory and the decision log, all in the state table."""

    client: Any
    table_name: str
    region: str
    clock: Callable[[], float] = time.time
    _controls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"rebalancer#{self.region}"

    def _key(self, sort_key: str) -> dict[str, Any]:
        return {PARTITION_KEY: {"S": self.key}, SORT_KEY: {"S": sort_key}}

    def acquire_lease(self, holder: str, lease_seconds: float) -> int:
        """Take the singleton lease; return the fencing token (a version that only grows)."""
        now = self.clock()
        try:
            response = self.client.update_item(
                TableName=self.table_name, Key=self._key("lease"),
                UpdateExpression="SET holder = :holder, lease_until = :until ADD fence :one",
                ConditionExpression="attribute_not_exists(pk) OR lease_until < :now OR holder = :holder",
                ExpressionAttributeValues={":holder": {"S": holder}, ":until": {"N": str(now + lease_seconds)},
                                           ":now": {"N": str(now)}, ":one": {"N": "1"}},
                ReturnValues="ALL_NEW")
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise LeaseLost("lease held by another invocation") from None
            raise
        return int(response["Attributes"]["fence"]["N"])

    def release_lease(self, holder: str, fence: int) -> None:
        try:
            self.client.update_item(
                TableName=self.table_name, Key=self._key("lease"),
                UpdateExpression="SET lease_until = :zero",
                ConditionExpression="holder = :holder AND fence = :fence",
                ExpressionAttributeValues={":zero": {"N": "0"}, ":holder": {"S": holder},
                                           ":fence": {"N": str(fence)}})
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def still_holds(self, holder: str, fence: int, margin_seconds: float = 2.0) -> bool:
        item = self.client.get_item(TableName=self.table_name, Key=self._key("lease"),
                                    ConsistentRead=True).get("Item", {})
        return (item.get("holder", {}).get("S") == holder and int(item.get("fence", {}).get("N", "-1")) == fence
                and float(item.get("lease_until", {}).get("N", "0")) > self.clock() + margin_seconds)

    def load_controls(self) -> tuple[ControllerMemory, dict[str, Override]]:
        """Memory and overrides in one Query (they share the partition)."""
        items = self.client.query(TableName=self.table_name, KeyConditionExpression="pk = :pk",
                                  ExpressionAttributeValues={":pk": {"S": self.key}},
                                  ConsistentRead=True)["Items"]
        memory = ControllerMemory()
        overrides: dict[str, Override] = {}
        for item in items:
            sort_key = item[SORT_KEY]["S"]
            if sort_key == "memory":
                data = json.loads(item["data"]["S"])
                memory = ControllerMemory(pools={pool: PoolMemory(low_since=entry.get("low_since"),
                                                                  runaway_until=entry.get("runaway_until"),
                                                                  peaks=_peaks(entry.get("peaks")))
                                                 for pool, entry in data.get("pools", {}).items()},
                                          serving=_serving(data))
            elif sort_key.startswith("override#"):
                pinned = item.get("pinned_desired", {}).get("N")
                overrides[sort_key.split("#", 1)[1]] = Override(
                    frozen=item.get("frozen", {}).get("BOOL", False),
                    pinned_desired=int(pinned) if pinned is not None else None,
                    note=item.get("note", {}).get("S", ""))
        return memory, overrides

    def save_memory(self, memory: ControllerMemory, fence: int) -> None:
        """Fenced write: an invocation with an older token can never overwrite a newer one's memory."""
        data = {"pools": {pool: {"low_since": m.low_since, "runaway_until": m.runaway_until,
                                 "peaks": [list(sample) for sample in m.peaks]}
                          for pool, m in memory.pools.items()},
                # Fields added after a release go beside the ones it knew, never into them: the older code
                # builds ServingMemory(**serving) and would stop every cycle on an unknown key after a rollback.
                "serving": {k: v for k, v in asdict(memory.serving).items() if k in _SERVING_V1},
                "serving_recent": [list(row) for row in memory.serving.recent]}
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={**self._key("memory"), "data": {"S": json.dumps(data)},
                      "fence": {"N": str(fence)}},
                ConditionExpression="attribute_not_exists(fence) OR fence <= :fence",
                ExpressionAttributeValues={":fence": {"N": str(fence)}})
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise LeaseLost("a newer invocation wrote controller memory") from None
            raise

    def set_override(self, pool: str, *, frozen: bool = False, pinned_desired: int | None = None,
                     note: str = "") -> None:
        item: dict[str, Any] = {**self._key(f"override#{pool}"),
                                "frozen": {"BOOL": frozen}, "note": {"S": note},
                                "set_at": {"N": str(self.clock())}}
        if pinned_desired is not None:
            item["pinned_desired"] = {"N": str(pinned_desired)}
        self.client.put_item(TableName=self.table_name, Item=item)

    def clear_override(self, pool: str) -> None:
        self.client.delete_item(TableName=self.table_name, Key=self._key(f"override#{pool}"))

    def record_decision(self, record: Mapping[str, Any], fence: int, ttl_seconds: float) -> None:
        now = self.clock()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        self.client.put_item(TableName=self.table_name, Item={
            PARTITION_KEY: {"S": f"decisions#{self.region}"}, SORT_KEY: {"S": f"{stamp}#{fence:010d}"},
            "record": {"S": json.dumps(record, default=_json_default, sort_keys=True)},
            TTL_ATTRIBUTE: {"N": str(int(now + ttl_seconds))}})

    def recent_decisions(self, limit: int) -> list[dict[str, Any]]:
        items = self.client.query(TableName=self.table_name, KeyConditionExpression="pk = :pk",
                                  ExpressionAttributeValues={":pk": {"S": f"decisions#{self.region}"}},
                                  ScanIndexForward=False, Limit=limit)["Items"]
        return [json.loads(item["record"]["S"]) for item in items]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")



def _numeric_rows(raw: Any, width: int) -> list[tuple[float, ...]]:
    """Rows of `width` finite numbers as saved (JSON lists); any other row, from an older item or a hand edit, is
    dropped: the histories these hold only make a floor start from the current demand when they are missing."""
    if not isinstance(raw, list):
        return []
    return [tuple(float(v) for v in row) for row in raw
            if isinstance(row, list) and len(row) == width
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)]


def _peaks(raw: Any) -> tuple[tuple[float, int], ...]:
    """The forecast's envelope as saved."""
    return tuple((at, int(want)) for at, want in _numeric_rows(raw, 2))


_SERVING_V1 = ("pending_cost_target", "calm")  # the serving memory's fields the first release wrote


def _serving(data: Mapping[str, Any]) -> ServingMemory:
    """The serving split's memory as saved by this release or an earlier one; unknown keys are ignored, so a
    newer release's item never stops this one."""
    saved = data.get("serving", {})
    known = {k: saved[k] for k in _SERVING_V1 if isinstance(saved, dict) and k in saved}
    recent = data.get("serving_recent", saved.get("recent", []) if isinstance(saved, dict) else [])
    rows = tuple((at, short, long) for at, short, long in _numeric_rows(recent, 3))
    return ServingMemory(**known, recent=rows)
