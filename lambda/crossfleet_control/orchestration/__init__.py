"""Each function's sequence of work over the pure core and the AWS adapters."""
