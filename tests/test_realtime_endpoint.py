"""The real-time endpoint's template: internal, TLS, logged, weighted between target groups bound to the pools."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crossfleet.config import ConfigError, parse_config
from tests.cdk_helpers import SynthesizedApp, asg_for_pool, launch_template_of, resources_of_type, synthesize

REGIONS = ("us-east-1", "us-west-2")


def certificate(region: str, account: str = "123456789012") -> str:
    return f"arn:aws:acm:{region}:{account}:certificate/0f3c2a1b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


REALTIME = {"regions": list(REGIONS), "realtime": {
    "enabled": True, "initial_gpu_weight": 70,
    "certificate_arns": {region: certificate(region) for region in REGIONS},
    "cpu_server": {"model": "/models/coder-1.5b-q8.gguf", "port": 8081}}}


@pytest.fixture(scope="module")
def realtime_app() -> SynthesizedApp:
    return synthesize(REALTIME, nag=False)


def only(template: dict[str, Any], type_name: str) -> tuple[str, dict[str, Any]]:
    found = resources_of_type(template, type_name)
    assert len(found) == 1, f"one {type_name}, found {len(found)}"
    return next(iter(found.items()))


def ref(value: Any) -> str:
    return value["Ref"] if "Ref" in value else value["Fn::GetAtt"][0]


@pytest.mark.parametrize("region", REGIONS)
def test_endpoint_is_internal_tls_only_and_logged(realtime_app: SynthesizedApp, region: str):
    template = realtime_app.template_json(region)
    _, balancer = only(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    props = balancer["Properties"]
    assert props["Scheme"] == "internal" and props["Type"] == "application"
    attributes = {a["Key"]: a["Value"] for a in props["LoadBalancerAttributes"]}
    assert attributes["access_logs.s3.enabled"] == "true" and attributes["access_logs.s3.bucket"]
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["deletion_protection.enabled"] == "true", "retained deployments protect the endpoint"
    subnets = {ref(s) for s in props["Subnets"]}
    private = {k for k, v in resources_of_type(template, "AWS::EC2::Subnet").items()
               if not v["Properties"].get("MapPublicIpOnLaunch", False) and "instances" in k.lower()}
    assert subnets and subnets <= private, "the endpoint sits in the private instance subnets"

    _, listener = only(template, "AWS::ElasticLoadBalancingV2::Listener")
    listener = listener["Properties"]
    assert listener["Protocol"] == "HTTPS" and listener["Port"] == 443
    assert listener["Certificates"] == [{"CertificateArn": certificate(region)}], "this region's certificate"
    assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13"), listener["SslPolicy"]
    assert listener["DefaultActions"][0]["Type"] == "fixed-response", "unmatched requests get a 404, not a pool"

    ingress = [rule for sg in resources_of_type(template, "AWS::EC2::SecurityGroup").values()
               if sg["Properties"].get("GroupDescription", "").startswith("crossfleet real-time endpoint")
               for rule in sg["Properties"].get("SecurityGroupIngress", [])]
    assert ingress == [{"CidrIp": realtime_app.config.network.cidr, "Description": "HTTPS clients", "FromPort": 443,
                        "IpProtocol": "tcp", "ToPort": 443}], "clients from the VPC only, HTTPS only"


@pytest.mark.parametrize("region", REGIONS)
def test_one_weighted_rule_splits_between_target_groups_bound_to_the_pools_groups(realtime_app: SynthesizedApp,
                                                                                   region: str):
    template = realtime_app.template_json(region)
    target_groups = resources_of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup")
    by_port = {tg["Properties"]["Port"]: name for name, tg in target_groups.items()}
    assert set(by_port) == {8081, 8000}, "one target group per pool, on its model server's port"
    for port, name in by_port.items():
        health = target_groups[name]["Properties"]
        assert health["HealthCheckPath"] == "/health" and health["Matcher"] == {"HttpCode": "200"}
        assert health["HealthCheckPort"] == str(port)
    expected = {"cpu": by_port[8081], "gpu": by_port[8000]}
    for pool, target_group in expected.items():
        group = asg_for_pool(template, pool)
        assert [ref(arn) for arn in group["Properties"]["TargetGroupARNs"]] == [target_group], pool

    _, rule = weighted_rule(template)
    (action,) = rule["Properties"]["Actions"]
    weights = {ref(t["TargetGroupArn"]): t["Weight"] for t in action["ForwardConfig"]["TargetGroups"]}
    assert weights == {expected["cpu"]: 30, expected["gpu"]: 70}, "the configured starting split"
    assert sum(weights.values()) == 100


def weighted_rule(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The rule the rebalancer turns: the one whose forward names more than one target group."""
    rules = resources_of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule")
    (found,) = [(rid, r) for rid, r in rules.items()
                if len(r["Properties"]["Actions"][0].get("ForwardConfig", {}).get("TargetGroups", [])) > 1]
    return found


