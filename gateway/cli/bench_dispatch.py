"""`gpufaas bench dispatch`: warm dispatch round trip and cold-start breakdown of a live backend.

What it measures (any backend of the registry, `emulated`, batch 1, a 0 ms profile, so the figures are
the platform's own cost): one instance is cold-started by the first invocation, its start-up parts are
reported (`cold_start_ms`, the whole, and `cold_start_parts_ms`: the backend's parts, e.g. spawn_ms,
imports_ms, model_build_ms, first_batch_ms for the process backend, create_ms, start_ms, worker_ready_ms
for docker; the same name means the same figure on every backend), then `--warm` invocations run one
after another on the warm instance; `warm_rtt_ms` is the batch's round trip as the controller sees it
(handed to the backend -> `on_batch_done`, the invocation's stage times), `invocation_rtt_ms` the whole
invocation (submit to on_done). With `--execute real`
(process backend) the cold start includes torch's import and the model build of the function named by
`--function` (its real bundle from functions/). Where the instance has a worker pid (process backend), its
worker is then SIGKILLed and one more invocation sent: `kill_to_served_ms` (kill to that invocation's end:
detection, the replacement's cold start, the run) beside `replacement_cold_start_ms`. Prints figures;
asserts nothing.

One probe for every backend: `measure(backend, ...)` drives any `LiveBackend` through the same
controller, cluster, function and workflow and times it from the controller's side, so the backends'
figures mean the same and no backend carries instrumentation for it.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from gpufaas.gateway.cli.bench import emit
from gpufaas.platform.backends.registry import backend_names
from gpufaas.platform.errors import UserError
from gpufaas.platform.stats import quantiles
from gpufaas.platform.shipped import functions_dir

if TYPE_CHECKING:
    from gpufaas.platform.backends.interface import LiveBackend
    from gpufaas.platform.controller import Controller
    from gpufaas.platform.runtime import Invocation
    from gpufaas.platform.specs import FunctionSpec

FUNCTIONS = functions_dir()
# One node, one A100-80GB: the dispatch benchmark times one instance, so placement never matters.
BENCH_CLUSTER = {
    "gpu_types": [{"name": "A100-80GB", "memory_mb": 81920, "price_per_hour_usd": 5.12, "share_units": 10}],
    "nodes": [{"name": "node-0", "gpu_type": "A100-80GB", "gpus": 1}]}
BENCH_WORKFLOW = "bench"
Execute = Literal["emulated", "real"]


def bench_function(execute: str, function: str, tmp: Path) -> tuple[FunctionSpec, Path]:
    """The function the probe deploys and its bundle folder: for `emulated`, `bench-zero` on the 0 ms
    profile (a bundle with only function.yaml: the emulated worker never imports a handler); for `real`,
    the shipped bundle `function` at batch 1, whole GPU. UserError for an unknown function."""
    import yaml

    from gpufaas.platform.specs import FunctionSpec, load_yaml

    if execute == "emulated":
        spec = FunctionSpec.model_validate({"name": "bench-zero", "model": "zero", "batch_sizes": [1], "shares": [1.0],
                                            "outputs": {"y": {"dtype": "float32", "shape": [16]}}})
        bundle = tmp / "bundle"
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "function.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        return spec, bundle
    bundle = FUNCTIONS / function
    if not (bundle / "function.yaml").is_file():
        raise UserError(f"--function: no bundle {bundle}; choose a folder of functions/ with a function.yaml")
    spec = load_yaml(bundle / "function.yaml", FunctionSpec).model_copy(update={"batch_sizes": [1], "shares": [1.0]})
    return spec, bundle


async def measure(backend: LiveBackend, spec: FunctionSpec, bundle: Path, *, num_warm: int = 300,
                  execute: Execute = "emulated") -> dict:
    """Prepare `backend` on `BENCH_CLUSTER`, deploy `spec` (bundle folder `bundle`), time one cold and
    `num_warm` warm invocations; returns the `bench dispatch` JSON. Who calls it: the `dispatch` command
    and the tests. Closes the backend (`aclose`) before it returns."""
    from gpufaas.platform.clock import LoopClock
    from gpufaas.platform.controller import Controller
    from gpufaas.platform.policy.registry import builtin_registry
    from gpufaas.platform.profiles import Profiles, zero_profile
    from gpufaas.platform.specs import ClusterSpec, WorkflowSpec

    cluster = ClusterSpec.model_validate(BENCH_CLUSTER)
    profiles = Profiles.shipped()
    profiles.add(zero_profile("zero", "A100-80GB"))
    wf = WorkflowSpec.model_validate({"name": BENCH_WORKFLOW, "slo_ms": 60_000, "stages": [{"name": "s", "function": spec.name}]})
    loop = asyncio.get_running_loop()
    ctl: Controller | None = None
    try:
        await loop.run_in_executor(None, backend.prepare, cluster)
        await loop.run_in_executor(None, backend.prepare_function, spec, bundle)
        ctl = Controller(cluster, profiles, builtin_registry().make("batch1-wholegpu"), backend, LoopClock(),
                         live=True, keep_alive_s=600)
        ctl.deploy_function(spec)
        ctl.deploy_workflow(wf)
        info, rtt_ns, e2e_ns = await _cold_then_warm(ctl, num_warm)
        replaced = await _kill_and_replace(ctl) if "pid" in info else None
    finally:
        await backend.aclose()  # first, as the gateway does: the controller's shutdown then finds nothing left
        if ctl is not None:
            ctl.shutdown()
    out = report(backend.name, execute, spec.name, rtt_ns, e2e_ns, info)
    if replaced is not None:
        out["kill_to_served_ms"], out["replacement_cold_start_ms"] = replaced
    return out


async def _cold_then_warm(ctl: Controller, num_warm: int) -> tuple[dict, list[int], list[int]]:
    """One invocation (it cold-starts the instance), then `num_warm` one after another. Returns the
    instance's start-up info, the warm batches' round trips (the one stage's start to end, controller
    clock) and the warm invocations' submit-to-done times, in ns. UserError if any invocation fails."""
    from gpufaas.platform.clock import perf_ns

    first = await _one(ctl)
    if first.status.name != "COMPLETED":
        raise UserError(f"bench dispatch: the cold-start invocation failed: {first.reason}")
    info = dict(next(iter(ctl.instances.values())).info)
    rtt_ns: list[int] = []
    e2e_ns: list[int] = []
    for i in range(num_warm):
        t0 = perf_ns()
        inv = await _one(ctl)
        e2e_ns.append(perf_ns() - t0)
        if inv.status.name != "COMPLETED":
            raise UserError(f"bench dispatch: warm invocation {i} failed: {inv.reason}")
        assert inv.stage_ns is not None, "a live controller records stage times"
        start_ns, end_ns = inv.stage_ns[0]
        rtt_ns.append(end_ns - start_ns)
    return info, rtt_ns, e2e_ns


