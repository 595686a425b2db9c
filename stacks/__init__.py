"""CDK stacks and constructs for crossfleet."""
