"""crossfleet: Graviton5 CPU fleets and GPU clusters in US regions, rebalanced by Lambda controllers."""

__version__ = "0.1.0"
