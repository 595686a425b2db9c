"""The job ledger: one head item per job (current status, claim) and one item per status transition.

Every write is conditional, so a duplicate delivery, a retried Lambda or two workers racing cannot run a job
twice or move it backwards: `claim` succeeds for exactly one worker at a time, and only a job that has not
reached a terminal state can be claimed. Transition items are append-only and carry a TTL.

Statuses: submitted -> queued(pool, region) [-> moved] -> running(instance) -> succeeded | failed (retried:
back to queued) | dead_lettered; or rejected at intake. A rejected id is released: a corrected resubmission
with the same id is queued and claimed normally. A dead-lettered job is reopened only by a redrive.

The head keeps the job's fingerprint (`Job.fingerprint`): a copy with the same id and fingerprint is a
duplicate and is settled; a different job reusing a live id is refused (`Claim.conflict`), never deleted as a
duplicate. See docs/job-lifecycle.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from crossfleet_control.core.table_schema import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE

TERMINAL = ("succeeded", "dead_lettered", "rejected")
# `rejected` is claimable: the router never puts an invalid job on a pool queue, so a job there whose id was
# rejected is the producer's corrected resubmission (its `record_queued` may have failed).
CLAIMABLE = ("submitted", "queued", "moved", "failed", "interrupted", "rejected")
HISTORY_TTL_SECONDS = 30 * 86400


@dataclass(frozen=True)
class Claim:
    won: bool
    status: str | None  # the status found when the claim was refused
    owner: str | None
    claim_until: float | None
    attempt: int = 0
    conflict: bool = False  # refused because the id already names a different job (another fingerprint)


def _key(job_id: str) -> dict[str, Any]:
    return {PARTITION_KEY: {"S": f"job#{job_id}"}, SORT_KEY: {"S": "head"}}


@dataclass
class Ledger:
    client: Any
    table_name: str
    clock: Callable[[], float] = time.time

    def _event(self, job_id: str, status: str, detail: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        return {PARTITION_KEY: {"S": f"job#{job_id}"}, SORT_KEY: {"S": f"event#{now:017.6f}#{status}"},
                "status": {"S": status}, "at": {"N": repr(now)}, "detail": {"S": json.dumps(detail, sort_keys=True)},
                TTL_ATTRIBUTE: {"N": str(int(now + HISTORY_TTL_SECONDS))}}

    def _append(self, job_id: str, status: str, detail: dict[str, Any]) -> None:
        self.client.put_item(TableName=self.table_name, Item=self._event(job_id, status, detail))

    def record_queued(self, job_id: str, *, pool: str, region: str, via: str, fingerprint: str | None = None) -> bool:
        """First sight of a job (router or CLI). Returns False if the ledger already knew it (a duplicate).
        A `rejected` head is replaced: the id was never accepted, so its owner may resubmit it."""
        now = self.clock()
        item = {**_key(job_id), "status": {"S": "queued"}, "pool": {"S": pool}, "region": {"S": region},
                "attempt": {"N": "0"}, "updated_at": {"N": repr(now)}}
        if fingerprint:
            item["fingerprint"] = {"S": fingerprint}
        try:
            self.client.put_item(
                TableName=self.table_name, Item=item,
                ConditionExpression="attribute_not_exists(pk) OR #s = :rejected",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":rejected": {"S": "rejected"}})
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        self._append(job_id, "queued", {"pool": pool, "region": region, "via": via})
        return True

    def record_rejected(self, job_id: str, reason: str) -> None:
        now = self.clock()
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item={**_key(job_id), "status": {"S": "rejected"}, "reason": {"S": reason[:1000]},
                      "updated_at": {"N": repr(now)}},
                ConditionExpression="attribute_not_exists(pk)")
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return  # a valid job with this id is already in flight: the invalid copy changes nothing
        self._append(job_id, "rejected", {"reason": reason})

    def record_moves(self, moves: list[tuple[str, str, str]]) -> None:
        """(job_id, source, destination) transitions from the rebalancer, 25 per batch write."""
        for start in range(0, len(moves), 25):
            items = [{"PutRequest": {"Item": self._event(job_id, "moved", {"from": source, "to": destination})}}
                     for job_id, source, destination in moves[start:start + 25]]
            self.client.batch_write_item(RequestItems={self.table_name: items})

    def claim(self, job_id: str, *, owner: str, pool: str, lease_seconds: float,
              fingerprint: str | None = None, region: str | None = None) -> Claim:
        """Take the job for one run. Exactly one caller wins while a claim is live; terminal jobs never run; a
        copy whose fingerprint differs from the one the ledger holds for this id is refused as a conflict."""
        now = self.clock()
        claimable = ", ".join(f":c{i + 1}" for i in range(len(CLAIMABLE)))
        same_job = ""
        values: dict[str, Any] = {
            ":running": {"S": "running"}, ":owner": {"S": owner}, ":until": {"N": repr(now + lease_seconds)},
            ":pool": {"S": pool}, ":now": {"N": repr(now)}, ":one": {"N": "1"},
            **{f":c{i + 1}": {"S": s} for i, s in enumerate(CLAIMABLE)}}
        set_fingerprint = ""
        if region:  # where it runs: a job claimed from another region's ledger shows its region here
            set_fingerprint += ", claim_region = :region"
            values[":region"] = {"S": region}
        if fingerprint:
            # A rejected head carries no job of its own: the resubmission's fingerprint replaces whatever is there.
            same_job = " AND (attribute_not_exists(fingerprint) OR fingerprint = :fp OR #s = :rejected)"
            set_fingerprint += ", fingerprint = :fp"
            values[":fp"] = {"S": fingerprint}
            values[":rejected"] = {"S": "rejected"}
        try:
            response = self.client.update_item(
                TableName=self.table_name, Key=_key(job_id),
                UpdateExpression="SET #s = :running, claim_owner = :owner, claim_until = :until, #p = :pool, "
                                 f"updated_at = :now{set_fingerprint} ADD attempt :one",
                ConditionExpression=f"(attribute_not_exists(pk) OR #s IN ({claimable}) "
                                    f"OR (#s = :running AND claim_until < :now)){same_job}",
                ExpressionAttributeNames={"#s": "status", "#p": "pool"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW")
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            head = self.head(job_id) or {}
            conflict = bool(fingerprint and head.get("fingerprint") not in (None, fingerprint)
                            and head.get("status") != "rejected")
            return Claim(won=False, status=head.get("status"), owner=head.get("claim_owner"),
                         claim_until=head.get("claim_until"), attempt=int(head.get("attempt", 0)),
                         conflict=conflict)
        attempt = int(response["Attributes"]["attempt"]["N"])
        self._append(job_id, "running", {"owner": owner, "pool": pool, "attempt": attempt,
                                         **({"region": region} if region else {})})
        return Claim(won=True, status="running", owner=owner, claim_until=now + lease_seconds, attempt=attempt)

    def extend(self, job_id: str, *, owner: str, lease_seconds: float) -> bool:
        try:
            self.client.update_item(
                TableName=self.table_name, Key=_key(job_id), UpdateExpression="SET claim_until = :until",
                ConditionExpression="claim_owner = :owner AND #s = :running",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":until": {"N": repr(self.clock() + lease_seconds)},
                                           ":owner": {"S": owner}, ":running": {"S": "running"}})
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def finish(self, job_id: str, *, owner: str, status: str, detail: dict[str, Any]) -> bool:
        """Move a claimed job to succeeded, failed, interrupted or dead_lettered. Only the claim's owner can.
        `interrupted` gives the attempt back: a Spot notice or scale-in is not the job's failure (case 16)."""
        extra = ", result_uri = :uri" if "result_uri" in detail else ""
        refund = " ADD attempt :minus_one" if status == "interrupted" else ""
        values: dict[str, Any] = {":status": {"S": status}, ":owner": {"S": owner}, ":running": {"S": "running"},
                                  ":now": {"N": repr(self.clock())}, ":reason": {"S": str(detail.get("reason", ""))}}
        if extra:
            values[":uri"] = {"S": detail["result_uri"]}
        if refund:
            values[":minus_one"] = {"N": "-1"}
        try:
            self.client.update_item(
                TableName=self.table_name, Key=_key(job_id),
                UpdateExpression=f"SET #s = :status, updated_at = :now, reason = :reason{extra} REMOVE claim_until"
                                 f"{refund}",
                ConditionExpression="claim_owner = :owner AND #s = :running",
                ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues=values)
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        self._append(job_id, status, {"owner": owner, **detail})
        return True

    def settle_dead_letter(self, job_id: str, *, reason: str) -> str:
        """SQS dead-lettered a copy of this job by itself. "settled": recorded dead_lettered now; "terminal":
        the job already has its outcome; "running": a live claim holds it (another copy is running)."""
        now = self.clock()
        claimable = ", ".join(f":c{i + 1}" for i in range(len(CLAIMABLE)))
        try:
            self.client.update_item(
                TableName=self.table_name, Key=_key(job_id),
                UpdateExpression="SET #s = :dead, reason = :reason, updated_at = :now REMOVE claim_until",
                ConditionExpression=f"attribute_not_exists(pk) OR #s IN ({claimable}) "
                                    "OR (#s = :running AND claim_until < :now)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":dead": {"S": "dead_lettered"}, ":reason": {"S": reason[:1000]},
                                           ":now": {"N": repr(now)}, ":running": {"S": "running"},
                                           **{f":c{i + 1}": {"S": s} for i, s in enumerate(CLAIMABLE)}})
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            head = self.head(job_id) or {}
            return "terminal" if head.get("status") in TERMINAL else "running"
        self._append(job_id, "dead_lettered", {"reason": reason, "by": "sqs redrive"})
        return "settled"

    def reopen(self, job_id: str, *, via: str) -> bool:
        """A redriven dead-lettered job: back to queued with fresh attempts. Only a dead-lettered job reopens, so
        a stray copy of a succeeded or running job is still settled as a duplicate."""
        try:
            self.client.update_item(
                TableName=self.table_name, Key=_key(job_id),
                UpdateExpression="SET #s = :queued, attempt = :zero, updated_at = :now REMOVE claim_owner",
                ConditionExpression="#s = :dead",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":queued": {"S": "queued"}, ":zero": {"N": "0"},
                                           ":dead": {"S": "dead_lettered"}, ":now": {"N": repr(self.clock())}})
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        self._append(job_id, "redriven", {"via": via})
        return True

    def head(self, job_id: str) -> dict[str, Any] | None:
        item = self.client.get_item(TableName=self.table_name, Key=_key(job_id), ConsistentRead=True).get("Item")
        if not item:
            return None
        return {k: _plain(v) for k, v in item.items()}

    def history(self, job_id: str) -> list[dict[str, Any]]:
        items = self.client.query(
            TableName=self.table_name, KeyConditionExpression="pk = :pk AND begins_with(sk, :event)",
            ExpressionAttributeValues={":pk": {"S": f"job#{job_id}"}, ":event": {"S": "event#"}},
            ConsistentRead=True)["Items"]
        return [{"status": i["status"]["S"], "at": float(i["at"]["N"]), **json.loads(i["detail"]["S"])}
                for i in items]


def _plain(value: dict[str, Any]) -> Any:
    if "S" in value:
        return value["S"]
    if "N" in value:
        number = float(value["N"])
        return int(number) if number.is_integer() else number
    if "BOOL" in value:
        return value["BOOL"]
    return value
