"""Lambda entry points: parse the event, build adapters once per container, call orchestration, return."""
