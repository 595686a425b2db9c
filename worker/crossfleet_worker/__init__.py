"""The crossfleet worker agent: runs on every fleet instance and consumes its pool's queue."""