@pytest.mark.parametrize("region", REGIONS)
def test_only_short_labelled_requests_meet_the_split_and_the_rest_go_to_gpus(realtime_app: SynthesizedApp,
                                                                            region: str):
    template = realtime_app.template_json(region)
    rules = resources_of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule")
    assert len(rules) == 2
    weighted_id, weighted = weighted_rule(template)
    (condition,) = weighted["Properties"]["Conditions"]
    assert condition["Field"] == "http-header"
    assert condition["HttpHeaderConfig"] == {"HttpHeaderName": "x-crossfleet-size", "Values": ["short"]}
    (other,) = [r for rid, r in rules.items() if rid != weighted_id]
    assert other["Properties"]["Priority"] > weighted["Properties"]["Priority"], "the header rule is tried first"
    assert other["Properties"]["Conditions"] == [{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/*"]}}]
    (action,) = other["Properties"]["Actions"]
    groups = resources_of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup")
    gpu_group = ref(action["TargetGroupArn"]) if "TargetGroupArn" in action else ref(
        action["ForwardConfig"]["TargetGroups"][0]["TargetGroupArn"])
    assert groups[gpu_group]["Properties"]["Port"] == 8000, "long and unlabelled requests: the GPU (vLLM) group"


@pytest.mark.parametrize("region", REGIONS)
def test_only_the_endpoint_reaches_the_model_servers_and_user_data_starts_them(realtime_app: SynthesizedApp,
                                                                               region: str):
    template = realtime_app.template_json(region)
    _, balancer = only(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    (endpoint_group,) = {ref(g) for g in balancer["Properties"]["SecurityGroups"]}
    ingress = resources_of_type(template, "AWS::EC2::SecurityGroupIngress")
    model_ports = {(r["Properties"]["FromPort"], ref(r["Properties"]["SourceSecurityGroupId"]))
                   for r in ingress.values() if r["Properties"]["FromPort"] in (8081, 8000)}
    assert model_ports == {(8081, endpoint_group), (8000, endpoint_group)}

    for pool, expected in (("cpu", ["ghcr.io/ggml-org/llama.cpp:server", "-m /models/coder-1.5b-q8.gguf",
                                    "--port 8081", "-p 8081:8081"]),
                           ("gpu", ["vllm/vllm-openai", "--gpus all", "--model Qwen/Qwen2.5-Coder-7B-Instruct",
                                    "--port 8000"])):
        launch_template = launch_template_of(template, asg_for_pool(template, pool))
        user_data = json.dumps(launch_template["Properties"]["LaunchTemplateData"]["UserData"])
        assert "systemctl enable --now crossfleet-model-server" in user_data, pool
        for piece in expected:
            assert piece in user_data, (pool, piece)
        if pool == "cpu":
            assert "--gpus" not in user_data


def test_the_stack_outputs_the_endpoint_and_the_rule_the_rebalancer_turns(realtime_app: SynthesizedApp):
    outputs = realtime_app.template_json("us-east-1")["Outputs"]
    assert "RealtimeEndpointUrl" in outputs and "RealtimeListenerRuleArn" in outputs
    assert outputs["RealtimeEndpointUrl"]["Value"]["Fn::Join"][1][0] == "https://"


def test_default_configuration_has_no_endpoint(default_app: SynthesizedApp):
    for region in default_app.stacks:
        template = default_app.template_json(region)
        assert not resources_of_type(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
        assert "crossfleet-model-server" not in json.dumps(template)


@pytest.mark.parametrize(("raw", "message"), [
    ({"regions": ["us-east-1"], "realtime": {"enabled": True}},
     "realtime.certificate_arns.us-east-1 = None is not allowed: an ACM certificate ARN for the endpoint's TLS "
     "listener (realtime is enabled)"),
    ({"regions": ["us-east-1"], "realtime": {"enabled": True, "certificate_arns": {
        "us-east-1": certificate("us-west-2")}}},
     f"realtime.certificate_arns.us-east-1 = '{certificate('us-west-2')}' is not allowed: an ACM certificate ARN "
     "in us-east-1: arn:aws:acm:us-east-1:ACCOUNT:certificate/ID"),
    ({"regions": ["us-east-1"], "realtime": {"certificate_arns": {"us-east-2": certificate("us-east-2")}}},
     f"realtime.certificate_arns.us-east-2 = '{certificate('us-east-2')}' is not allowed: a configured region: "
     "us-east-1"),
    ({"regions": ["us-east-1"], "accelerator_cluster": {"kind": "neuron"}, "realtime": {
        "enabled": True, "certificate_arns": {"us-east-1": certificate("us-east-1")}}},
     "regions[0].accelerator_cluster.kind = 'neuron' is not allowed: nvidia while realtime is enabled (the GPU "
     "model server is vLLM on CUDA)"),
    ({"realtime": {"gpu_server": {"kind": "llama.cpp"}}},
     "realtime.gpu_server.kind = 'llama.cpp' is not allowed: one of vllm"),
    ({"realtime": {"cpu_server": {"port": 80}}},
     "realtime.cpu_server.port = 80 is not allowed: a whole number at least 1024 and at most 65535"),
    ({"realtime": {"cpu_server": {"image": "llama; rm -rf /"}}},
     "realtime.cpu_server.image = 'llama; rm -rf /' is not allowed: a container image reference, e.g. "
     "registry/name:tag"),
    ({"realtime": {"ttft_slo_ms": 10}},
     "realtime.ttft_slo_ms = 10 is not allowed: a whole number at least 50 and at most 600000"),
    ({"realtime": {"short_prompt_max_tokens": "short"}},
     "realtime.short_prompt_max_tokens = 'short' is not allowed: a whole number"),
    ({"realtime": {"forecast_window_seconds": -60}},
     "realtime.forecast_window_seconds = -60 is not allowed: a whole number at least 0 and at most 86400"),
])

def test_bad_realtime_settings_fail_with_one_message(raw: dict[str, Any], message: str):
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert str(error.value) == f"crossfleet config: {message}"


def test_the_realtime_section_sets_the_rebalancers_serving_settings():
    from crossfleet_control.core.serving import ServingSettings

    config = parse_config({"realtime": {"ttft_slo_ms": 1500, "short_prompt_max_tokens": 128}}).realtime
    settings = ServingSettings(**config.serving_settings())
    assert settings.ttft_slo_seconds == 1.5 and settings.tpot_slo_seconds == 0.1
    assert settings.short_prompt_max_tokens == 128 and settings.forecast_window_seconds == 900
    assert settings.response_slo_seconds() == 1.5 + 0.1 * 252, "no latency_slo_p99_ms: the TTFT/TPOT mapping"


def test_the_rebalancer_may_turn_only_this_endpoints_rule(realtime_app: SynthesizedApp):
    template = realtime_app.template_json("us-east-1")
    rule_id, _ = weighted_rule(template)
    statements = [s for policy in resources_of_type(template, "AWS::IAM::Policy").values()
                  for s in policy["Properties"]["PolicyDocument"]["Statement"]]
    elb = [s for s in statements if any(str(a).startswith("elasticloadbalancing:")
                                        for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))]
    modify = [s for s in elb if "elasticloadbalancing:ModifyRule" in json.dumps(s["Action"])]
    assert modify and all(s["Resource"] == {"Ref": rule_id} for s in modify)
    for statement in elb:
        if statement["Resource"] == "*":
            assert statement["Action"] == "elasticloadbalancing:DescribeRules", statement
    functions = [f for f in resources_of_type(template, "AWS::Lambda::Function").values()
                 if "CROSSFLEET_SETTINGS" in json.dumps(f["Properties"].get("Environment", {}))
                 and "rebalancer" in f["Properties"].get("Handler", "")]
    settings = json.dumps(functions[0]["Properties"]["Environment"])
    assert rule_id in settings and "ttft_slo_seconds" in settings and "forecast_window_seconds" in settings
