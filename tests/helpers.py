"""Builders for unit tests: small clusters, functions, workflows and a controller on a fake or sim backend;
the golden simulation cases (test_core_sim.py, regen_golden.py); waiting on a condition with a deadline; a
wire frame body laid out by hand (`wire_body`), as a peer other than `platform.wire.encode` would send one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from aiohttp.test_utils import TestClient

from gpufaas.platform.backends.fake import FakeBackend
from gpufaas.platform.backends.sim import SimBackend
from gpufaas.platform.clock import VirtualClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec
from tests.conftest import SCENARIOS

A100 = {"name": "A100-80GB", "memory_mb": 81920, "price_per_hour_usd": 5.12, "share_units": 10}


def cluster(gpus: int = 2, nodes: int = 1, **net) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "gpu_types": [A100],
        "nodes": [{"name": f"node-{i}", "gpu_type": "A100-80GB", "gpus": gpus} for i in range(nodes)],
        **({"network": net} if net else {}),
    })


def function(name: str, model: str = "resnet50", **kw) -> FunctionSpec:
    spec = {"name": name, "model": model, "outputs": {"y": {"dtype": "float32", "shape": [1000]}}}
    spec.update(kw)
    return FunctionSpec.model_validate(spec)


def chain(name: str, fns: list[str], slo_ms: float = 200) -> WorkflowSpec:
    stages = [{"name": f"s{i}", "function": f, "after": [f"s{i - 1}"] if i else []} for i, f in enumerate(fns)]
    return WorkflowSpec.model_validate({"name": name, "slo_ms": slo_ms, "stages": stages})


def controller(policy, *, gpus: int = 2, nodes: int = 1, fake: bool = False, functions=(), workflows=(), **kw):
    """A controller on a VirtualClock with the given specs deployed; returns (ctl, clock, backend)."""
    clock = VirtualClock()
    backend = FakeBackend() if fake else SimBackend(clock)
    kw.setdefault("check_purity", True)
    ctl = Controller(cluster(gpus, nodes), Profiles.shipped(), policy, backend, clock, **kw)
    for f in functions:
        ctl.deploy_function(f)
    for w in workflows:
        ctl.deploy_workflow(w)
    return ctl, clock, backend


# ---------------------------------------------------------------- golden simulation runs

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
# (scenario, seconds of arrivals): chain (2 stages, one workflow), video (a fan-out/fan-in DAG), mixed
# (three workflows sharing the cluster); short enough that all policies x cases run in a few seconds
GOLDEN_SCENARIOS = (("chain", 30), ("video", 5), ("mixed", 10))
# the report's figures that a behaviour change moves; wall-clock ones (sim_wall_s, decision_us) and the
# event count (an implementation detail) are left out
GOLDEN_KEYS = ("invocations", "completed", "failed", "rejected", "timed_out", "slo_hit_rate", "cost", "latency_ms",
               "cold_starts", "cold_requests", "mean_batch", "refused_decisions", "per_workflow")


def golden_cases() -> list[tuple[str, int, str]]:
    """Every (scenario, seconds, policy) with a golden file: every registered policy on every scenario of
    GOLDEN_SCENARIOS, so a newly registered policy has no golden until one is generated on purpose."""
    from gpufaas.platform.policy.registry import builtin_registry

    return [(name, seconds, policy) for name, seconds in GOLDEN_SCENARIOS for policy in builtin_registry().names()]


def golden_path(scenario: str, seconds: int, policy: str) -> Path:
    return GOLDEN_DIR / f"{scenario}_{policy}_{seconds}s.json"


def golden_report(scenario: str, seconds: int, policy: str) -> dict:
    """The figures a golden file holds: the shipped `scenario` cut to `seconds`, under `policy`, with the
    invariants checked after every arrival and the policy's purity on every call."""
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.simdriver import run_scenario

    sc = load_scenario(SCENARIOS / f"{scenario}.yaml").model_copy(update={"duration_s": seconds})
    r = run_scenario(sc, policy, check_invariants=True, check_purity=True)
    return {k: r[k] for k in GOLDEN_KEYS}


# ---------------------------------------------------------------- waiting on a condition

T = TypeVar("T")
POLL_S = 0.005


async def wait_for(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, timeout_s: float = 10.0,
                   what: str = "the condition") -> T:
    """Await `probe()` until `done(value)` holds and return that value; AssertionError naming `what` and
    the last value when `timeout_s` passes first. Tests call it instead of sleeping a guessed time.

    NOTE: it polls (every 5 ms) because the things tests wait on (an HTTP resource's status, a count kept
    by the platform) publish no event; the deadline only bounds a failing test, a passing one returns as
    soon as the condition holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await probe()
        if done(value):
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(POLL_S)


async def get_json(client: TestClient, path: str) -> dict:
    """GET `path` through an aiohttp test client; its JSON body (the probe tests hand to `wait_for`)."""
    return await (await client.get(path)).json()


# The admin key the in-process test gateways install (GatewayConfig.admin_key) and their test clients send.
TEST_ADMIN_KEY = "gf_test-admin-key-of-the-suite"
AUTH = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`gpufaas ARGV` in this process: (exit code, stdout, stderr), with pytest's `capsys`."""
    from gpufaas.gateway.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_scenario(tmp_path, stream: str) -> "Path":
    """A 3 s scenario of the chain's image-classify workflow on 4 A100s with one workload `stream` (a YAML
    flow mapping): several policies x loads x seeds run in seconds."""
    from tests.conftest import FUNCTIONS, SCENARIOS

    p = tmp_path / "tiny.yaml"
    p.write_text(f"""
name: tiny
seed: 3
duration_s: 3
drain_s: 2
cluster: {SCENARIOS / 'clusters' / 'a100x4.yaml'}
functions: [{FUNCTIONS / 'preprocess'}, {FUNCTIONS / 'resnet50'}]
workflows: [{FUNCTIONS / 'workflows' / 'image-classify.yaml'}]
workload:
  streams:
    - {stream}
""")
    return p


def wire_body(fields: object, data: bytes = b"") -> bytes:
    """A frame body as platform/wire.py's module docstring lays it out, built here independently of
    `wire.encode`: the map's length, `fields` packed as given (any value, valid or not), then `data` from the
    next multiple of `wire.ALIGN` bytes (a tensor extension's offset counts from there)."""
    import struct

    import msgpack

    from gpufaas.platform import wire

    meta = msgpack.packb(fields, use_bin_type=True)
    head = 4 + len(meta)
    return struct.pack(">I", len(meta)) + meta + bytes(-head % wire.ALIGN if data else 0) + data
