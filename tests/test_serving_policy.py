"""The real-time split's properties: sums to 100, never to an unhealthy pool, bounded steps, no flapping, and a
GPU shortage moves traffic to Graviton and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from crossfleet_control.core.capacity_health import PROBING, SHORT, PoolHealth
from crossfleet_control.core.serving import (
    ServingMemory,
    ServingObservation,
    ServingOverride,
    ServingSettings,
    TargetTelemetry,
    cheapest_split,
    decide,
    requests_per_second_per_instance,
)
from crossfleet_control.core.settings import pool_spec

SPECS = {"cpu": pool_spec("cpu", "m9g.16xlarge", vcpus=64, accelerators=0, min_size=1, max_size=40),
         "gpu": pool_spec("gpu", "g6e.xlarge", vcpus=4, accelerators=1, min_size=0, max_size=40)}
SETTINGS = ServingSettings(latency_slo_p99_seconds=2.0, max_weight_step=20, calm_cycles=3)

telemetry = st.builds(TargetTelemetry, requests=st.floats(0, 50_000), p50_seconds=st.floats(0.01, 5),
                      p99_seconds=st.floats(0.01, 20), healthy_hosts=st.integers(0, 20).map(float))
health = st.sampled_from([PoolHealth(), PoolHealth(SHORT, 0.0), PoolHealth(PROBING, 0.25),
                          PoolHealth("healthy", 0.6, reason="recovering")])


@settings(max_examples=300, deadline=None)
@given(current=st.integers(0, 100), cpu=telemetry, gpu=telemetry, gpu_health=health,
       memory=st.builds(ServingMemory, pending_cost_target=st.none() | st.integers(0, 100),
                        calm=st.integers(0, 5)))
def test_split_is_whole_never_unhealthy_and_bounded(current, cpu, gpu, gpu_health, memory):
    decision = decide(ServingObservation(current, {"cpu": cpu, "gpu": gpu}, {"gpu": gpu_health}), SPECS, SETTINGS,
                      memory)
    weights = decision.weights
    assert weights is not None and sum(weights.values()) == 100 and all(0 <= w <= 100 for w in weights.values())
    assert decision.reason
    if cpu.healthy_hosts == 0 and gpu.healthy_hosts > 0:
        assert weights["cpu"] == 0, decision.reason
    elif gpu.healthy_hosts == 0 and cpu.healthy_hosts > 0:
        assert weights["gpu"] == 0, decision.reason
    else:
        # Both healthy (or neither: hold): the change is bounded.
        assert abs(decision.gpu_weight - current) <= SETTINGS.max_weight_step, decision.reason
    assert all(n >= 0 for n in decision.instances.values())


def test_unknown_telemetry_or_weights_hold_and_operators_are_obeyed():
    good = TargetTelemetry(600, 0.2, 0.5, 2)
    unknown = decide(ServingObservation(40, {"cpu": good, "gpu": TargetTelemetry(None, None, None, None)}, {}),
                     SPECS, SETTINGS, ServingMemory())
    assert unknown.gpu_weight == 40 and "unknown" in unknown.reason
    no_rule = decide(ServingObservation(None, {"cpu": good, "gpu": good}, {}), SPECS, SETTINGS, ServingMemory())
    assert no_rule.gpu_weight is None and not no_rule.changed
    frozen = decide(ServingObservation(40, {"cpu": good, "gpu": TargetTelemetry(600, 0.2, 9.0, 2)}, {},
                                       ServingOverride(frozen=True, note="model rollout")),
                    SPECS, SETTINGS, ServingMemory())
    assert frozen.gpu_weight == 40 and "model rollout" in frozen.reason
    pinned = decide(ServingObservation(40, {"cpu": good, "gpu": good}, {}, ServingOverride(pinned_gpu_weight=90)),
                    SPECS, SETTINGS, ServingMemory())
    assert pinned.gpu_weight == 90
    pinned_to_dead = decide(ServingObservation(40, {"cpu": good, "gpu": TargetTelemetry(0, None, None, 0)}, {},
                                               ServingOverride(pinned_gpu_weight=90)), SPECS, SETTINGS, ServingMemory())
    assert pinned_to_dead.gpu_weight == 0, "a pin never sends traffic to a pool with no healthy targets"


@dataclass
class Endpoint:
    """A closed loop: hosts follow the decision's instances after a boot delay; p99 grows with utilization."""

    rate: float  # requests per second
    gpu_weight: int = 50
    hosts: dict[str, float] = field(default_factory=lambda: {"cpu": 2.0, "gpu": 2.0})
    booting: list[tuple[int, str, float]] = field(default_factory=list)
    gpu_health: PoolHealth = field(default_factory=PoolHealth)
    memory: ServingMemory = field(default_factory=ServingMemory)
    cycle: int = 0
    history: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def p99(self, pool: str, share: float) -> float | None:
        if share <= 0 or self.hosts[pool] <= 0:
            return None
        load = self.rate * share / (self.hosts[pool] * requests_per_second_per_instance(SPECS[pool], SETTINGS)
                                    / SETTINGS.target_utilization)
        base = 0.2 if pool == "gpu" else 0.4  # Graviton serves a small model, slower per token
        return base / max(0.05, 1.0 - min(load, 0.95))

    def step(self) -> None:
        share = {"cpu": (100 - self.gpu_weight) / 100, "gpu": self.gpu_weight / 100}
        observed = {pool: TargetTelemetry(self.rate * share[pool] * 60, None, self.p99(pool, share[pool]),
                                          self.hosts[pool]) for pool in ("cpu", "gpu")}
        decision = decide(ServingObservation(self.gpu_weight, observed, {"gpu": self.gpu_health}), SPECS, SETTINGS,
                          self.memory)
        self.gpu_weight, self.memory = decision.gpu_weight, decision.memory
        self.history.append(self.gpu_weight)
        self.reasons.append(decision.reason)
        self.cycle += 1
        for pool, wanted in decision.instances.items():
            if pool == "gpu" and self.gpu_health.short:
                wanted = min(wanted, self.hosts[pool])  # no GPU launch succeeds
            elif pool == "gpu" and self.gpu_health.probing:
                wanted = min(wanted, self.hosts[pool] + 1)  # one probe at a time, as the pool's sizing allows
            wanted = max(wanted, SPECS[pool].min_size)
            coming = self.hosts[pool] + sum(n for _, p, n in self.booting if p == pool)
            wanted = min(wanted, SPECS[pool].max_size)
            if wanted > coming:
                self.booting.append((self.cycle + 2, pool, wanted - coming))
            elif wanted < self.hosts[pool]:
                self.hosts[pool] = float(wanted)
        ready = [b for b in self.booting if b[0] <= self.cycle]
        self.booting = [b for b in self.booting if b[0] > self.cycle]
        for _, pool, count in ready:
            self.hosts[pool] += count


