"""What-if simulator: replays workloads through simulated regions and pools with the rebalancer's own policy."""
