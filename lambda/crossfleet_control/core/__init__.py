"""Pure core: observation in, decision out, every decision with its reason. Never imports boto3 or AWS code."""
