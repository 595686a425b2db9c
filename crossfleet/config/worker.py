"""The `worker` section: the agent on every fleet instance, its runners and its patience."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.errors import ConfigError


@dataclass(frozen=True)
class WorkerConfig:
    """The worker agent on every fleet instance: how it runs jobs and how patient it is."""

    cpu_runner: dict[str, Any]
    gpu_runner: dict[str, Any]
    cpu_concurrency: int
    gpu_concurrency: int
    max_attempts: int
    heartbeat_seconds: int
    # How long the termination lifecycle hook holds a scaling-in instance so its jobs can finish.
    drain_seconds: int


# What the command runner substitutes into argv (worker/crossfleet_worker/runners.py CommandRunner).
ARGV_PLACEHOLDERS = ("job_id", "input", "output")

# Local model servers: llama.cpp's server on the Graviton pool, vLLM on the GPU pool (OpenAI-style APIs).
DEFAULT_RUNNERS = {"cpu": {"kind": "http", "url": "http://127.0.0.1:8080/v1/completions"},
                   "gpu": {"kind": "http", "url": "http://127.0.0.1:8000/v1/completions"}}


def _runner(raw: Any, path: str, default: dict[str, Any]) -> dict[str, Any]:
    s = p.section(raw if raw is not None else default, path, ("kind", "url", "model", "argv", "timeout_seconds"))
    kind = p.choice(s, path, "kind", "http", ("http", "command"))
    runner: dict[str, Any] = {"kind": kind, "timeout_seconds": p.integer(s, path, "timeout_seconds", 600, minimum=1,
                                                                           maximum=86400)}
    if kind == "http":
        url = s.get("url", default.get("url"))
        if not isinstance(url, str) or not re.match(r"^http://(127\.0\.0\.1|localhost)(:\d+)?/", url):
            raise ConfigError(p.join(path, "url"), url, "a local model server URL, e.g. http://127.0.0.1:8000/v1/completions")
        runner["url"] = url
        if s.get("model") is not None:
            runner["model"] = str(s["model"])
    else:
        # Not p.string_list: a command line may repeat an argument (-v -v), which that refuses.
        argv = s.get("argv", [])
        if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
            raise ConfigError(p.join(path, "argv"), argv, "a list of strings (the command line)")
        if not argv:
            raise ConfigError(p.join(path, "argv"), [], "the command to run, e.g. [\"python3\", \"run.py\", "
                                                         "\"{input}\", \"{output}\"]")
        for i, arg in enumerate(argv):
            # The runner fills these with str.format: anything else would fail every job at run time.
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(arg) if name is not None}
            except ValueError as error:
                raise ConfigError(p.join(p.join(path, "argv"), i), arg, f"a valid template ({error})") from None
            unknown = sorted(names - set(ARGV_PLACEHOLDERS))
            if unknown:
                raise ConfigError(p.join(p.join(path, "argv"), i), arg,
                                  f"only the placeholders {', '.join('{' + n + '}' for n in ARGV_PLACEHOLDERS)} "
                                  f"(not {{{unknown[0]}}}); write {{{{ and }}}} for literal braces")
        runner["argv"] = list(argv)
    return runner


def parse_worker(raw: Any) -> WorkerConfig:
    path = "worker"
    s = p.section(raw, path, ("cpu_runner", "gpu_runner", "cpu_concurrency", "gpu_concurrency", "max_attempts",
                              "heartbeat_seconds", "drain_seconds"))
    return WorkerConfig(
        cpu_runner=_runner(s.get("cpu_runner"), p.join(path, "cpu_runner"), DEFAULT_RUNNERS["cpu"]),
        gpu_runner=_runner(s.get("gpu_runner"), p.join(path, "gpu_runner"), DEFAULT_RUNNERS["gpu"]),
        cpu_concurrency=p.integer(s, path, "cpu_concurrency", 4, minimum=1, maximum=512),
        gpu_concurrency=p.integer(s, path, "gpu_concurrency", 32, minimum=1, maximum=2048),
        max_attempts=p.integer(s, path, "max_attempts", 3, minimum=1, maximum=100),
        heartbeat_seconds=p.integer(s, path, "heartbeat_seconds", 60, minimum=5, maximum=3600),
        drain_seconds=p.integer(s, path, "drain_seconds", 900, minimum=30, maximum=7200),
    )