async def _kill_and_replace(ctl: Controller) -> tuple[float, float]:
    """SIGKILL the warm instance's worker, then submit one invocation: (ms from the kill until that
    invocation completed, the replacement instance's own cold start in ms). The fault test
    (tests/test_hardening_faults.py) checks that nothing is lost; this says how long a user waits."""
    import os
    import signal

    from gpufaas.platform.clock import perf_ns

    (inst,) = ctl.instances.values()
    t0 = perf_ns()
    os.kill(int(inst.info["pid"]), signal.SIGKILL)
    inv = await _one(ctl)
    waited_ms = (perf_ns() - t0) / 1e6
    if inv.status.name != "COMPLETED":
        raise UserError(f"bench dispatch: the invocation after the worker's kill failed: {inv.reason}")
    (new,) = ctl.instances.values()
    return round(waited_ms, 3), float(new.info["cold_start_ms"])


async def _one(ctl: Controller) -> Invocation:
    """Submit one invocation of the bench workflow and wait for its end (300 s at most)."""
    fut: asyncio.Future[Invocation] = asyncio.get_running_loop().create_future()

    def done(inv: Invocation) -> None:
        if not fut.done():
            fut.set_result(inv)

    ctl.submit(BENCH_WORKFLOW, None, on_done=done)
    return await asyncio.wait_for(fut, 300)


def report(backend: str, execute: str, function: str, round_trips_ns: list[int], e2e_ns: list[int], info: dict) -> dict:
    """The `gpufaas bench dispatch` JSON: warm batch round trips, whole invocations, and
    the cold start (`cold_start_ms`) with its parts (every other `*_ms` figure of the instance's info)."""

    def pct(xs: list[int], *ps: float) -> list[float]:
        return [round(v / 1e6, 4) for v in quantiles(xs, [p / 100 for p in ps])]

    rt50, rt99 = pct(round_trips_ns, 50, 99)
    e50, e99 = pct(e2e_ns, 50, 99)
    parts = {k: v for k, v in info.items() if k.endswith("_ms") and k != "cold_start_ms"}
    return {"backend": backend, "execute": execute, "function": function, "num_warm": len(e2e_ns),
            "warm_rtt_ms": {"p50": rt50, "p99": rt99, "mean": round(statistics.fmean(round_trips_ns) / 1e6, 4)},
            "invocation_rtt_ms": {"p50": e50, "p99": e99},
            "cold_start_ms": info["cold_start_ms"], "cold_start_parts_ms": parts}


async def measure_backend(name: str, *, num_warm: int = 300, execute: Execute = "emulated", function: str = "aggregator") -> dict:
    """Build backend `name` through the registry (scope `bench` for docker) and `measure` it. UserError
    when the backend is unavailable or `execute` real is asked of a backend other than process."""
    from gpufaas.platform.backends.registry import BackendOptions, build_backend
    from gpufaas.platform.clock import LoopClock

    if execute == "real" and name != "process":
        # NOTE: the registry builds docker and ray emulated-only (as the gateway does); a "real" figure
        # from them would be an emulated one under another name.
        raise UserError(f"--execute real: only --backend process runs the handler here, not {name}")
    with tempfile.TemporaryDirectory(prefix="gpufaas-bench-") as tmp:
        spec, bundle = bench_function(execute, function, Path(tmp))
        backend = build_backend(name, LoopClock(), BackendOptions(execute=execute, scope="bench", bundles_dir=bundle.parent),
                                lambda _name: bundle)
        return await measure(backend, spec, bundle, num_warm=num_warm, execute=execute)


@click.command("dispatch")
@click.option("--backend", type=click.Choice(backend_names()), default="process", show_default=True,
              help="a live backend of the registry (inproc: the controller's own cost, no worker)")
@click.option("--execute", type=click.Choice(["emulated", "real"]), default="emulated", show_default=True,
              help="process backend: emulated (0 ms profile) or real (torch forward of --function)")
@click.option("--function", default="aggregator", show_default=True, help="bundle under functions/ for --execute real")
@click.option("--warm", "num_warm", type=click.IntRange(10, 100_000), default=300, show_default=True, help="warm invocations")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def COMMAND(backend: str, execute: Execute, function: str, num_warm: int, as_json: bool) -> None:  # noqa: N802
    """Warm dispatch round trip (p50/p99) and cold-start breakdown of a live backend."""
    emit("dispatch", asyncio.run(measure_backend(backend, num_warm=num_warm, execute=execute, function=function)), as_json)
