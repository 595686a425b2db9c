"""crossfleet controllers: job schema, pure policy core, boto3 adapters, Lambda handlers."""
