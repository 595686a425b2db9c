"""The crossfleet command line: what-if simulation and benchmarks today; submit/status/explain to come."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from crossfleet.config.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossfleet", description="Graviton + GPU fleets, rebalanced.")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="replay a scenario through one policy")
    simulate.add_argument("--scenario", required=True, help="scenario JSON file (see scenarios/)")
    simulate.add_argument("--policy", default="crossfleet",
                          help="crossfleet, gpu-only, cpu-only, static-split or target-tracking")
    simulate.add_argument("--trace", help="an Azure LLM inference trace CSV to use instead of the scenario's")
    simulate.add_argument("--seed", type=int, help="override the scenario's seed")
    simulate.add_argument("--out", help="directory for result.json and plots")
    simulate.add_argument("--json", action="store_true", help="print the result as JSON")

    bench = commands.add_parser("bench", help="run every policy and the offline lower bound on a scenario")
    bench.add_argument("--scenario", required=True)
    bench.add_argument("--trace")
    bench.add_argument("--seed", type=int)
    bench.add_argument("--out", help="directory for bench.json and per-policy results")
    bench.add_argument("--json", action="store_true")
    return parser


def _scenario(args: argparse.Namespace):
    from dataclasses import replace

    from crossfleet.sim.scenario import load_scenario

    scenario = load_scenario(args.scenario, trace_override=args.trace)
    return replace(scenario, seed=args.seed) if args.seed is not None else scenario


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        scenario = _scenario(args)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    progress = sys.stderr.isatty()
    started = time.perf_counter()
    if args.command == "simulate":
        from crossfleet.sim.run import simulate, write_result

        try:
            result, sim = simulate(scenario, args.policy, progress=progress)
        except ValueError as error:
            print(f"crossfleet: {error}", file=sys.stderr)
            return EXIT_USAGE
        if args.out:
            write_result(result, sim, Path(args.out))
        print(json.dumps(result, indent=2, sort_keys=True) if args.json else _one_line(result))
    else:
        from crossfleet.sim.run import bench, bench_table

        report = bench(scenario, Path(args.out) if args.out else None, progress=progress)
        print(json.dumps(report, indent=2, sort_keys=True) if args.json else bench_table(report))
    print(f"({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    return EXIT_OK


def _one_line(result: dict) -> str:
    return (f"{result['policy']} on {result['scenario']}: cost ${result['cost_usd']:.2f}, SLO "
            f"{result['slo_attainment']:.3f}, p50 {result['latency_p50_s']}s, p99 {result['latency_p99_s']}s, "
            f"{result['jobs_completed']}/{result['jobs_submitted']} completed, {result['jobs_lost']} lost")
