"""`crossfleet local`: the whole system on this machine, as a new user runs it (each in its own process, as the
commands are run, so the emulator's environment never leaks into other tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240


def _crossfleet(*args: str, cwd: Path, env: dict[str, str] | None = None,
                timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crossfleet", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.e2e
def test_local_demo_gives_every_job_one_outcome(tmp_path: Path):
    """`make local-demo`: deploys the default config into moto, submits a mix, runs to the end, exit 0."""
    result = _crossfleet("local", "demo", "--jobs", "40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout
    # 40 jobs, 2 invalid ones, and 1 pinned to the second configured region (forwarded there by the router).
    assert "43 of 43 jobs have an outcome" in summary
    outcomes = json.loads(summary.split("outcomes: ", 1)[1].split(";", 1)[0].replace("'", '"'))
    assert outcomes == {"rejected": 2, "succeeded": 41}
    assert "runner runs per job: max 1" in summary


@pytest.mark.e2e
def test_local_demo_deploys_a_config_with_the_real_time_endpoint(tmp_path: Path):
    config = tmp_path / "realtime.json"
    config.write_text(json.dumps({"regions": ["us-east-1"], "realtime": {"enabled": True, "certificate_arns": {
        "us-east-1": "arn:aws:acm:us-east-1:111122223333:certificate/12345678-1234-1234-1234-123456789012"}}}))
    result = _crossfleet("local", "demo", "--config", str(config), "--jobs", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AWS::EC2::SecurityGroupEgress" in result.stdout, "what moto skips is said"
    assert "12 of 12 jobs have an outcome" in result.stdout


@pytest.mark.e2e
def test_local_up_serves_every_operator_command_until_down(tmp_path: Path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"id": f"play-{i}", "class": "eval", "placement": "either",
                                          "deadline_seconds": 600, "size": {"input_tokens": 900, "output_tokens": 64}})
                              for i in range(3)) + "\n")
    up = subprocess.Popen([sys.executable, "-m", "crossfleet", "local", "up", "--port", "0", "--config",
                           str(_one_region(tmp_path))], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        state = tmp_path / ".crossfleet-local.json"
        deadline = time.monotonic() + TIMEOUT
        while not state.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert state.exists(), up.stdout.read() if up.poll() is not None else "not up in time"
        env = {"AWS_ENDPOINT_URL": json.loads(state.read_text())["url"], "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "CROSSFLEET_CONFIG": str(_one_region(tmp_path))}
        assert _crossfleet("submit", str(jobs), cwd=tmp_path, env=env).returncode == 0
        finished = False
        while not finished and time.monotonic() < deadline:
            job = _crossfleet("job", "play-2", "--json", cwd=tmp_path, env=env)
            finished = job.returncode == 0 and json.loads(job.stdout)["head"]["status"] == "succeeded"
            time.sleep(1)
        assert finished, "the playground's router and workers ran the submitted job"
        status = _crossfleet("status", "--json", cwd=tmp_path, env=env)
        assert {row["pool"] for row in json.loads(status.stdout)} == {"cpu", "gpu"}
        assert _crossfleet("freeze", "gpu", "--note", "try", cwd=tmp_path, env=env).returncode == 0
        time.sleep(4)  # two simulated minutes at x30: the next cycles see the freeze
        explained = _crossfleet("explain", "--last", "1", cwd=tmp_path, env=env)
        assert "frozen by operator: try" in explained.stdout
        assert _crossfleet("plan", cwd=tmp_path, env=env).returncode == 0
        assert _crossfleet("local", "down", cwd=tmp_path).returncode == 0
        assert up.wait(timeout=60) == 0
        assert not state.exists()
    finally:
        if up.poll() is None:
            up.kill()


def _one_region(folder: Path) -> Path:
    path = folder / "one-region.json"
    if not path.exists():
        path.write_text(json.dumps({"regions": ["us-east-1"]}))
    return path
