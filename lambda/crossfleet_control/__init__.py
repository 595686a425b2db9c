"""crossfleet controllers, in three layers and the glue between them.

- `core/`: pure decisions, schemas and models (no boto3; `tests/test_layers.py` keeps it so).
- `aws/`: thin boto3 adapters with injected clients; the only code that calls AWS.
- `orchestration/`: each function's sequence (observe, decide, act, record) over core and adapters.
- `handlers/`: the Lambda entry points: parse the event, build adapters once per container, call orchestration.
"""
