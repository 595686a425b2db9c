"""README benchmark tables, generated from bench-out/*/bench.json (never typed by hand).

`python -m crossfleet.sim.report bench-out [--readme README.md]` prints the tables, or rewrites the part of the
README between the `<!-- bench:begin -->` and `<!-- bench:end -->` markers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.2f}"


def scenario_table(report: dict[str, Any]) -> str:
    bounds = report["bounds"]
    bound = report["lower_bound_cost_usd"]
    serving = any("ttft_p99_seconds" in r for r in report["policies"].values())
    gap = bounds.get("integer_gap")
    integer = _money(bounds.get("integer_usd"))
    if bounds.get("integer_usd") is None:
        # No proven figure (skipped, or HiGHS stopped without a dual bound): say why, never show an incumbent.
        integer = f"not proven ({bounds.get('integer_status') or 'skipped'})"
    lines = [f"**{report['scenario']}** ({report['jobs']:,} jobs). Proven lower bound {_money(bound)}: fluid LP "
             f"{_money(bounds['fluid_usd'])}, integer MILP {integer}"
             + (f" (HiGHS gap {gap:.2%}, at most {bounds.get('integer_miss_budget'):,} late jobs)"
                if gap is not None and bounds.get("integer_usd") is not None else "") + ".", ""]
    if serving:
        lines += ["| policy | cost | x bound | SLO (TTFT and TPOT) | TTFT p99 s | TPOT p99 s | failed | vs frontier |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| policy | cost | x bound | SLO (deadline) | p50 s | p99 s | moves | vs frontier |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["policies"].items():
        ratio = report["cost_vs_frontier"].get(name, "")
        versus = "-" if ratio == "" else ("never reached" if ratio is None else f"{ratio:.2f}")
        if name in report["frontiers"]:
            versus = "(frontier)"
        if serving:
            middle = (f"{r.get('ttft_p99_seconds') or 0:.2f} | {r.get('tpot_p99_seconds') or 0:.3f} | "
                      f"{r.get('requests_failed', 0):,}")
        else:
            middle = f"{r['p50_seconds'] or 0:.1f} | {r['p99_seconds'] or 0:.1f} | {r['moves']:,}"
        lines.append(f"| {name} | {_money(r['cost_usd'])} | {r['cost_usd'] / bound:.2f} | {r['slo_attainment']:.3f} | "
                     f"{middle} | {versus} |")
    ours = next((n for n in report["policies"] if n.endswith("crossfleet")), None)
    if ours and report["cost_vs_frontier"]:
        parts = []
        for baseline, ratio in report["cost_vs_frontier"].items():
            parts.append(f"{baseline} {'never reaches it' if ratio is None else f'{ratio:.2f}x'}")
        lines += ["", f"{ours} against each baseline's frontier at {ours}'s SLO "
                      f"({report['policies'][ours]['slo_attainment']:.3f}): " + ", ".join(parts) + "."]
    if report["ablations"]:
        lines += ["", "| ablation (crossfleet with one mechanism off or changed) | cost | SLO |", "|---|---:|---:|"]
        lines += [f"| {name} | {_money(a['cost_usd'])} | {a['slo_attainment']:.3f} |"
                  for name, a in report["ablations"].items()]
    lines += ["", "| frontier point | " + " | ".join(report["frontiers"]) + " |",
              "|---|" + "---:|" * len(report["frontiers"])]
    knobs = sorted({p["knob"] for points in report["frontiers"].values() for p in points})
    for knob in knobs:
        cells = []
        for points in report["frontiers"].values():
            point = next((p for p in points if p["knob"] == knob), None)
            cells.append("" if point is None else f"{_money(point['cost_usd'])} / {point['slo_attainment']:.3f}")
        lines.append(f"| knob {knob:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The rebalancer's targets: SLO attainment per scenario (0.98 where a region's GPUs are gone for 20 minutes, 0.99
# elsewhere), cost within 1.5x the proven bound and at most 0.80x the best fair baseline's frontier at the same SLO.
SLO_TARGETS = {"gpu-shortage": 0.98}
DEFAULT_SLO_TARGET = 0.99
BOUND_TARGET = 1.5
FRONTIER_TARGET = 0.80


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else f"missed by {abs(value - target):.3f}"


def _worth(report: dict[str, Any], ablation_name: str, slo: float, cost: float) -> str:
    """What the mechanism the ablation switches off adds: SLO points and cost change against the ablation."""
    ablation = report["ablations"].get(ablation_name)
    if ablation is None or not ablation["cost_usd"]:
        return "-"
    return (f"{slo - ablation['slo_attainment']:+.3f}, "
            f"{(cost - ablation['cost_usd']) / ablation['cost_usd']:+.1%}")


def targets_table(reports: list[dict[str, Any]]) -> str:
    """One row per scenario: crossfleet against each target, and what its moves and failover are worth (the
    `no-moves` and `no-moves-or-failover` ablations), all from bench.json."""
    lines = ["**Targets** (crossfleet's row of each scenario below; SLO target "
             f"{DEFAULT_SLO_TARGET} or {SLO_TARGETS['gpu-shortage']} on gpu-shortage, cost <= {BOUND_TARGET}x the "
             f"proven bound and <= {FRONTIER_TARGET}x the best baseline frontier at crossfleet's SLO).", "",
             "| scenario | SLO | SLO target | cost / bound | best frontier at its SLO | moves: SLO, cost | "
             "moves + failover: SLO, cost |", "|---|---:|---|---:|---|---|---|"]
    for report in reports:
        ours = next((n for n in report["policies"] if n.endswith("crossfleet")), None)
        if ours is None:
            continue
        mine = report["policies"][ours]
        slo, cost = mine["slo_attainment"], mine["cost_usd"]
        target = SLO_TARGETS.get(report["scenario"], DEFAULT_SLO_TARGET)
        ratio = cost / report["lower_bound_cost_usd"] if report["lower_bound_cost_usd"] else float("inf")
        reached = [r for r in report["cost_vs_frontier"].values() if r is not None]
        if report["cost_vs_frontier"] and not reached:
            frontier = "no baseline reaches it"
        elif reached:
            best = max(reached)  # the baseline whose frontier is cheapest at this SLO gives the largest ratio
            frontier = f"{best:.2f}x ({_verdict(best, FRONTIER_TARGET, False)})"
        else:
            frontier = "-"

        lines.append(f"| {report['scenario']} | {slo:.3f} | {target} ({_verdict(slo, target, True)}) | "
                     f"{ratio:.2f}x ({_verdict(ratio, BOUND_TARGET, False)}) | {frontier} | "
                     f"{_worth(report, 'no-moves', slo, cost)} | {_worth(report, 'no-moves-or-failover', slo, cost)} |")
    return "\n".join(lines)


def tables(bench_dir: Path) -> str:
    reports = [json.loads(p.read_text()) for p in sorted(bench_dir.glob("*/bench.json"))]
    order = {"steady": 0, "burst": 1, "gpu-shortage": 2, "spot-wave": 3, "realtime": 4, "steady-40x": 5,
             "synthetic-bursts": 6, "off-peak": 7, "price-change": 8, "steady-warm-pool": 9}
    reports.sort(key=lambda r: (order.get(r["scenario"], 99), r["scenario"]))
    if not reports:
        return ""
    timed = [r for r in reports if r.get("wall_seconds") is not None]
    timing = ("Wall time of this `make bench` run, per scenario (every policy, frontier point and ablation, and "
              "both bounds): " + ", ".join(f"{r['scenario']} {r['wall_seconds']:.0f} s" for r in timed)
              + f"; {sum(r['wall_seconds'] for r in timed) / 60:.1f} min in all.") if timed else ""
    return "\n\n".join([targets_table(reports)] + [scenario_table(r) for r in reports] + ([timing] if timing else []))


def rewrite(readme: Path, text: str) -> None:
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} markers to write the tables between")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n<!-- generated by `python -m crossfleet.sim.report bench-out --readme "
                      f"README.md` from bench-out/*/bench.json; do not edit by hand -->\n\n{text}\n\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossfleet.sim.report", description=__doc__)
    parser.add_argument("bench_dir", type=Path, help="the folder make bench writes (bench-out)")
    parser.add_argument("--readme", type=Path, help="rewrite this README's generated section instead of printing")
    args = parser.parse_args(argv)
    text = tables(args.bench_dir)
    if not text:
        print(f"no */bench.json under {args.bench_dir}", file=sys.stderr)
        return 2
    if args.readme:
        rewrite(args.readme, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
