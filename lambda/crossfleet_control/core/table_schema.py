"""Key names of the state table, shared by the CDK construct that creates it and the code that uses it."""

PARTITION_KEY = "pk"
SORT_KEY = "sk"
# DynamoDB deletes an item some time after this epoch-seconds value passes (decision log, ledger history).
TTL_ATTRIBUTE = "expires_at"
