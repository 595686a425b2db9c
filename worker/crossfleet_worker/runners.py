"""How a job is run: a command template, or an HTTP call to a local model server."""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crossfleet_control.core.jobs import Job


class JobFailed(RuntimeError):
    """The job ran and failed; the reason is kept in the ledger (and the DLQ once retries are spent)."""


class Runner(Protocol):
    def run(self, job: Job, payload: bytes) -> bytes: ...


@dataclass(frozen=True)
class CommandRunner:
    """Runs `argv` with {job_id}, {input} and {output} replaced; the output file (or stdout) is the result.

    Example: ["python3", "/opt/evals/run.py", "--in", "{input}", "--out", "{output}"].
    """

    argv: tuple[str, ...]
    timeout_seconds: float = 3600
    # On instances: the unprivileged user jobs run as (worker/install.sh creates it and blocks its traffic to the
    # instance metadata service, so a job holds no instance-role credentials). The agent reads the payload and
    # writes the result; the job sees only its input and output files. None runs as the agent (local playground).
    run_as: str | None = None

    def run(self, job: Job, payload: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="crossfleet-", ignore_cleanup_errors=True) as folder:
            input_path, output_path = Path(folder) / "input.json", Path(folder) / "output"
            input_path.write_bytes(payload)
            argv = [a.format(job_id=job.id, input=input_path, output=output_path) for a in self.argv]
            env = None
            if self.run_as:
                argv, env = self._as_job_user(argv, Path(folder), input_path)
            try:
                done = subprocess.run(argv, capture_output=True, timeout=self.timeout_seconds, check=False, env=env)
            except subprocess.TimeoutExpired:
                raise JobFailed(f"command timed out after {self.timeout_seconds:.0f}s") from None
            except OSError as error:
                raise JobFailed(f"command could not start: {error}") from None
            if done.returncode != 0:
                tail = done.stderr.decode(errors="replace")[-500:]
                raise JobFailed(f"command exited {done.returncode}: {tail}")
            return output_path.read_bytes() if output_path.exists() else done.stdout

    def _as_job_user(self, argv: list[str], folder: Path, input_path: Path) -> tuple[list[str], dict[str, str]]:
        """setpriv (util-linux) switches to the job user and drops every capability, inheritable and ambient
        included, so the job cannot regain the agent's CAP_SETUID; the environment is a fresh minimal one."""
        assert self.run_as is not None
        folder.chmod(0o733)  # the job may create its output and read its input, not list the folder
        input_path.chmod(0o644)
        user = self.run_as
        wrapped = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all",
                   "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]
        return wrapped, {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(folder), "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class HttpRunner:
    """POSTs an OpenAI-style completion to a local model server (vLLM or llama.cpp `server`).

    The payload's `prompt` (or `messages` for chat) is sent with max_tokens from the job's size.
    """

    url: str = "http://127.0.0.1:8000/v1/completions"
    model: str | None = None
    timeout_seconds: float = 600

    def run(self, job: Job, payload: bytes) -> bytes:
        body: dict[str, Any] = json.loads(payload or b"{}")
        request_body = {k: v for k, v in body.items() if k in ("prompt", "messages", "temperature", "stop")}
        request_body.setdefault("max_tokens", max(1, job.output_tokens) if job.output_tokens else 256)
        if self.model:
            request_body["model"] = self.model
        request = urllib.request.Request(self.url, data=json.dumps(request_body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return response.read()
        except OSError as error:
            raise JobFailed(f"model server {self.url} failed: {error}") from None


def build_runner(config: dict[str, Any]) -> Runner:
    kind = config.get("kind", "http")
    if kind == "command":
        return CommandRunner(argv=tuple(config["argv"]), timeout_seconds=float(config.get("timeout_seconds", 3600)),
                             run_as=config.get("run_as"))
    if kind == "http":
        return HttpRunner(url=config.get("url", HttpRunner.url), model=config.get("model"),
                          timeout_seconds=float(config.get("timeout_seconds", 600)))
    raise ValueError(f"runner kind {kind!r}: one of command, http")
