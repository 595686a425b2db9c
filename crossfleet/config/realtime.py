"""The `realtime` section: the opt-in HTTPS endpoint and the model servers behind it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.errors import ConfigError


@dataclass(frozen=True)
class ModelServerConfig:
    """A model server container each instance of a pool runs (the worker's http runner calls it too)."""

    kind: str  # "llama.cpp" (Graviton) or "vllm" (GPU)
    image: str
    model: str  # a local path baked into the AMI, or a Hugging Face id the server downloads
    port: int
    health_path: str
    # The Hugging Face commit the server loads (vLLM --revision); None follows the repo's main branch.
    revision: str | None = None

    def container_args(self) -> tuple[str, ...]:
        if self.kind == "llama.cpp":
            source = ("-m", self.model) if self.model.startswith("/") else ("-hf", self.model)
            return (*source, "--host", "0.0.0.0", "--port", str(self.port))
        pinned = ("--revision", self.revision) if self.revision else ()
        return ("--model", self.model, *pinned, "--host", "0.0.0.0", "--port", str(self.port))


@dataclass(frozen=True)
class RealtimeConfig:
    enabled: bool
    certificate_arns: Mapping[str, str]
    allowed_cidrs: tuple[str, ...]
    latency_slo_p99_ms: int | None  # None: the response p99 the TTFT and TPOT limits map to
    initial_gpu_weight: int
    max_weight_step: int
    cpu_server: ModelServerConfig
    gpu_server: ModelServerConfig
    ttft_slo_ms: int = 2000
    tpot_slo_ms: int = 100
    # Longest prompt (tokens) clients label `x-crossfleet-size: short`; None: what the Graviton pool prefills
    # within the TTFT limit (crossfleet_control.core.serving.short_prompt_limit).
    short_prompt_max_tokens: int | None = None
    forecast_window_seconds: int = 900

    def serving_settings(self) -> dict[str, float | int | None]:
        """The rebalancer's ServingSettings fields this section sets."""
        return {"latency_slo_p99_seconds": None if self.latency_slo_p99_ms is None else self.latency_slo_p99_ms / 1000,
                "max_weight_step": self.max_weight_step, "ttft_slo_seconds": self.ttft_slo_ms / 1000,
                "tpot_slo_seconds": self.tpot_slo_ms / 1000, "short_prompt_max_tokens": self.short_prompt_max_tokens,
                "forecast_window_seconds": float(self.forecast_window_seconds)}


DEFAULT_SERVERS = {
    # Tags of the projects' published server images, for trying things out: a production config must pin each
    # image by digest and each model by revision or local path (checked by _server).
    "cpu": {"kind": "llama.cpp", "image": "ghcr.io/ggml-org/llama.cpp:server",
            "model": "ggml-org/Qwen2.5-Coder-1.5B-Q8_0-GGUF", "port": 8080, "health_path": "/health"},
    "gpu": {"kind": "vllm", "image": "vllm/vllm-openai:latest", "model": "Qwen/Qwen2.5-Coder-7B-Instruct",
            "port": 8000, "health_path": "/health"},
}
IMAGE_REFERENCE = re.compile(r"[a-z0-9][a-z0-9./_-]*(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?")
SERVER_KINDS = {"cpu": ("llama.cpp",), "gpu": ("vllm",)}
CERTIFICATE_ARN = re.compile(r"^arn:aws:acm:(us-[a-z]+-\d):(\d{12}):certificate/[0-9a-f-]{36}$")


def _server(raw: Any, path: str, pool: str, *, production: bool = False) -> ModelServerConfig:
    default = DEFAULT_SERVERS[pool]
    s = p.section(raw, path, (*default, "revision"))
    port = p.integer(s, path, "port", default["port"], minimum=1024, maximum=65535)
    health = s.get("health_path", default["health_path"])
    if not isinstance(health, str) or not re.fullmatch(r"/[A-Za-z0-9/_.-]*", health):
        raise ConfigError(p.join(path, "health_path"), health, "an absolute URL path such as /health")
    image = s.get("image", default["image"])
    if not isinstance(image, str) or not IMAGE_REFERENCE.fullmatch(image):
        raise ConfigError(p.join(path, "image"), image, "a container image reference, e.g. registry/name:tag")
    model = s.get("model", default["model"])
    if not isinstance(model, str) or not re.fullmatch(r"[A-Za-z0-9/._:-]+", model):
        raise ConfigError(p.join(path, "model"), model, "a model path on the instance or a Hugging Face model id")
    kind = p.choice(s, path, "kind", default["kind"], SERVER_KINDS[pool])
    revision = s.get("revision")
    if revision is not None and not (isinstance(revision, str) and re.fullmatch(r"[0-9a-f]{40}", revision)):
        raise ConfigError(p.join(path, "revision"), revision, "a 40-character Hugging Face commit hash")
    if revision is not None and (kind != "vllm" or model.startswith("/")):
        raise ConfigError(p.join(path, "revision"), revision,
                          "only for a vllm server loading a Hugging Face model id (llama.cpp: use a local path)")
    if production:
        # A tag can be moved to other code; a digest cannot (same for a model's branch versus a commit).
        if "@sha256:" not in image:
            raise ConfigError(p.join(path, "image"), image,
                              "an image pinned by digest (name@sha256:...) because this config says production")
        if not model.startswith("/") and revision is None:
            raise ConfigError(p.join(path, "model"), model, "a local path under /models, or a Hugging Face id with "
                              "realtime.*_server.revision set (vllm only), because this config says production")
    return ModelServerConfig(kind=kind, image=image, model=model, port=port, health_path=health, revision=revision)


def parse_realtime(raw: Any, regions: tuple[str, ...], account: str | None, *,
                   production: bool = False) -> RealtimeConfig:
    path = "realtime"
    s = p.section(raw, path, ("enabled", "certificate_arns", "allowed_cidrs", "latency_slo_p99_ms",
                              "initial_gpu_weight", "max_weight_step", "cpu_server", "gpu_server", "ttft_slo_ms",
                              "tpot_slo_ms", "short_prompt_max_tokens", "forecast_window_seconds"))
    enabled = p.boolean(s, path, "enabled", False)
    arns = s.get("certificate_arns", {})
    where = p.join(path, "certificate_arns")
    if not isinstance(arns, Mapping):
        raise ConfigError(where, arns, "an object mapping each configured region to an ACM certificate ARN")
    for region, arn in arns.items():
        match = CERTIFICATE_ARN.match(arn) if isinstance(arn, str) else None
        if region not in regions:
            raise ConfigError(p.join(where, region), arn, f"a configured region: {', '.join(regions)}")
        if match is None or match.group(1) != region:
            raise ConfigError(p.join(where, region), arn,
                              f"an ACM certificate ARN in {region}: arn:aws:acm:{region}:ACCOUNT:certificate/ID")
        if account is not None and match.group(2) != account:
            raise ConfigError(p.join(where, region), arn, f"a certificate in account {account}")
    if enabled:
        for region in regions:
            if region not in arns:
                raise ConfigError(p.join(where, region), None,
                                  "an ACM certificate ARN for the endpoint's TLS listener (realtime is enabled)")
    cidrs = p.string_list(s, path, "allowed_cidrs", (), allow_empty=True)
    for i, cidr in enumerate(cidrs):
        if not re.fullmatch(r"(\d{1,3}\.){3}\d{1,3}/\d{1,2}", cidr):
            raise ConfigError(p.join(p.join(path, "allowed_cidrs"), i), cidr, "an IPv4 CIDR such as 10.0.0.0/8")
    return RealtimeConfig(
        enabled=enabled, certificate_arns=dict(arns), allowed_cidrs=cidrs,
        latency_slo_p99_ms=(p.integer(s, path, "latency_slo_p99_ms", 2000, minimum=50, maximum=600_000)
                            if s.get("latency_slo_p99_ms") is not None else None),
        # MLPerf Inference's server limits for Llama-3.1-8B (mlcommons/inference loadgen/mlperf.conf).
        ttft_slo_ms=p.integer(s, path, "ttft_slo_ms", 2000, minimum=50, maximum=600_000),
        tpot_slo_ms=p.integer(s, path, "tpot_slo_ms", 100, minimum=1, maximum=60_000),
        short_prompt_max_tokens=(p.integer(s, path, "short_prompt_max_tokens", 0, minimum=0, maximum=1_000_000)
                                 if s.get("short_prompt_max_tokens") is not None else None),
        forecast_window_seconds=p.integer(s, path, "forecast_window_seconds", 900, minimum=0, maximum=86_400),
        initial_gpu_weight=p.integer(s, path, "initial_gpu_weight", 50, minimum=0, maximum=100),
        max_weight_step=p.integer(s, path, "max_weight_step", 20, minimum=1, maximum=100),
        # Pins are required only where the servers run: with the endpoint enabled, in a production config.
        cpu_server=_server(s.get("cpu_server"), p.join(path, "cpu_server"), "cpu", production=production and enabled),
        gpu_server=_server(s.get("gpu_server"), p.join(path, "gpu_server"), "gpu", production=production and enabled),
    )
