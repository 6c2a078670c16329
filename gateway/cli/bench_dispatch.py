"""`gpufaas bench dispatch`: warm dispatch round trip and cold-start breakdown of live worker processes.

What it measures (process backend, `emulated`, batch 1, a 0 ms profile, so the figures are the
platform's own cost): one instance is cold-started by the first invocation, its start-up parts are
reported (spawn, imports, model_build, first_batch, total; see backends/process.py), then `--warm`
invocations run one after another on the warm worker; `warm_rtt_ms` is controller -> worker -> back as
the backend sees it (frame written to result decoded), `invocation_rtt_ms` the whole invocation (submit
to on_done). With `--execute real` the cold start includes torch's import and the model build of the
function named by `--function` (its real bundle from functions/). Prints figures; asserts nothing.
`--backend docker|ray` runs the same measurement on those backends (their own `measure_dispatch`).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import click

from gpufaas.gateway.cli.bench import emit
from gpufaas.platform.shipped import functions_dir

FUNCTIONS = functions_dir()


async def measure_process(num_warm: int = 300, execute: str = "emulated", function: str = "aggregator") -> dict:
    """Cold start and warm round trips of the process backend; returns the `bench dispatch` JSON.
    Who calls it: the `dispatch` command and the tests. Starts and stops its own workers."""
    import yaml

    from gpufaas.platform.backends.dispatch_probe import BENCH_CLUSTER, cold_then_warm, report
    from gpufaas.platform.backends.process import ProcessBackend
    from gpufaas.platform.clock import LoopClock
    from gpufaas.platform.controller import Controller
    from gpufaas.platform.policy.registry import builtin_registry
    from gpufaas.platform.profiles import Profiles, zero_profile
    from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec, load_yaml

    cluster = ClusterSpec.model_validate(BENCH_CLUSTER)
    profiles = Profiles.shipped()
    profiles.add(zero_profile("zero", "A100-80GB"))
    with tempfile.TemporaryDirectory(prefix="gpufaas-bench-") as tmp:
        if execute == "emulated":
            # NOTE: a bundle with only function.yaml: the emulated worker never imports the handler.
            spec = FunctionSpec.model_validate({"name": "bench-zero", "model": "zero", "batch_sizes": [1], "shares": [1.0],
                                                "outputs": {"y": {"dtype": "float32", "shape": [16]}}})
            bundle = Path(tmp) / "bundle"
            bundle.mkdir()
            (bundle / "function.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        else:
            bundle = FUNCTIONS / function
            spec = load_yaml(bundle / "function.yaml", FunctionSpec).model_copy(update={"batch_sizes": [1], "shares": [1.0]})
        wf = WorkflowSpec.model_validate({"name": "bench", "slo_ms": 60_000, "stages": [{"name": "s", "function": spec.name}]})
        clock = LoopClock()
        backend = ProcessBackend(clock, execute=execute, bundle_dir=lambda _name: bundle, workdir=Path(tmp) / "run")
        ctl = Controller(cluster, profiles, builtin_registry().make("batch1-wholegpu"), backend, clock, live=True, keep_alive_s=600)
        ctl.deploy_function(spec)
        ctl.deploy_workflow(wf)
        try:
            inst, e2e_ns = await cold_then_warm(ctl, "bench", num_warm)
        finally:
            ctl.shutdown()
            await backend.aclose()
    cold = {k: inst.info[k] for k in ("spawn", "imports", "model_build", "first_batch", "total")}
    return report("process", execute, spec.name, backend.round_trips_ns, e2e_ns, cold)


@click.command("dispatch")
@click.option("--backend", type=click.Choice(["process", "docker", "ray"]), default="process", show_default=True)
@click.option("--execute", type=click.Choice(["emulated", "real"]), default="emulated", show_default=True,
              help="process backend: emulated (0 ms profile) or real (torch forward of --function)")
@click.option("--function", default="aggregator", show_default=True, help="bundle under functions/ for --execute real")
@click.option("--warm", "num_warm", type=click.IntRange(10, 100_000), default=300, show_default=True, help="warm invocations")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def COMMAND(backend: str, execute: str, function: str, num_warm: int, as_json: bool) -> None:  # noqa: N802
    """Warm dispatch round trip (p50/p99) and cold-start breakdown of a live backend."""
    if backend == "process":
        result = asyncio.run(measure_process(num_warm, execute, function))
    else:
        from gpufaas.platform.backends.docker_backend import measure_dispatch

        if backend == "docker":
            from gpufaas.platform.backends.docker_backend import DockerBackend

            be = DockerBackend(scope="bench")
        else:
            from gpufaas.platform.backends.ray_backend import RayBackend

            be = RayBackend()
        try:
            result = asyncio.run(measure_dispatch(be, num_warm=num_warm))
        finally:
            be.close()
    emit("dispatch", result, as_json)