def reversals(history: list[int]) -> int:
    steps = [b - a for a, b in pairwise(history) if b != a]
    return sum(1 for a, b in pairwise(steps) if (a > 0) != (b > 0))


def test_steady_load_settles_without_flapping():
    for rate in (0.2, 1.0, 5.0, 40.0):
        endpoint = Endpoint(rate=rate)
        for _ in range(40):
            endpoint.step()
        assert reversals(endpoint.history) == 0, (rate, endpoint.history, endpoint.reasons[-3:])
        assert len(set(endpoint.history[-10:])) == 1, (rate, endpoint.history)


def test_low_traffic_goes_to_graviton_and_high_traffic_to_gpus():
    assert cheapest_split(0.2, SPECS, SETTINGS) == 0, "an idle GPU costs more than Graviton at a trickle"
    assert cheapest_split(40.0, SPECS, SETTINGS) == 100, "at load GPUs are far cheaper per request"
    quiet, busy = Endpoint(rate=0.2), Endpoint(rate=40.0)
    for _ in range(30):
        quiet.step()
        busy.step()
    assert quiet.gpu_weight == 0 and busy.gpu_weight == 100, (quiet.history, busy.history)


def test_gpu_shortage_shifts_traffic_to_graviton_and_back_gradually():
    # A load at which GPUs alone are the cheapest split under the service model (at 4 req/s, with the cited
    # L40S prefill, one GPU plus a trickle to the Graviton minimum is cheaper: 95%).
    rate = 8.0
    assert cheapest_split(rate, SPECS, SETTINGS) == 100
    endpoint = Endpoint(rate=rate, gpu_weight=100, hosts={"cpu": 1.0, "gpu": 4.0})
    for _ in range(15):
        endpoint.step()
    assert endpoint.gpu_weight == 100
    endpoint.gpu_health = PoolHealth(SHORT, 0.0, reason="insufficient capacity")
    for _ in range(10):
        endpoint.step()
    during = endpoint.history[15:]
    assert during[-1] == 0, during
    assert all(a - b <= SETTINGS.max_weight_step for a, b in pairwise([100, *during])), "bounded steps down"
    assert "GPU capacity short" in endpoint.reasons[15]
    endpoint.gpu_health = PoolHealth(PROBING, 0.25)
    for _ in range(6):
        endpoint.step()
    assert 0 < max(endpoint.history[25:]) <= 25, "a probing GPU pool gets at most its admitted trickle"
    endpoint.gpu_health = PoolHealth("healthy", 0.5, reason="recovering")
    for _ in range(4):
        endpoint.step()
    assert max(endpoint.history[31:]) <= 50, "a recovering GPU pool no more than its admitted share"
    endpoint.gpu_health = PoolHealth()
    for _ in range(25):
        endpoint.step()
    back = endpoint.history[25:]
    assert back[-1] == 100, back
    assert all(b - a <= SETTINGS.max_weight_step for a, b in pairwise(back)), "bounded steps back"
    assert reversals(back) == 0, back
