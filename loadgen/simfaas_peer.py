"""The SimFaaS cross-check workload: one function (resnet50 at batch 1, whole GPU) under Poisson arrivals,
simulated by gpufaas's `per-request` policy and by SimFaaS (Mahmoudi & Khazaei, "SimFaaS: A Performance
Simulator for Serverless Computing Platforms", CLOSER 2021; PyPI `simfaas`, a dev dependency).

Both simulators get the same figures: SimFaaS's warm service time is gpufaas's profiled batch-1 latency
of resnet50 at its whole share on an A100-80GB, its cold service time that plus the profiled cold start
(SimFaaS's cold request is served by the instance it starts, for the whole cold response time), its
expiration threshold the keep-alive. Both count from t = 0, an empty platform (no warm-up).

Who calls it: tests/test_simfaas_crosscheck.py (the model check) and `gpufaas bench sim` (the per-request
wall cost of both simulators). It changes nothing outside the runs it makes.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

from gpufaas.loadgen.scenario import Scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.loadgen.workload import arrivals
from gpufaas.platform.clock import perf_ns
from gpufaas.platform.errors import UserError
from gpufaas.platform.policy import names
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.shipped import functions_dir
from gpufaas.platform.specs import read_yaml
from gpufaas.platform.units import NS_PER_S

FUNCTION = "resnet50"
GPU_TYPE = "A100-80GB"
WORKFLOW = "classify"
# the grid: Poisson 0.5-50 rps x keep-alive 10 s and 60 s
RATES_RPS = (0.5, 5.0, 50.0)
KEEP_ALIVES_S = (10.0, 60.0)
# NOTE: enough GPUs that capacity never binds (SimFaaS's platform has none to bind): at 50 rps the first
# 3.16 s cold start alone starts ~160 instances, one whole A100 each
GPUS = 320
GPUS_PER_NODE = 8


class PeerResult(NamedTuple):
    """One simulator's figures on one cell: requests, cold requests (requests that waited on a cold start),
    cold-start probability, time-averaged instance count (running + idle, cold-starting included), wall
    time of the simulation itself."""

    requests: int
    cold_requests: int
    p_cold: float
    avg_instances: float
    wall_s: float

    @property
    def us_per_request(self) -> float:
        return self.wall_s * 1e6 / self.requests if self.requests else 0.0


def service_times_s(profiles: Profiles | None = None) -> tuple[float, float]:
    """(warm, cold) service time of one resnet50 request, seconds, from gpufaas's profile: the batch-1
    latency at the whole GPU, and that plus the profiled cold start (container + runtime init + model load)."""
    table = (profiles or Profiles.shipped()).table(FUNCTION, GPU_TYPE)
    warm_ms = table.latency_ms(1, 1.0)
    return warm_ms / 1e3, (warm_ms + table.cold_start.total_ms) / 1e3


def scenario(rate_rps: float, keep_alive_s: float, duration_s: float, seed: int = 1) -> Scenario:
    """The one-function scenario: resnet50 behind a one-stage workflow, Poisson arrivals at `rate_rps`,
    `keep_alive_s`, `GPUS` A100-80GB GPUs, no warm-up."""
    nodes = [{"name": f"node-{i}", "gpu_type": GPU_TYPE, "gpus": GPUS_PER_NODE} for i in range(GPUS // GPUS_PER_NODE)]
    return Scenario.model_validate({
        "name": "simfaas-one-function", "seed": seed, "duration_s": duration_s, "warmup_s": 0.0,
        "keep_alive_s": keep_alive_s,
        "cluster": {"gpu_types": [{"name": GPU_TYPE, "memory_mb": 81920, "price_per_hour_usd": 5.12, "share_units": 10}],
                    "nodes": nodes},
        "functions": [read_yaml(functions_dir() / FUNCTION / "function.yaml")],
        "workflows": [{"name": WORKFLOW, "slo_ms": 10_000, "stages": [{"name": "classify", "function": FUNCTION}]}],
        "workload": {"streams": [{"workflow": WORKFLOW, "arrival": "poisson", "rate_rps": rate_rps}]},
    })


def run_gpufaas(sc: Scenario) -> PeerResult:
    """`sc` simulated under `per-request`. The average instance count is the allocated GPU-seconds over the
    simulated time (every instance holds one whole GPU here) from t = 0 to the end of the drain."""
    r = run_scenario(sc, names.PER_REQUEST)
    n = r["invocations"]
    return PeerResult(n, r["cold_requests"], r["cold_requests"] / n if n else 0.0,
                      r["cost"]["gpu_seconds_allocated"] / r["sim_end_s"], r["sim_wall_s"])


class _Replay:
    """A SimFaaS arrival process (`generate_trace()` -> the next inter-arrival time, s) that replays given
    arrival times (integer ns)."""

    def __init__(self, times_ns: Iterator[int]) -> None:
        self._times = times_ns
        self._last_ns = 0

    def generate_trace(self) -> float:
        t = next(self._times)
        gap_ns, self._last_ns = t - self._last_ns, t
        return gap_ns / NS_PER_S


def run_simfaas(rate_rps: float, keep_alive_s: float, duration_s: float, *, replay: Scenario | None = None,
                seed: int = 1) -> PeerResult:
    """SimFaaS's `ServerlessSimulator` on the cell, with gpufaas's resnet50 service times (constant, as
    gpufaas's profile) and `keep_alive_s` as its expiration threshold, for `duration_s` (its `max_time`).
    With `replay`, SimFaaS replays that scenario's arrival times (the same sample path gpufaas simulates);
    else it draws its own Poisson arrivals (numpy's global generator, seeded with `seed`). UserError when
    simfaas is not installed."""
    try:
        import numpy as np
        from simfaas.ServerlessSimulator import ServerlessSimulator  # type: ignore[import-untyped]
        from simfaas.SimProcess import ConstSimProcess, ExpSimProcess  # type: ignore[import-untyped]
    except ImportError:
        raise UserError("simfaas is not installed (pip install simfaas, or `make install` for the dev dependencies)") from None
    warm_s, cold_s = service_times_s()
    arrival: Any
    if replay is not None:
        # NOTE: SimFaaS runs until its first event at or after max_time, which may be an arrival: the replay goes
        # on past the duration (the same stream, drawn for twice as long) so that there always is a next one
        arrival = _Replay(t for t, _ in arrivals(replay.workload, replay.seed, 2 * replay.duration_s + 100))
    else:
        np.random.seed(seed)
        arrival = ExpSimProcess(rate=rate_rps)
    sim = ServerlessSimulator(arrival_process=arrival, warm_service_process=ConstSimProcess(rate=1 / warm_s),
                              cold_service_process=ConstSimProcess(rate=1 / cold_s),
                              expiration_threshold=keep_alive_s, max_time=duration_s, maximum_concurrency=10**9)
    t0 = perf_ns()
    sim.generate_trace()
    wall_s = (perf_ns() - t0) / 1e9
    return PeerResult(sim.total_req_count, sim.total_cold_count, float(sim.get_cold_start_prob()),
                      float(sim.get_average_server_count()), wall_s)
