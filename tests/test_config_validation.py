"""Every bad input named in the foundation issue fails with one message: key, value, what is allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crossfleet.config import ConfigError, parse_config
from crossfleet.config.loader import load_from_context

ROOT = Path(__file__).resolve().parents[1]

BAD_INPUTS = [
    pytest.param({"regions": ["eu-west-1"]},
                 "crossfleet config: regions[0].region = 'eu-west-1' is not allowed: a US region: one of "
                 "us-east-1, us-east-2, us-west-1, us-west-2 (crossfleet keeps compute in US regions)",
                 id="non-us-region"),
    pytest.param({"graviton_fleet": {"instance_types": ["m7i.4xlarge"]}, "regions": ["us-east-1"]},
                 "crossfleet config: regions[0].graviton_fleet.instance_types[0] = 'm7i.4xlarge' is not allowed: "
                 "m7i.4xlarge is x86_64, the Graviton fleet takes arm64 types; allowed: arm64 CPU types such as "
                 "m9g.4xlarge, c9g.4xlarge, r9g.4xlarge, m8g.4xlarge, c8g.4xlarge",
                 id="x86-in-graviton-fleet"),
    pytest.param({"graviton_fleet": {"fallback_instance_types": ["g5g.xlarge"]}, "regions": ["us-east-1"]},
                 "crossfleet config: regions[0].graviton_fleet.fallback_instance_types[0] = 'g5g.xlarge' is not "
                 "allowed: g5g.xlarge has nvidia accelerators, the Graviton fleet takes CPU-only types; allowed: "
                 "arm64 CPU types such as m9g.4xlarge, c9g.4xlarge, r9g.4xlarge, m8g.4xlarge, c8g.4xlarge",
                 id="gpu-type-in-graviton-fleet"),
    pytest.param({"accelerator_cluster": {"instance_types": ["m9g.4xlarge"]}, "regions": ["us-east-1"]},
                 "crossfleet config: regions[0].accelerator_cluster.instance_types[0] = 'm9g.4xlarge' is not "
                 "allowed: m9g.4xlarge has no accelerator, the accelerator cluster of kind 'nvidia' takes nvidia "
                 "types; allowed: NVIDIA GPU types such as p5.48xlarge, p5en.48xlarge, g6e.12xlarge, g6.xlarge",
                 id="cpu-type-in-accelerator-cluster"),
    pytest.param({"accelerator_cluster": {"kind": "neuron", "instance_types": ["p5.48xlarge"],
                                          "fallback_instance_types": []}, "regions": ["us-east-1"]},
                 "crossfleet config: regions[0].accelerator_cluster.instance_types[0] = 'p5.48xlarge' is not "
                 "allowed: p5.48xlarge has nvidia accelerators, the cluster's kind is 'neuron'; allowed: AWS "
                 "Neuron types such as inf2.48xlarge, inf2.24xlarge, trn1.32xlarge",
                 id="nvidia-type-in-neuron-cluster"),
    pytest.param({"accelerator_cluster": {"instance_types": ["g5g.xlarge"], "fallback_instance_types": []},
                  "regions": ["us-east-1"]},
                 "crossfleet config: regions[0].accelerator_cluster.instance_types[0] = 'g5g.xlarge' is not "
                 "allowed: g5g.xlarge is arm64, the nvidia AMI crossfleet uses is x86_64; allowed: NVIDIA GPU types "
                 "such as p5.48xlarge, p5en.48xlarge, g6e.12xlarge, g6.xlarge",
                 id="ami-architecture-mismatch"),
    pytest.param({"regions": ["us-west-1"]},
                 "crossfleet config: regions[0].graviton_fleet.instance_types[0] = 'm9g.16xlarge' is not allowed: "
                 "a type offered in us-west-1 (m9g.16xlarge is offered in us-east-1, us-east-2, us-west-2)",
                 id="m9g-not-in-us-west-1"),
    pytest.param({"regions": [{"region": "us-west-1",
                               "graviton_fleet": {"instance_types": ["m8g.16xlarge"], "fallback_instance_types": []},
                               "accelerator_cluster": {"fallback_instance_types": ["g6e.12xlarge"]}}]},
                 "crossfleet config: regions[0].accelerator_cluster.fallback_instance_types[0] = 'g6e.12xlarge' "
                 "is not allowed: a type offered in us-west-1 (g6e.12xlarge is offered in us-east-1, us-east-2, "
                 "us-west-2)",
                 id="fallback-type-not-offered-checked-too"),
    pytest.param({"graviton_fleet": {"min_size": 5, "max_size": 2}},
                 "crossfleet config: regions[0].graviton_fleet.min_size = 5 is not allowed: at most max_size (2)",
                 id="min-greater-than-max"),
    pytest.param({"accelerator_cluster": {"max_size": -1}},
                 "crossfleet config: regions[0].accelerator_cluster.max_size = -1 is not allowed: a whole number "
                 "at least 0 and at most 1000",
                 id="negative-size"),
    pytest.param({"graviton_fleet": {"max_size": True}},
                 "crossfleet config: regions[0].graviton_fleet.max_size = True is not allowed: a whole number",
                 id="bool-is-not-a-size"),
    pytest.param({"graviton_fleet": {"instance_typs": ["m9g.4xlarge"]}},
                 "crossfleet config: graviton_fleet.instance_typs = ['m9g.4xlarge'] is not allowed: unknown key; "
                 "did you mean 'instance_types'? known keys: instance_types, fallback_instance_types, min_size, "
                 "max_size, on_demand_base_capacity, on_demand_percentage_above_base, root_volume_gib, "
                 "spot_allocation_strategy, on_demand_price_per_hour, spot_price_per_hour",
                 id="unknown-key-did-you-mean"),
    pytest.param({"regoins": ["us-east-1"]},
                 "crossfleet config: regoins = ['us-east-1'] is not allowed: unknown key; did you mean 'regions'? "
                 "known keys: name, stage, account, regions, network, graviton_fleet, accelerator_cluster, queues, "
                 "state, rebalancer, worker, monitoring, realtime, production",
                 id="unknown-top-level-key"),
    pytest.param({"regions": ["us-east-1", "us-east-2", "us-east-1"]},
                 "crossfleet config: regions[2] = 'us-east-1' is not allowed: each region once (it is listed twice)",
                 id="duplicate-region"),
    pytest.param({"regions": []},
                 "crossfleet config: regions = [] is not allowed: at least one of us-east-1, us-east-2, us-west-1, "
                 "us-west-2",
                 id="empty-region-list"),
    pytest.param({"regions": [{"region": "us-east-1", "availability_zones": ["us-east-2a"]}]},
                 "crossfleet config: regions[0].availability_zones[0] = 'us-east-2a' is not allowed: an "
                 "availability zone of us-east-1: us-east-1a to us-east-1f",
                 id="az-of-another-region"),
    pytest.param({"regions": [{"region": "us-east-2", "availability_zones": ["us-east-2a", "us-east-2z"]}]},
                 "crossfleet config: regions[0].availability_zones[1] = 'us-east-2z' is not allowed: an "
                 "availability zone of us-east-2: us-east-2a to us-east-2c",
                 id="az-letter-past-the-region"),
    pytest.param({"graviton_fleet": {"instance_types": ["m9g.42xlarge"]}},
                 "crossfleet config: regions[0].graviton_fleet.instance_types[0] = 'm9g.42xlarge' is not allowed: "
                 "did you mean m9g.4xlarge? an instance type in crossfleet's offerings table (arm64 CPU types such "
                 "as m9g.4xlarge, c9g.4xlarge, r9g.4xlarge, m8g.4xlarge, c8g.4xlarge)",
                 id="unknown-instance-type"),
    pytest.param({"accelerator_cluster": {"instance_types": ["g6e.xlarg"]}},
                 "crossfleet config: regions[0].accelerator_cluster.instance_types[0] = 'g6e.xlarg' is not allowed: "
                 "did you mean g6e.xlarge? an instance type in crossfleet's offerings table (NVIDIA GPU types such "
                 "as p5.48xlarge, p5en.48xlarge, g6e.12xlarge, g6.xlarge)",
                 id="misspelt-instance-type"),
    pytest.param({"accelerator_cluster": {"instance_types": ["h100-box"]}},
                 "crossfleet config: regions[0].accelerator_cluster.instance_types[0] = 'h100-box' is not allowed: "
                 "an instance type in crossfleet's offerings table (NVIDIA GPU types such as p5.48xlarge, "
                 "p5en.48xlarge, g6e.12xlarge, g6.xlarge)",
                 id="unknown-instance-type-no-near-name"),
    pytest.param({"accelerator_cluster": {"capacity_block_id": "cr-0123456789abcdef0"}},
                 "crossfleet config: regions[0].accelerator_cluster.fallback_instance_types = ['p5en.48xlarge', "
                 "'g6e.12xlarge'] is not allowed: an empty list when targeting a capacity reservation or block",
                 id="reservation-with-fallbacks"),
    pytest.param({"accelerator_cluster": {"capacity_reservation_id": "odcr-1"}},
                 "crossfleet config: regions[0].accelerator_cluster.capacity_reservation_id = 'odcr-1' is not "
                 "allowed: an On-Demand Capacity Reservation id (cr-...) or null",
                 id="malformed-reservation-id"),
    pytest.param({"stage": "Prod!"},
                 "crossfleet config: stage = 'Prod!' is not allowed: 2-20 characters: lowercase letters, digits "
                 "and '-', starting with a letter",
                 id="bad-stage-name"),
    pytest.param({"regions": ["us-east-1"], "accelerator_cluster": {"kind": "neuron", "efa": True}},
                 "crossfleet config: regions[0].accelerator_cluster.instance_types[0] = 'inf2.48xlarge' is not "
                 "allowed: a type with EFA while efa is true (inf2.48xlarge has no EFA; with EFA: trn1.32xlarge)",
                 id="efa-on-a-type-without-efa"),
    pytest.param({"regions": ["us-east-1"], "accelerator_cluster": {"placement_group": True}},
                 "crossfleet config: regions[0].accelerator_cluster.placement_group = True is not allowed: false "
                 "unless the group has one instance type (AWS recommends one type per cluster placement group; this "
                 "group has p5.48xlarge, p5en.48xlarge, g6e.12xlarge)",
                 id="placement-group-across-types"),
    pytest.param({"regions": ["us-east-1"], "accelerator_cluster": {
        "instance_types": ["p5.48xlarge"], "fallback_instance_types": [], "placement_group": True,
        "capacity_block_id": "cr-0123456789abcdef0"}},
                 "crossfleet config: regions[0].accelerator_cluster.placement_group = True is not allowed: false "
                 "with a capacity block (EC2 places a block's instances together in an UltraCluster)",
                 id="placement-group-with-capacity-block"),
    pytest.param({"regions": [{"region": "us-east-1", "accelerator_cluster": {"availability_zone": "us-east-1d"}}]},
                 "crossfleet config: regions[0].accelerator_cluster.availability_zone = 'us-east-1d' is not allowed: "
                 "one of the region's availability_zones (us-east-1a, us-east-1b, us-east-1c)",
                 id="group-zone-outside-the-vpc"),
    pytest.param({"regions": [{"region": "us-east-1", "accelerator_cluster": {
        "instance_types": ["p5en.48xlarge"], "fallback_instance_types": [], "efa": True,
        "availability_zone": "us-east-1b"}}]},
                 "crossfleet config: regions[0].accelerator_cluster.instance_types[0] = 'p5en.48xlarge' is not "
                 "allowed: a type offered in the group's zone us-east-1b (the pinned table offers p5en.48xlarge in "
                 "us-east-1a, us-east-1c)",
                 id="type-not-offered-in-the-group-zone"),
    pytest.param({"graviton_fleet": {"spot_allocation_strategy": "lowest-price"}},
                 "crossfleet config: regions[0].graviton_fleet.spot_allocation_strategy = 'lowest-price' is not "
                 "allowed: one of price-capacity-optimized, capacity-optimized-prioritized",
                 id="spot-strategy"),
    pytest.param({"account": "123456789012", "regions": ["us-west-1"],
                  "graviton_fleet": {"instance_types": ["m8g.16xlarge"], "fallback_instance_types": []},
                  "accelerator_cluster": {"instance_types": ["p5.48xlarge"], "fallback_instance_types": []}},
                 "crossfleet config: regions[0].availability_zones = None is not allowed: your account's AZ names "
                 "in us-west-1 (aws ec2 describe-availability-zones --region us-west-1), required when account is "
                 "set: AZ names map to different zones in each account and not every account has us-west-1a",
                 id="account-without-its-az-names"),
    pytest.param({"queues": {"retention_days": 14}},
                 "crossfleet config: queues.retention_days = 14 is not allowed: a whole number at least 1 and at "
                 "most 13",
                 id="queue-retention-leaves-room-for-the-dlq"),
    pytest.param({"rebalancer": {"mode": "enforcing"}},
                 "crossfleet config: rebalancer.mode = 'enforcing' is not allowed: one of observe, enforce",
                 id="bad-mode"),
    # Pairs that are each valid alone but repeat or lose jobs together (issue 17).
    pytest.param({"queues": {"visibility_timeout_seconds": 30}, "worker": {"heartbeat_seconds": 3600}},
                 "crossfleet config: worker.heartbeat_seconds = 3600 is not allowed: at most a third of "
                 "queues.visibility_timeout_seconds (30 s), so a run renews its lease at least 3 times a lease: at "
                 "most 10",
                 id="heartbeat-outlives-the-lease"),
    pytest.param({"queues": {"max_receive_count": 1}, "worker": {"max_attempts": 100}},
                 "crossfleet config: queues.max_receive_count = 1 is not allowed: at least worker.max_attempts + 2 "
                 "(102), so SQS's redrive never ends a job before its attempts do",
                 id="redrive-before-the-attempts-are-spent"),
    pytest.param({"worker": {"drain_seconds": 30}},
                 "crossfleet config: worker.drain_seconds = 30 is not allowed: at least 60: the scale-in hook's "
                 "timeout, of which 30 s are kept to requeue and complete",
                 id="drain-with-no-time-to-drain"),
    pytest.param({"worker": {"cpu_runner": {"kind": "command", "argv": ["run.py", "{payload}"]}}},
                 "crossfleet config: worker.cpu_runner.argv[1] = '{payload}' is not allowed: only the placeholders "
                 "{job_id}, {input}, {output} (not {payload}); write {{ and }} for literal braces",
                 id="argv-placeholder-the-runner-never-fills"),
    pytest.param({"worker": {"gpu_runner": {"kind": "command"}}},
                 "crossfleet config: worker.gpu_runner.argv = [] is not allowed: the command to run, e.g. "
                 "[\"python3\", \"run.py\", \"{input}\", \"{output}\"]",
                 id="command-runner-without-a-command"),
    pytest.param({"worker": {"cpu_runner": {"kind": "command", "argv": ["run.py", 7]}}},
                 "crossfleet config: worker.cpu_runner.argv = ['run.py', 7] is not allowed: a list of strings (the "
                 "command line)",
                 id="argv-not-strings"),
    pytest.param([], "crossfleet config: <root> = [] is not allowed: an object (JSON mapping)",
                 id="top-level-list"),
    pytest.param(False, "crossfleet config: <root> = False is not allowed: an object (JSON mapping)",
                 id="top-level-false"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_INPUTS)
def test_bad_config_names_key_value_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert str(caught.value) == message


def test_defaults_are_valid_and_cover_three_us_regions():
    config = parse_config({})
    assert [r.region for r in config.regions] == ["us-east-1", "us-east-2", "us-west-2"]
    assert config.prefix == "crossfleet-dev"
    region = config.regions[0]
    assert region.graviton_fleet.instance_types[0] == "m9g.16xlarge"
    assert region.accelerator_cluster.min_size == 0


def test_region_override_replaces_only_the_keys_it_names():
    config = parse_config({"graviton_fleet": {"max_size": 50},
                           "regions": ["us-east-1", {"region": "us-west-2", "graviton_fleet": {"max_size": 8}}]})
    assert config.regions[0].graviton_fleet.max_size == 50
    assert config.regions[1].graviton_fleet.max_size == 8
    assert config.regions[1].graviton_fleet.instance_types == config.regions[0].graviton_fleet.instance_types


def test_config_file_selected_with_context(tmp_path: Path):
    path = tmp_path / "prod.json"
    path.write_text(json.dumps({"stage": "prod", "regions": ["us-east-2"]}))
    context = {"config": str(path)}
    config = load_from_context(context.get, tmp_path)
    assert config.prefix == "crossfleet-prod"
    assert [r.region for r in config.regions] == ["us-east-2"]


def test_missing_config_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        load_from_context({"config": "nope.json"}.get, tmp_path)
    assert str(caught.value) == ("crossfleet config: config = 'nope.json' is not allowed: "
                                 "a path to an existing JSON config file")


def test_app_prints_one_line_and_no_stack_trace_on_bad_config():
    """What `cdk synth` shows a person: app.py run the way the CLI runs it."""
    context = json.dumps({"crossfleet": {"regions": ["us-east-1"], "graviton_fleet": {"min_size": 9,
                                                                                      "max_size": 3}}})
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"CDK_CONTEXT_JSON": context,
                                 # The venv's own Node first, as `make` sets it up.
                                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                                 "CDK_OUTDIR": "/tmp/crossfleet-bad-config-out"})
    assert result.returncode == 1
    assert result.stderr.strip() == ("crossfleet config: regions[0].graviton_fleet.min_size = 9 is not allowed: "
                                     "at most max_size (3)")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(("content", "expected"), [
    ("null", "a JSON object with the crossfleet block's keys (the file holds null)"),
    ("[]", "a JSON object with the crossfleet block's keys (the file holds [])"),
    ("false", "a JSON object with the crossfleet block's keys (the file holds false)"),
    ('{"worker": {"max_attempts": ' + "9" * 5000 + "}}", "a JSON config file (Exceeds the limit (4300 digits) "
                                                         "for integer string conversion)"),
    ("[" * 100_000 + "]" * 100_000, "a JSON config file (nested too deeply)"),
])
def test_a_config_file_that_is_not_an_object_is_one_line_not_the_defaults(tmp_path: Path, content, expected):
    """A file holding [], null or false used to give every default silently; a huge integer or deep nesting a
    traceback."""
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_from_context({"config": "config.json"}.get, tmp_path)
    assert str(caught.value) == f"crossfleet config: config = 'config.json' is not allowed: {expected}"


def test_a_command_line_may_repeat_an_argument_and_escape_braces():
    config = parse_config({"worker": {"cpu_runner": {"kind": "command", "argv": [
        "run.py", "-v", "-v", "--in", "{input}", "--out", "{output}", "--meta", "{{literal}}", "{job_id}"]}}})
    assert config.worker.cpu_runner["argv"][1:3] == ["-v", "-v"]


def test_a_directory_or_non_utf8_bytes_are_one_line(tmp_path: Path):
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe{}")
    for name, expected in [(".", "a path to an existing JSON config file"),
                           ("bytes.json", "a readable UTF-8 JSON file (UnicodeDecodeError)")]:
        with pytest.raises(ConfigError) as caught:
            load_from_context({"config": name}.get, tmp_path)
        assert str(caught.value).endswith(expected)


PINNED_IMAGE = "vllm/vllm-openai@sha256:" + "a" * 64
CERTS = {"certificate_arns": {"us-east-1": "arn:aws:acm:us-east-1:123456789012:certificate/"
                                           "0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"}}


@pytest.mark.parametrize(("servers", "message"), [
    ({}, "crossfleet config: realtime.cpu_server.image = 'ghcr.io/ggml-org/llama.cpp:server' is not allowed: an "
         "image pinned by digest (name@sha256:...) because this config says production"),
    ({"cpu_server": {"image": "llama@sha256:" + "b" * 64, "model": "/models/coder.gguf"},
      "gpu_server": {"image": PINNED_IMAGE}},
     "crossfleet config: realtime.gpu_server.model = 'Qwen/Qwen2.5-Coder-7B-Instruct' is not allowed: a local path "
     "under /models, or a Hugging Face id with realtime.*_server.revision set (vllm only), because this config says "
     "production"),
    ({"cpu_server": {"image": "llama@sha256:" + "b" * 64, "model": "ggml-org/x", "revision": "c" * 40}},
     "crossfleet config: realtime.cpu_server.revision = '" + "c" * 40 + "' is not allowed: only for a vllm server "
     "loading a Hugging Face model id (llama.cpp: use a local path)"),
])
def test_production_refuses_floating_images_and_unpinned_models(servers: dict[str, Any], message: str):
    raw = {"production": True, "regions": ["us-east-1"], "realtime": {"enabled": True, **CERTS, **servers}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_production_accepts_digests_and_revisions_and_passes_the_revision_to_vllm():
    config = parse_config({"production": True, "regions": ["us-east-1"], "realtime": {
        "enabled": True, **CERTS,
        "cpu_server": {"image": "llama@sha256:" + "b" * 64, "model": "/models/coder.gguf"},
        "gpu_server": {"image": PINNED_IMAGE, "revision": "d" * 40}}})
    assert config.production
    assert config.realtime.gpu_server.container_args()[2:4] == ("--revision", "d" * 40)
    # Not production, or the endpoint off: tags are still accepted (trying things out).
    assert not parse_config({"realtime": {"enabled": True, **CERTS}, "regions": ["us-east-1"]}).production
    parse_config({"production": True, "regions": ["us-east-1"]})


def test_isolated_mode_needs_local_models_and_a_well_formed_models_prefix():
    with pytest.raises(ConfigError) as caught:
        parse_config({"regions": ["us-east-1"], "network": {"nat_gateways": 0},
                      "realtime": {"enabled": True, **CERTS, "cpu_server": {"model": "/models/coder.gguf"}}})
    assert str(caught.value) == (
        "crossfleet config: realtime.gpu_server.model = 'Qwen/Qwen2.5-Coder-7B-Instruct' is not allowed: a local path "
        "under /models, because network.nat_gateways is 0 (no route to a model hub; see network.models_s3_uri)")
    with pytest.raises(ConfigError, match=r"network.models_s3_uri = 'http://x/' is not allowed: an S3 prefix"):
        parse_config({"network": {"models_s3_uri": "http://x/"}})
    config = parse_config({"network": {"nat_gateways": 0, "models_s3_uri": "s3://acme-models/crossfleet/"}})
    assert config.network.isolated and (config.network.models_bucket, config.network.models_prefix) == (
        "acme-models", "crossfleet/")
