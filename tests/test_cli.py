"""The crossfleet command line without a deployment: every help, the config it reads, the jobs file, the cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossfleet import cost
from crossfleet.cli import _parser, main
from crossfleet.config import parse_config
from crossfleet.submit import JobsFileError, read_jobs

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> list[str]:
    parser = _parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help_works(capsys):
    """`crossfleet --help` crashed on a bare % in pin's help (argparse formats help with %)."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in _subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_help_works_and_explains_every_option(command: str, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    undocumented = [a.dest for a in sub._actions if not a.help and a.dest != "help"]
    assert undocumented == [], f"{command}: options without help"
    assert "usage: crossfleet " + command in capsys.readouterr().out


def test_help_runs_as_installed_without_a_traceback():
    """The console script itself, as a person runs it first."""
    result = subprocess.run([sys.executable, "-m", "crossfleet", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr


def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, capsys):
    for content, expected in [(b"{", "valid JSON"), (b"\xff\xfe", "a readable UTF-8 JSON file"),
                              (b'{"regions": ["us-central-9"]}', "a US region")]:
        path = tmp_path / "bad.json"
        path.write_bytes(content)
        assert main(["cost", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert main(["status", "--config", str(tmp_path)]) == 2, "a directory"
    assert "a path to an existing JSON config file" in capsys.readouterr().err


def test_the_environment_variable_names_the_config(tmp_path: Path, monkeypatch, capsys):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"regions": ["us-east-2"]}))
    monkeypatch.setenv("CROSSFLEET_CONFIG", str(path))
    assert main(["cost", "--json"]) == 0
    assert [r["region"] for r in json.loads(capsys.readouterr().out)["regions"]] == ["us-east-2"]
    assert main(["status", "--region", "us-east-1"]) == 2
    assert "one of the configured regions us-east-2" in capsys.readouterr().err


def test_jobs_file_errors_name_the_line_they_are_on():
    lines = [json.dumps({"id": f"j{i}"}) for i in range(7)] + ["{not json", json.dumps({"id": "j9"})]
    with pytest.raises(JobsFileError, match=r"^line 8: "):
        read_jobs("\n".join(lines))
    with pytest.raises(JobsFileError, match=r"^line 3: "):
        read_jobs('{"id": "a"}\n\n{broken\n')
    assert [n for n, _ in read_jobs('{"id": "a"}\n\n{"id": "b"}\n')] == [1, 3], "blank lines still count"
    assert [n for n, _ in read_jobs('[{"id": "a"}, {"id": "b"}]')] == [1, 2]
    assert read_jobs('{\n  "id": "a"\n}') == [(1, {"id": "a"})], "one pretty-printed object"


def test_piping_json_into_a_reader_that_leaves_is_not_a_traceback():
    script = "import sys; from crossfleet.cli import main; sys.exit(main(['cost', '--json']))"
    result = subprocess.run(f"{sys.executable} -c \"{script}\" | head -c 10", shell=True, capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.stdout == '{\n  "not_i' and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_cost_of_the_defaults_hand_computed():
    """Per region, idle: one On-Demand m9g.16xlarge (the Graviton base; GPUs scale to zero), one NAT gateway with
    its public IPv4 address, and 7 interface endpoints in each of 3 AZs."""
    config = parse_config({"regions": ["us-east-1"]})
    [region] = cost.estimate(config)
    m9g_16xlarge = 3.13088  # numbers.md: On-Demand us-east-1
    assert region.idle == pytest.approx(m9g_16xlarge + (0.045 + 0.005) + 7 * 3 * 0.01, abs=1e-4)
    p5 = 55.04
    spot_m9g = m9g_16xlarge * 0.4  # the table's CPU Spot factor
    # At maximum: base 1 On-Demand + 19 Spot (0% On-Demand above base), 4 On-Demand p5.48xlarge.
    assert region.maximum == pytest.approx(m9g_16xlarge + 19 * spot_m9g + 4 * p5 + 0.05 + 0.21, abs=1e-3)
    typical = cost.estimate(config, typical_cpu=3, typical_gpu=1)[0].typical
    assert typical == pytest.approx(m9g_16xlarge + 2 * spot_m9g + p5 + 0.05 + 0.21, abs=1e-3)


def test_cost_follows_the_template_and_the_config():
    from stacks.constructs.network import INTERFACE_ENDPOINTS

    assert len(INTERFACE_ENDPOINTS) == cost.INTERFACE_ENDPOINTS
    lean = parse_config({"regions": ["us-east-1"], "network": {"nat_gateways": 0, "interface_endpoints": False},
                         "graviton_fleet": {"min_size": 0, "on_demand_base_capacity": 0}})
    assert cost.estimate(lean)[0].idle == 0.0
    west = parse_config({"regions": [{"region": "us-west-1", "graviton_fleet": {
        "instance_types": ["c8g.16xlarge"], "fallback_instance_types": []}, "accelerator_cluster": {
        "instance_types": ["p5.48xlarge"], "fallback_instance_types": []}}]})
    assert "about 25% above" in cost.estimate(west)[0].note


def test_readme_cost_section_is_generated_from_the_cost_command():
    """The README's "What it costs" table is `crossfleet cost` for the default config, never typed."""
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- cost:begin (tools/readme_cost.py) -->\n", "<!-- cost:end -->"
    section = readme[readme.index(begin) + len(begin):readme.index(end)]
    context = json.loads((ROOT / "cdk.json").read_text())["context"]["crossfleet"]
    assert section.strip() == cost.table(cost.estimate(parse_config(context))).strip(), \
        "run: .venv/bin/python tools/readme_cost.py"
