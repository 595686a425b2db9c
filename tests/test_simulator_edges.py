"""Simulator edges: a wrong --policy names every policy and its scenario kind; the trace is found by either of its
names, from the scenario's own folder wherever the scenario is copied, or reported in one line with its
download location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossfleet.cli import main as cli_main
from crossfleet.config.errors import ConfigError
from crossfleet.sim.controllers import POLICIES
from crossfleet.sim.scenario import TRACE_NAMES, load_scenario
from crossfleet.sim.serving_controllers import SERVING_POLICIES

DATASET_NAME, SHIPPED_NAME = "AzureLLMInferenceTrace_code.csv", "azure_llm_inference_2023_code.csv"
ROWS = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
    f"2023-11-16 18:15:{second:02d}.0000000,{400 + 10 * second},{5 + second}\n" for second in range(20))


def _scenario(trace_path: str, **top) -> dict:
    return {"name": "edge", "duration_seconds": 120, "drain_seconds": 120, "control_period_seconds": 60, "seed": 1,
            "regions": {"us-east-1": {
                "cpu": {"instance_type": "m9g.16xlarge", "min_size": 1, "max_size": 2, "start": 1},
                "gpu": {"instance_type": "g6e.xlarge", "min_size": 0, "max_size": 2, "start": 1}}},
            "workload": {"inference_trace": {"path": trace_path, "rate_scale": 1, "deadline_seconds": 60}}, **top}


def _write(folder: Path, name: str, scenario: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(scenario))
    return path


def test_the_two_trace_names_are_the_ones_the_dataset_and_the_scenarios_use():
    assert set(TRACE_NAMES) == {DATASET_NAME, SHIPPED_NAME}
    traced = 0
    for scenario in Path(__file__).resolve().parents[1].glob("scenarios/*.json"):
        trace = json.loads(scenario.read_text())["workload"].get("inference_trace")
        if trace is not None:  # a synthetic-only scenario (synthetic-bursts) names no trace
            assert Path(trace["path"]).name == SHIPPED_NAME
            traced += 1
    assert traced >= 5


@pytest.mark.parametrize(("on_disk", "named"), [(DATASET_NAME, SHIPPED_NAME), (SHIPPED_NAME, DATASET_NAME),
                                                (SHIPPED_NAME, SHIPPED_NAME)])
def test_either_name_finds_the_trace(tmp_path: Path, on_disk: str, named: str):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / on_disk).write_text(ROWS)
    scenario = load_scenario(_write(tmp_path, "s.json", _scenario(f"traces/{named}")))
    assert scenario.trace is not None and Path(scenario.trace.path) == tmp_path / "traces" / on_disk


def test_another_file_name_is_not_guessed(tmp_path: Path):
    (tmp_path / SHIPPED_NAME).write_text(ROWS)
    with pytest.raises(ConfigError, match=r"other\.csv"):
        load_scenario(_write(tmp_path, "s.json", _scenario("other.csv")))


def test_a_relative_trace_path_is_read_from_the_scenarios_folder_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    copied = tmp_path / "copied" / "deep"
    (tmp_path / "copied" / "traces").mkdir(parents=True)
    (tmp_path / "copied" / "traces" / SHIPPED_NAME).write_text(ROWS)
    path = _write(copied, "steady.json", _scenario(f"../traces/{SHIPPED_NAME}"))
    monkeypatch.chdir(tmp_path)  # a cwd-relative reading would look in tmp_path/../traces
    scenario = load_scenario(path)
    assert scenario.trace is not None and Path(scenario.trace.path).resolve() == \
        (tmp_path / "copied" / "traces" / SHIPPED_NAME).resolve()


def test_a_scenario_copied_away_from_its_trace_fails_in_one_line_naming_the_path_and_the_download(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = _write(tmp_path / "elsewhere", "steady.json", _scenario(f"../../shared/traces/{SHIPPED_NAME}"))
    assert cli_main(["simulate", "--scenario", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert str((tmp_path / "elsewhere" / "../../shared/traces" / SHIPPED_NAME).resolve()) in err
    assert "github.com/Azure/AzurePublicDataset" in err and DATASET_NAME in err and "--trace" in err


def test_trace_flag_rescues_a_copied_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "mine.csv").write_text(ROWS)
    path = _write(tmp_path / "elsewhere", "steady.json", _scenario(f"../../shared/traces/{SHIPPED_NAME}"))
    assert cli_main(["simulate", "--scenario", str(path), "--trace", str(tmp_path / "mine.csv"), "--json"]) == 0
    # 20 requests over 20 s, replayed from the top for the 120 s run (the trace repeats past its end).
    assert json.loads(capsys.readouterr().out)["jobs_submitted"] == 120


@pytest.mark.parametrize(("serving", "policy"), [(False, "nope"), (True, "nope"), (False, "serving-crossfleet"),
                                                 (True, "crossfleet"), (True, "gpu-only")])
def test_a_wrong_policy_lists_every_policy_and_its_scenario_kind_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], serving: bool, policy: str):
    (tmp_path / SHIPPED_NAME).write_text(ROWS)
    extra = {"serving": {"latency_slo_p99_seconds": 60}} if serving else {}
    path = _write(tmp_path, "s.json", _scenario(SHIPPED_NAME, **extra))
    assert cli_main(["simulate", "--scenario", str(path), "--policy", policy]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert repr(policy) in err
    for name in (*POLICIES, *SERVING_POLICIES):
        assert name in err
    queue_part, serving_part = err.split("queue scenarios:", 1)[1].split("real-time serving scenarios", 1)
    assert all(name in queue_part for name in POLICIES)
    assert all(name in serving_part and name not in queue_part for name in SERVING_POLICIES)
