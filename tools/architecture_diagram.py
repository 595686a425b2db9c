"""Draw docs/architecture.png: one region stack's parts and how work and decisions flow between them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "docs" / "architecture.png"

BOXES = {  # name: (x, y, width, height, colour, label)
    "producers": (0.2, 6.6, 2.2, 0.9, "#eeeeee", "producers\ncrossfleet submit / SQS"),
    "intake": (3.0, 6.6, 2.2, 0.9, "#fde9c9", "intake queue\n(+ DLQ)"),
    "router": (5.8, 6.6, 2.4, 0.9, "#d6e9f8", "IntakeRouter Lambda\nvalidate, place, record"),
    "rejects": (9.0, 6.6, 2.0, 0.9, "#fde9c9", "rejects queue\n(reason)"),
    "cpuq": (3.0, 4.4, 2.2, 0.9, "#fde9c9", "cpu queue (+ DLQ)"),
    "gpuq": (8.8, 4.4, 2.2, 0.9, "#fde9c9", "gpu queue (+ DLQ)"),
    "rebalancer": (5.6, 4.2, 2.8, 1.3, "#d6e9f8",
                   "Rebalancer Lambda (1/min)\nlease -> observe -> policy\n-> size + move -> record"),
    "cpu": (2.6, 1.6, 3.0, 1.4, "#d9f2d9",
            "GravitonFleet ASG\nm9g/c9g/r9g, m8g/c8g fallback\nworker agent -> local model server"),
    "gpu": (8.4, 1.6, 3.0, 1.4, "#d9f2d9",
            "AcceleratorCluster ASG\np5 / p5en / g6e (or Neuron)\nworker agent -> local model server"),
    "state": (5.8, 1.8, 2.2, 1.0, "#f3dcf3", "StateTable\nledger, leases,\ndecisions, overrides"),
    "results": (5.8, 0.2, 2.2, 0.8, "#f3dcf3", "ResultsBucket (S3)"),
    "monitoring": (0.1, 3.0, 2.2, 1.4, "#eeeeee", "Monitoring\ndashboards, alarms\n-> SNS (runbook)"),
}
ARROWS = [("producers", "intake", "jobs"), ("intake", "router", ""), ("router", "rejects", "invalid"),
          ("router", "cpuq", "place"), ("router", "gpuq", "place"), ("rebalancer", "cpuq", "move"),
          ("rebalancer", "gpuq", "move"), ("rebalancer", "cpu", "desired"), ("rebalancer", "gpu", "desired"),
          ("cpuq", "cpu", "poll"), ("gpuq", "gpu", "poll"), ("cpu", "state", "claim"), ("gpu", "state", "claim"),
          ("cpu", "results", "results"), ("gpu", "results", "results"), ("rebalancer", "state", "decisions")]


def centre(name: str) -> tuple[float, float]:
    x, y, w, h, _, _ = BOXES[name]
    return x + w / 2, y + h / 2


def edge_point(name: str, towards: tuple[float, float], gap: float = 0.08) -> tuple[float, float]:
    """Where the line from a box's centre towards a point leaves the box (plus a small gap)."""
    _, _, w, h, _, _ = BOXES[name]
    cx, cy = centre(name)
    dx, dy = towards[0] - cx, towards[1] - cy
    scale = min((w / 2 + gap) / abs(dx) if dx else float("inf"), (h / 2 + gap) / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


def main() -> None:
    figure, axis = plt.subplots(figsize=(11.5, 8))
    axis.set_xlim(0, 11.6)
    axis.set_ylim(0, 7.9)
    axis.axis("off")
    axis.set_title("crossfleet: one stack per US region (explicit env), same shape in each", fontsize=12)
    for x, y, w, h, colour, label in BOXES.values():
        axis.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", facecolor=colour,
                                      edgecolor="#555555", zorder=2))
        axis.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=8.5, zorder=3)
    for source, target, label in ARROWS:
        x1, y1 = edge_point(source, centre(target))
        x2, y2 = edge_point(target, centre(source))
        axis.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=12, color="#333333",
                                       shrinkA=0, shrinkB=0, linewidth=1, zorder=4))
        if label:
            axis.text((x1 + x2) / 2, (y1 + y2) / 2, label, fontsize=7.5, color="#1f4e79",
                      ha="center", va="center", backgroundcolor="white", zorder=5)
    axis.text(0.2, 0.1, "Private subnets, VPC endpoints, IMDSv2, encrypted volumes, Session Manager only.",
              fontsize=8, color="#555555")
    figure.tight_layout()
    figure.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
