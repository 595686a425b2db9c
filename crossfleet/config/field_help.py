"""One line of help per configuration key, for docs/configuration.md (tools/config_reference.py)."""

from __future__ import annotations

FIELD_HELP = {
    "name": "deployment name; prefixes stacks, group names and tags with the stage",
    "stage": "e.g. dev or prod: two stages share an account and region without colliding",
    "production": "true for a production stage: model server images must be pinned by digest, models by revision",
    "account": "12-digit account id for the stacks' env; null deploys to the credentials' account",
    "regions": "where to deploy: a list of US regions or region objects, each once",
    "regions[].region": "a US region: us-east-1, us-east-2, us-west-1, us-west-2",
    "regions[].availability_zones": "explicit AZ names (no lookups at synth); set your account's names",
    "network.cidr": "VPC CIDR, /16 to /20",
    "network.nat_gateways": "NAT gateways for egress (0: isolated mode, instances reach only the VPC endpoints)",
    "network.interface_endpoints": "interface endpoints for SSM, SQS, CloudWatch, Logs, Auto Scaling",
    "network.flow_log_retention_days": "VPC flow log retention (a CloudWatch Logs value)",
    "network.models_s3_uri": "S3 prefix synced to /models at boot (via the S3 gateway endpoint: no NAT needed)",
    "graviton_fleet.instance_types": "arm64 CPU types in priority order (Graviton5 first)",
    "graviton_fleet.fallback_instance_types": "more arm64 types tried after those (Graviton4)",
    "graviton_fleet.min_size": "smallest Graviton fleet",
    "graviton_fleet.max_size": "largest Graviton fleet (the rebalancer never asks for more)",
    "graviton_fleet.on_demand_base_capacity": "instances always On-Demand; Spot above this",
    "graviton_fleet.on_demand_percentage_above_base": "share of On-Demand above the base (0 = all Spot)",
    "graviton_fleet.root_volume_gib": "encrypted gp3 root volume size",
    "graviton_fleet.spot_allocation_strategy": "price-capacity-optimized (ignores the type order) or "
                                               "capacity-optimized-prioritized (follows it, best effort)",
    "graviton_fleet.on_demand_price_per_hour": "$/hour of one instance of the first type On-Demand, for placement "
                                                "by marginal cost (null: the pinned price table)",
    "graviton_fleet.spot_price_per_hour": "$/hour of one instance of the first type on Spot (null: the price table)",
    "accelerator_cluster.kind": "nvidia (Deep Learning AMI) or neuron (Neuron AMI)",
    "accelerator_cluster.instance_types": "accelerated types in priority order",
    "accelerator_cluster.fallback_instance_types": "more accelerated types tried after those",
    "accelerator_cluster.min_size": "smallest GPU fleet (0: scales to zero when idle)",
    "accelerator_cluster.max_size": "largest GPU fleet",
    "accelerator_cluster.placement_group": "cluster placement group in one AZ; default on only for a one-type "
                                           "EFA group, never with a Capacity Block or several types",
    "accelerator_cluster.availability_zone": "the group's one AZ (required with a reservation or block: its AZ); "
                                             "unset: every configured AZ offering all its types",
    "accelerator_cluster.efa": "EFA network interface",
    "accelerator_cluster.spot": "Spot above base instead of On-Demand",
    "accelerator_cluster.capacity_reservation_id": "target an On-Demand Capacity Reservation (one type, no fallbacks)",
    "accelerator_cluster.capacity_block_id": "target a Capacity Block for ML (one type, no fallbacks)",
    "accelerator_cluster.root_volume_gib": "encrypted gp3 root volume size",
    "accelerator_cluster.warm_pool": "null, or {size, max_prepared, state, instance_type}: an On-Demand one-type warm "
                                     "lane of the GPU pool whose stopped instances already hold the image and "
                                     "weights (size: warm pool MinSize; max_prepared: the lane's in-service plus "
                                     "warm instances, default size; state: Stopped; instance_type: default the "
                                     "first type). Not with a reservation or block; see docs/aws-rules.md",
    "accelerator_cluster.on_demand_price_per_hour": "$/hour of one instance of the first type On-Demand, for "
                                                     "placement by marginal cost (null: the pinned price table)",
    "accelerator_cluster.spot_price_per_hour": "$/hour of one instance of the first type on Spot (null: the price "
                                               "table)",
    "queues.visibility_timeout_seconds": "a job's lease on its worker; heartbeats renew it",
    "queues.max_receive_count": "receives before SQS moves a message to the DLQ",
    "queues.retention_days": "how long a queued job waits before SQS drops it",
    "state.retain_on_delete": "keep the state table and results bucket when the stack is deleted",
    "rebalancer.mode": "enforce (act) or observe (decide and record only)",
    "rebalancer.schedule_minutes": "control period",
    "rebalancer.scale_in_delay_minutes": "how long a lower want must last before scale-in",
    "rebalancer.max_scale_up_step": "instances added per cycle when the gain is 0, and the least step otherwise",
    "rebalancer.max_scale_in_step": "most instances removed from a pool per cycle",
    "rebalancer.forecast_window_minutes": ("warm start: a pool keeps the largest want it saw this recently, weighted "
                                           "down linearly with age (0: no forecast floor)"),
    "rebalancer.forecast_burst_seconds": ("warm start, GPU pools: size the floor to work through the busiest recent "
                                          "minute's jobs within this many seconds (0: queue samples only)"),
    "rebalancer.scale_up_gain_percent": ("share of the gap between want and capacity added in one cycle (never "
                                         "less than max_scale_up_step; 0: fixed steps of max_scale_up_step)"),
    "rebalancer.max_launches_per_window": "runaway guard: launches in the last 15 minutes (at most 20 counted) "
                                          "that, with fewer instances in service or pending than asked for, hold "
                                          "the pool at what is usable",
    "rebalancer.runaway_hold_minutes": "how long the runaway guard holds a pool once it trips",
    "rebalancer.move_budget_per_cycle": "most queued jobs sampled (and moved) per cycle",
    "rebalancer.decision_ttl_days": "how long the decision log keeps a decision",
    "rebalancer.target_wait_seconds": "queue wait a pool is sized to drain within",
    "worker.cpu_runner": "how Graviton workers run jobs: http (local model server) or command",
    "worker.gpu_runner": "how GPU workers run jobs",
    "worker.cpu_concurrency": "jobs a Graviton worker runs at once",
    "worker.gpu_concurrency": "jobs a GPU worker runs at once",
    "worker.max_attempts": "tries before a job is dead-lettered with its reason",
    "worker.heartbeat_seconds": "how often a running job's lease is renewed",
    "worker.drain_seconds": "how long scale-in waits for running jobs (lifecycle hook timeout; at most 480 in a "
                            "Capacity Block group)",
    "monitoring.alarm_emails": "addresses subscribed to the alarm topic",
    "monitoring.oldest_job_alarm_seconds": "a queued job older than this pages",
    "monitoring.shortage_alarm_minutes": "failed launches this many minutes in a row page",
    "realtime.enabled": "an internal HTTPS endpoint per region in front of both pools' model servers",
    "realtime.certificate_arns": "ACM certificate ARN per region for the TLS listener (required when enabled)",
    "realtime.allowed_cidrs": "client networks allowed to reach the endpoint (default: the VPC's CIDR)",
    "realtime.latency_slo_p99_ms": "p99 response time the split's feedback keeps (default: TTFT + 252 tokens x TPOT)",
    "realtime.ttft_slo_ms": "time to first token the pools are sized for (MLPerf server limit for Llama-3.1-8B)",
    "realtime.tpot_slo_ms": "time per later output token (MLPerf server limit for Llama-3.1-8B)",
    "realtime.short_prompt_max_tokens": "longest prompt clients label x-crossfleet-size: short (default: what "
                                         "Graviton prefills within the TTFT limit)",
    "realtime.forecast_window_seconds": "how long the GPU pool holds the recent peak request rate",
    "realtime.initial_gpu_weight": "share of requests (%) the GPU pool gets before the rebalancer's first change",
    "realtime.max_weight_step": "most the GPU share (%) changes per cycle",
    "realtime.cpu_server.kind": "Graviton model server: llama.cpp (its OpenAI-compatible server)",
    "realtime.cpu_server.image": "container image of the Graviton model server (pin a digest for production)",
    "realtime.cpu_server.model": "a .gguf path on the instance (under /models) or a Hugging Face GGUF repo",
    "realtime.cpu_server.revision": "vllm only: llama.cpp cannot pin a revision (use a local .gguf path instead)",
    "realtime.cpu_server.port": "port the server listens on (the target group's port)",
    "realtime.cpu_server.health_path": "the server's health endpoint (the target group's health check)",
    "realtime.gpu_server.kind": "GPU model server: vllm (OpenAI-compatible)",
    "realtime.gpu_server.image": "container image of the GPU model server (pin a digest for production)",
    "realtime.gpu_server.model": "a model path on the instance or a Hugging Face model id",
    "realtime.gpu_server.revision": "Hugging Face commit (40 hex) vLLM loads; required for an id in production",
    "realtime.gpu_server.port": "port the server listens on (the target group's port)",
    "realtime.gpu_server.health_path": "the server's health endpoint (the target group's health check)",
}
