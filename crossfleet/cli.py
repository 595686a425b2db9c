"""The crossfleet command line: submit and follow jobs, operate the fleets, simulate and benchmark."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
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

    submit = commands.add_parser("submit", help="send jobs (JSON, a JSON list, or JSON Lines) to an intake queue")
    submit.add_argument("file", nargs="?", default="-", help="jobs file; - or nothing reads standard input")
    submit.add_argument("--region", default="us-east-1", help="the region whose intake queue receives them")
    submit.add_argument("--stack", help="region stack name (default: NAME-STAGE-REGION from cdk.json)")
    submit.add_argument("--queue-url", help="intake queue URL (skips the stack lookup)")
    submit.add_argument("--endpoint-url", help="AWS endpoint override, e.g. a local emulator")
    submit.add_argument("--json", action="store_true", help="print the report as JSON")

    job = commands.add_parser("job", help="a job's ledger: current status and every transition")
    job.add_argument("job_id")
    job.add_argument("--region", default="us-east-1")
    job.add_argument("--stack", help="region stack name (default: NAME-STAGE-REGION from cdk.json)")
    job.add_argument("--table", help="state table name (skips the stack lookup)")
    job.add_argument("--endpoint-url", help="AWS endpoint override, e.g. a local emulator")
    job.add_argument("--json", action="store_true")

    def live(name: str, help_text: str, *, pool: bool = False, regions: bool = False) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        if pool:
            command.add_argument("pool", help="cpu (Graviton) or gpu (accelerators)")
        if regions:
            command.add_argument("--region", action="append", help="a region (repeat; default: all configured)")
        else:
            command.add_argument("--region", default="us-east-1")
        command.add_argument("--stack", help="region stack name (default: NAME-STAGE-REGION from cdk.json)")
        command.add_argument("--endpoint-url", help="AWS endpoint override, e.g. a local emulator")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        return command

    live("status", "live state of every pool in the configured regions", regions=True)
    explain = live("explain", "the rebalancer's recent decisions with their reasons")
    explain.add_argument("--last", type=int, default=5)
    live("plan", "what the rebalancer would do now (changes nothing)")
    freeze = live("freeze", "stop the rebalancer from resizing a pool or moving its jobs", pool=True)
    freeze.add_argument("--note", default="", help="why (shown in status and the decision log)")
    live("unfreeze", "clear a freeze or pin on a pool", pool=True)
    pin = live("pin", "hold a pool at a desired capacity (or `pin endpoint N`: N% of requests to GPUs)", pool=True)
    pin.add_argument("desired", type=int)
    pin.add_argument("--note", default="")
    drain = live("drain", "take a pool down to its minimum and keep it there (new either-work goes elsewhere)",
                 pool=True)
    drain.add_argument("--note", default="drained by operator")
    redrive = live("redrive", "move a pool's dead-lettered jobs back to its queue to run again", pool=True)
    redrive.add_argument("--limit", type=int, default=100, help="at most this many DLQ entries (default 100)")

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
    if args.command == "submit":
        return _submit(args)
    if args.command == "job":
        return _job(args)
    if args.command in OPERATOR_COMMANDS:
        return _operate(args)
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


def _submit(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from crossfleet.submit import read_jobs, submit

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        items = read_jobs(text)
    except (OSError, json.JSONDecodeError) as error:
        print(f"crossfleet submit: cannot read jobs from {args.file}: {error}", file=sys.stderr)
        return EXIT_USAGE
    session = boto3.session.Session(region_name=args.region)
    try:
        queue_url = args.queue_url or _stack_output(session, args, "IntakeQueueUrl")
        report = submit(session.client("sqs", endpoint_url=args.endpoint_url), queue_url, items)
    except NoCredentialsError:
        print("crossfleet submit: no AWS credentials found (set AWS_PROFILE or run `aws configure`)",
              file=sys.stderr)
        return EXIT_FAILED
    except (BotoCoreError, ClientError, LookupError) as error:
        print(f"crossfleet submit: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"accepted": report.accepted, "invalid": report.invalid, "failed": report.failed}))
    else:
        for job_id in report.accepted:
            print(job_id)
        for index, reason in report.invalid:
            print(f"job {index}: not sent: {reason}", file=sys.stderr)
        for job_id, reason in report.failed:
            print(f"job {job_id}: send failed: {reason}", file=sys.stderr)
        print(f"{len(report.accepted)} submitted, {len(report.invalid)} invalid, {len(report.failed)} failed",
              file=sys.stderr)
    return EXIT_OK if not report.invalid and not report.failed else EXIT_FAILED


def _default_stack_name(region: str) -> str:
    from crossfleet.config import parse_config

    root = Path(__file__).resolve().parents[1]
    context = json.loads((root / "cdk.json").read_text()).get("context", {}) if (root / "cdk.json").exists() else {}
    return parse_config(context.get("crossfleet")).stack_name(region)


def _stack_output(session, args: argparse.Namespace, key: str) -> str:
    stack = args.stack or _default_stack_name(args.region)
    described = session.client("cloudformation", endpoint_url=args.endpoint_url).describe_stacks(StackName=stack)
    for output in described["Stacks"][0].get("Outputs", []):
        if output["OutputKey"] == key:
            return output["OutputValue"]
    raise LookupError(f"stack {stack} has no {key} output: is it a crossfleet region stack?")


def _job(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from crossfleet_control.aws.ledger import Ledger

    session = boto3.session.Session(region_name=args.region)
    try:
        table = args.table or _stack_output(session, args, "StateTableName")
        ledger = Ledger(session.client("dynamodb", endpoint_url=args.endpoint_url), table)
        head, history = ledger.head(args.job_id), ledger.history(args.job_id)
    except NoCredentialsError:
        print("crossfleet job: no AWS credentials found (set AWS_PROFILE or run `aws configure`)", file=sys.stderr)
        return EXIT_FAILED
    except (BotoCoreError, ClientError, LookupError) as error:
        print(f"crossfleet job: {error}", file=sys.stderr)
        return EXIT_FAILED
    if head is None:
        print(f"crossfleet job: no job {args.job_id} in the ledger of {args.region}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"head": head, "history": history}, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{args.job_id}: {head.get('status')} (pool {head.get('pool', '-')}, attempt {head.get('attempt', 0)})"
          + (f", result {head['result_uri']}" if head.get("result_uri") else "")
          + (f", reason: {head['reason']}" if head.get("reason") else ""))
    for event in history:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.pop("at")))
        status = event.pop("status")
        print(f"  {stamp}  {status:<14} {json.dumps(event, sort_keys=True)}")
    return EXIT_OK


OPERATOR_COMMANDS = ("status", "explain", "plan", "freeze", "unfreeze", "pin", "drain", "redrive")


def _endpoint_line(endpoint: dict) -> str:
    """One endpoint decision (`ServingDecision.summary`) as explain and plan print it."""
    return (f"endpoint: GPU share {endpoint['previous_gpu_weight']}% -> {endpoint['gpu_weight']}%: "
            f"{endpoint['reason']}")


def _operate(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from crossfleet import ops

    session = boto3.session.Session()
    regions = (args.region or _configured_regions()) if args.command == "status" else [args.region]
    try:
        views = [ops.region_view(session, r, args.stack or _default_stack_name(r), args.endpoint_url)
                 for r in regions]
        if args.command == "status":
            rows = [row for view in views for row in ops.status(view)]
            print(json.dumps(rows, indent=2) if args.json else _table(rows, (
                "region", "pool", "instance_type", "desired", "in_service", "pending", "min", "max", "queued",
                "in_flight", "override", "capacity", "traffic", "last_reason")))
            return EXIT_OK
        view = views[0]
        if args.command == "redrive":
            from crossfleet.redrive import redrive

            pool_settings = view.settings.pools[args.pool]
            report = redrive(view.client("sqs"), pool_settings.dead_letter_url, pool_settings.queue_url,
                             limit=args.limit)
            print(json.dumps({"moved": report.moved, "failed": report.failed}) if args.json else
                  f"{len(report.moved)} redriven to {args.pool}, {report.failed} failed (left in the DLQ)")
            return EXIT_OK if not report.failed else EXIT_FAILED
        if args.command == "explain":
            decisions = view.state.recent_decisions(args.last)
            if args.json:
                print(json.dumps(decisions, indent=2, sort_keys=True))
            for decision in [] if args.json else decisions:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(decision["at"]))
                print(f"{stamp} {decision['mode']}: {len(decision['moves'])} moves")
                for pool, pool_decision in decision["pools"].items():
                    print(f"  {pool}: {pool_decision['current']} -> {pool_decision['desired']}: "
                          f"{pool_decision['reason']}")
                if decision.get("endpoint"):
                    print(f"  {_endpoint_line(decision['endpoint'])}")
                for pool, health in decision.get("health", {}).items():
                    if health.get("status") != "healthy" or health.get("admit", 1.0) < 1.0:
                        print(f"  {pool} capacity {health['status']}: {health.get('reason', '')}")
                routes = Counter((m.get("reason"), m.get("destination_region")) for m in decision["moves"])
                for (reason, region), count in sorted(routes.items(), key=lambda kv: str(kv[0])):
                    print(f"  moved {count} ({reason}{' to ' + region if region else ''})")
            return EXIT_OK
        if args.command == "plan":
            planned = ops.plan(view)
            if args.json:
                print(json.dumps(planned, indent=2, sort_keys=True))
            else:
                for pool, pool_decision in planned["pools"].items():
                    print(f"{pool}: {pool_decision['current']} -> {pool_decision['desired']}: "
                          f"{pool_decision['reason']}")
                if planned.get("endpoint"):
                    print(_endpoint_line(planned["endpoint"]))
                print("(nothing was changed)")
            return EXIT_OK
        ops.check_pool(view, args.pool, args.command)
        state = view.state
        if args.command == "freeze":
            state.set_override(args.pool, frozen=True, note=args.note)
        elif args.command == "unfreeze":
            state.clear_override(args.pool)
        elif args.command == "pin":
            if args.desired < 0 or (args.pool == ops.ENDPOINT and args.desired > 100):
                what = "the GPU share, 0 to 100" if args.pool == ops.ENDPOINT else "0 or more"
                print(f"crossfleet pin: desired must be {what}", file=sys.stderr)
                return EXIT_USAGE
            state.set_override(args.pool, pinned_desired=args.desired, note=args.note)
        elif args.command == "drain":
            # Pinned at zero: the policy clamps it to the group's minimum; the router avoids it for either-work.
            state.set_override(args.pool, pinned_desired=0, note=args.note)
        print(json.dumps({"region": view.region, "pool": args.pool, "command": args.command}) if args.json
              else f"{args.command}: {args.pool} in {view.region} (takes effect at the next rebalancer cycle)")
        return EXIT_OK
    except NoCredentialsError:
        print(f"crossfleet {args.command}: no AWS credentials found (set AWS_PROFILE or run `aws configure`)",
              file=sys.stderr)
        return EXIT_FAILED
    except ops.DeploymentMissing as missing:
        print(f"crossfleet {args.command}: {missing}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as error:
        print(f"crossfleet {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (BotoCoreError, ClientError) as error:
        print(f"crossfleet {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED


def _configured_regions() -> list[str]:
    from crossfleet.config import parse_config

    root = Path(__file__).resolve().parents[1]
    context = json.loads((root / "cdk.json").read_text()).get("context", {}) if (root / "cdk.json").exists() else {}
    return [r.region for r in parse_config(context.get("crossfleet")).regions]


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns[:-1]}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns[:-1]) + "  " + columns[-1]]
    for row in rows:
        lines.append("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns[:-1])
                     + "  " + str(row.get(columns[-1], ""))[:80])
    return "\n".join(lines)
