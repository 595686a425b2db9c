"""The crossfleet command line: submit and follow jobs, operate the fleets, simulate and benchmark."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from crossfleet.config.errors import ConfigError
from crossfleet.config.loader import load_for_cli
from crossfleet.config.model import AppConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`, or argparse's one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: {minimum} or more")
        return value
    return parse


_positive_int, _non_negative_int = _whole_number(1), _whole_number(0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossfleet", description="Graviton + GPU fleets, rebalanced.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every command that names stacks, regions or limits reads the config the stacks were synthesized from.
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("--config", metavar="PATH",
                            help="the JSON config file you synthesized and deployed with (default: "
                                 "$CROSSFLEET_CONFIG, else the crossfleet block of cdk.json)")

    simulate = commands.add_parser("simulate", help="replay a scenario through one policy")
    simulate.add_argument("--scenario", required=True, help="scenario JSON file (see scenarios/)")
    simulate.add_argument("--policy", default=None,
                          help="queue scenarios: crossfleet, gpu-only, cpu-only, static-split, target-tracking; "
                               "real-time scenarios (with a `serving` section): serving-crossfleet, "
                               "serving-gpu-only, serving-target-tracking (default: the scenario's crossfleet)")
    simulate.add_argument("--trace", help="an Azure LLM inference trace CSV to use instead of the scenario's")
    simulate.add_argument("--seed", type=int, help="override the scenario's seed")
    simulate.add_argument("--out", help="directory for result.json and plots")
    simulate.add_argument("--json", action="store_true", help="print the result as JSON")

    submit = commands.add_parser("submit", parents=[configured],
                                 help="send jobs (JSON, a JSON list, or JSON Lines) to an intake queue")
    submit.add_argument("file", nargs="?", default="-", help="jobs file; - or nothing reads standard input")
    submit.add_argument("--region", help="the configured region whose intake queue receives them (default: the "
                                         "first configured region)")
    submit.add_argument("--stack", help="region stack name (default: NAME-STAGE-REGION from the config)")
    submit.add_argument("--queue-url", help="intake queue URL (skips the stack lookup)")
    submit.add_argument("--endpoint-url", help="AWS endpoint override, e.g. a local emulator")
    submit.add_argument("--json", action="store_true", help="print the report as JSON")

    job = commands.add_parser("job", parents=[configured], help="a job's ledger: current status and every transition")
    job.add_argument("job_id", help="the job's id (as submit printed it)")
    job.add_argument("--region", help="the configured region it was submitted to (default: the first configured)")
    job.add_argument("--stack", help="region stack name (default: NAME-STAGE-REGION from the config)")
    job.add_argument("--table", help="state table name (skips the stack lookup)")
    job.add_argument("--endpoint-url", help="AWS endpoint override, e.g. a local emulator")
    job.add_argument("--json", action="store_true", help="machine-readable output")

    def live(name: str, help_text: str, *, pool: bool = False, regions: bool = False) -> argparse.ArgumentParser:
        command = commands.add_parser(name, parents=[configured], help=help_text, description=help_text)
        if pool:
            command.add_argument("pool", help="cpu (Graviton), gpu (accelerators), or endpoint (real-time split)")
        if regions:
            command.add_argument("--region", action="append", help="a region (repeat; default: all configured)")
        else:
            command.add_argument("--region", help="a configured region (default: the first configured)")
        command.add_argument("--stack", help="region stack name (default: NAME-STAGE-REGION from the config)")
        command.add_argument("--endpoint-url", help="AWS endpoint override, e.g. a local emulator")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        return command

    live("status", "live state of every pool in the configured regions", regions=True)
    explain = live("explain", "the rebalancer's recent decisions with their reasons")
    explain.add_argument("--last", type=_positive_int, default=5, help="how many decisions, newest first (default 5)")
    live("plan", "what the rebalancer would do now (changes nothing)")
    freeze = live("freeze", "stop the rebalancer from resizing a pool or moving its jobs", pool=True)
    freeze.add_argument("--note", default="", help="why (shown in status and the decision log)")
    live("unfreeze", "clear a freeze or pin on a pool", pool=True)
    pin = live("pin", "hold a pool at a desired capacity within its min and max (or `pin endpoint N`: N%% of "
                      "real-time requests to the GPUs)", pool=True)
    pin.add_argument("desired", type=_non_negative_int, help="instances (a pool) or the GPU share in %% (endpoint)")
    pin.add_argument("--note", default="", help="why (shown in status and the decision log)")
    drain = live("drain", "take a pool down to its minimum and keep it there (new either-work goes elsewhere)",
                 pool=True)
    drain.add_argument("--note", default="drained by operator", help="why (shown in status and the decision log)")
    redrive = live("redrive", "move a pool's dead-lettered jobs back to its queue to run again", pool=True)
    redrive.add_argument("--limit", type=_positive_int, default=100, help="at most this many DLQ entries (default 100)")

    bench = commands.add_parser("bench", help="run every policy and the offline lower bound on a scenario")
    bench.add_argument("--scenario", required=True, help="scenario JSON file (see scenarios/)")
    bench.add_argument("--trace", help="an Azure LLM inference trace CSV to use instead of the scenario's")
    bench.add_argument("--seed", type=int, help="override the scenario's seed")
    bench.add_argument("--out", help="directory for bench.json and per-policy results")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")

    local = commands.add_parser("local", help="the whole system on this machine, in moto's server on loopback")
    local_commands = local.add_subparsers(dest="local_command", required=True, metavar="ACTION",
                                          help="up, demo or down")
    for name, text in (("up", "deploy your config into moto's server and keep it running with the router, the "
                              "rebalancer and worker agents in this process (Ctrl-C or `crossfleet local down` "
                              "stops it)"),
                       ("demo", "deploy, submit a mix of jobs, run until every job has an outcome, print a summary "
                                "(exit 0 when all have one and none ran twice)")):
        action = local_commands.add_parser(name, parents=[configured], help=text, description=text)
        action.add_argument("--speed", type=float, default=30.0,
                            help="simulated seconds per real second (default 30: a 1-minute cycle every 2 s)")
        action.add_argument("--workers", type=_positive_int, default=2,
                            help="at most this many instances per Auto Scaling group run a worker agent (default 2)")
        action.add_argument("--runner", choices=("fake", "command"), default="fake",
                            help="fake: each job takes --run-seconds of simulated time; command: the config's "
                                 "command runner, for real")
        action.add_argument("--run-seconds", type=float, default=5.0,
                            help="the fake runner's run time per job, simulated seconds (default 5)")
        if name == "up":
            action.add_argument("--port", type=int, default=5000, help="loopback port for moto (default 5000; 0: any)")
        else:
            action.add_argument("--jobs", type=_positive_int, default=60, help="how many demo jobs (default 60)")
            action.add_argument("--timeout", type=float, default=150.0,
                                help="give up after this many real seconds (default 150)")
    local_commands.add_parser("down", help="stop the playground `crossfleet local up` started here")

    cost = commands.add_parser("cost", parents=[configured],
                               help="hourly cost of the configured deployment: idle, at a typical load, at maximum")
    cost.add_argument("--typical-gpu", type=_non_negative_int, metavar="N",
                      help="GPU instances per region at the typical load (default: halfway from min to max)")
    cost.add_argument("--typical-cpu", type=_non_negative_int, metavar="N",
                      help="Graviton instances per region at the typical load (default: halfway from min to max)")
    cost.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _scenario(args: argparse.Namespace):
    from dataclasses import replace

    from crossfleet.sim.scenario import load_scenario

    scenario = load_scenario(args.scenario, trace_override=args.trace)
    return replace(scenario, seed=args.seed) if args.seed is not None else scenario


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `crossfleet status --json | head`: the reader left; say nothing more (and nothing at exit either).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "cost":
        return _cost(args)
    if args.command == "local":
        return _local(args)
    if getattr(args, "config", None) is not None or args.command in ("submit", "job", *OPERATOR_COMMANDS):
        try:
            args.deployment = load_for_cli(args.config, os.environ)
        except ConfigError as error:
            print(error, file=sys.stderr)
            return EXIT_USAGE
        problem = _check_regions(args)
        if problem:
            print(f"crossfleet {args.command}: {problem}", file=sys.stderr)
            return EXIT_USAGE
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
            policy = args.policy or ("serving-crossfleet" if scenario.serving is not None else "crossfleet")
            result, sim = simulate(scenario, policy, progress=progress)
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


def _cost(args: argparse.Namespace) -> int:
    from crossfleet import cost

    try:
        config = load_for_cli(args.config, os.environ)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    costs = cost.estimate(config, typical_cpu=args.typical_cpu, typical_gpu=args.typical_gpu)
    print(json.dumps(cost.as_json(costs), indent=2, sort_keys=True) if args.json else cost.table(costs))
    return EXIT_OK


def _local(args: argparse.Namespace) -> int:
    import tempfile

    from crossfleet import local

    if args.local_command == "down":
        return local.down()
    try:
        config = load_for_cli(args.config, os.environ)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    if args.speed <= 0 or args.run_seconds < 0:
        print("crossfleet local: --speed must be above 0 and --run-seconds 0 or more", file=sys.stderr)
        return EXIT_USAGE
    options = local.LocalOptions(speed=args.speed, workers_per_pool=args.workers, runner=args.runner,
                                 run_seconds=args.run_seconds)
    with tempfile.TemporaryDirectory(prefix="crossfleet-local-") as work_dir:
        if args.local_command == "up":
            return local.up(config, options, port=args.port, work_dir=Path(work_dir))
        return local.demo(config, options, jobs=args.jobs, timeout_seconds=args.timeout, work_dir=Path(work_dir))


def _one_line(result: dict) -> str:
    return (f"{result['policy']} on {result['scenario']}: cost ${result['cost_usd']:.2f}, SLO "
            f"{result['slo_attainment']:.3f}, p50 {result['latency_p50_s']}s, p99 {result['latency_p99_s']}s, "
            f"{result['jobs_completed']}/{result['jobs_submitted']} completed, {result['jobs_lost']} lost")


def _submit(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from crossfleet.submit import JobsFileError, read_jobs, submit

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        items = read_jobs(text)
    except (OSError, UnicodeDecodeError, JobsFileError) as error:
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


def _check_regions(args: argparse.Namespace) -> str | None:
    """Fill in the default region and refuse a region the config does not deploy to (one line, exit 2)."""
    configured = [r.region for r in args.deployment.regions]
    asked = args.region if isinstance(args.region, list) else [args.region] if args.region else []
    for region in asked:
        if region not in configured:
            return f"--region {region!r} is not allowed: one of the configured regions {', '.join(configured)}"
    if not isinstance(args.region, list) and args.region is None and args.command != "status":
        args.region = configured[0]
    return None


def _stack_output(session, args: argparse.Namespace, key: str) -> str:
    stack = args.stack or args.deployment.stack_name(args.region)
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
        print(f"crossfleet job: no job {args.job_id} in the ledger of {args.region} yet{_intake_hint(session, args)}",
              file=sys.stderr)
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


def _intake_hint(session, args: argparse.Namespace) -> str:
    """A job appears in the ledger once the router has placed it: say whether the intake queue still holds work."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        url = _stack_output(session, args, "IntakeQueueUrl")
        attributes = session.client("sqs", endpoint_url=args.endpoint_url).get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    except (BotoCoreError, ClientError, LookupError):
        return ""
    waiting = sum(int(v) for v in attributes["Attributes"].values())
    if waiting:
        return (f": the intake queue holds {waiting} message(s) the router has not placed yet; a job submitted "
                "seconds ago is probably among them")
    return (": the intake queue is empty, so it was not submitted to this region (or it was rejected: see the "
            "rejects queue)")


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
    deployment: AppConfig = args.deployment
    configured = [r.region for r in deployment.regions]
    regions = (args.region or configured) if args.command == "status" else [args.region]
    try:
        views = [ops.region_view(session, r, args.stack or deployment.stack_name(r), args.endpoint_url)
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

            if args.pool not in view.settings.pools:
                raise ValueError(f"pool {args.pool!r}: one of {', '.join(view.settings.pools)}")
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
                decision_id = f" (decision {decision['decision_id']})" if "decision_id" in decision else ""
                print(f"{stamp} {decision['mode']}{decision_id}: {len(decision['moves'])} moves")
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
            low, high = ops.pin_range(view, args.pool)
            if not low <= args.desired <= high:
                what = "the GPU share in %" if args.pool == ops.ENDPOINT else f"{args.pool}'s min and max size"
                print(f"crossfleet pin: {args.pool} {args.desired} is not allowed: {low} to {high} ({what})",
                      file=sys.stderr)
                return EXIT_USAGE
            state.set_override(args.pool, pinned_desired=args.desired, note=args.note)
        elif args.command == "drain":
            # Pinned at zero: the policy clamps it to the group's minimum; the router avoids it for either-work.
            state.set_override(args.pool, pinned_desired=0, note=args.note)
        echo = {"region": view.region, "pool": args.pool, "command": args.command,
                "override": {"frozen": args.command == "freeze",
                             "pinned_desired": args.desired if args.command == "pin"
                             else 0 if args.command == "drain" else None,
                             "note": getattr(args, "note", "")} if args.command != "unfreeze" else None}
        print(json.dumps(echo) if args.json
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


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns[:-1]}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns[:-1]) + "  " + columns[-1]]
    for row in rows:
        lines.append("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns[:-1])
                     + "  " + str(row.get(columns[-1], ""))[:80])
    return "\n".join(lines)
