"""AWS adapters: thin boto3 wrappers with injected clients, the only modules that call AWS."""
