"""The current Spot price of each Spot pool's primary instance type, for the market choice and placement by
marginal cost (`core.policy.choose_markets`, `core.marginal_cost`).

DescribeSpotPriceHistory with a start time and no end time returns the prices in effect from then on, one per
Availability Zone and product (Amazon EC2 API Reference, "DescribeSpotPriceHistory"). The cheapest zone's price
stands for the pool: the group's price-capacity-optimized allocation favours it, and the market choice leaves
Spot only when even that price is no saving. One call per Spot pool per cycle; an unreadable price is unknown,
and unknown makes the market choice ignore price, never guess it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossfleet_control.aws.errors import AwsError, ErrorSink

# The product AWS lists Linux Spot prices under (the API's ProductDescriptions values: "Linux/UNIX",
# "Linux/UNIX (Amazon VPC)", ...); both Linux descriptions are accepted in the answer.
PRODUCT = "Linux/UNIX"


@dataclass
class SpotPrices:
    client: Any  # an EC2 client
    instance_types: Mapping[str, str]  # Spot pool -> its primary instance type
    on_error: ErrorSink

    def current(self, now: float) -> dict[str, float]:
        """$/hour per instance for each Spot pool whose price could be read."""
        prices: dict[str, float] = {}
        start = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        for pool, instance_type in self.instance_types.items():
            try:
                history = self.client.describe_spot_price_history(
                    InstanceTypes=[instance_type], ProductDescriptions=[PRODUCT], StartTime=start,
                    MaxResults=100)["SpotPriceHistory"]
                quotes = [float(entry["SpotPrice"]) for entry in history
                          if entry.get("InstanceType") == instance_type
                          and str(entry.get("ProductDescription", "")).startswith(PRODUCT)]
            except (*AwsError, KeyError, ValueError) as error:
                self.on_error(f"ec2.describe_spot_price_history[{pool}]", error)
                continue
            quotes = [q for q in quotes if q > 0 and q == q and q != float("inf")]
            if quotes:
                prices[pool] = min(quotes)
        return prices
