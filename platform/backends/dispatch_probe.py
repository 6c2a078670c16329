"""Timing a live backend's dispatch path for `gpufaas bench dispatch`: one cold invocation, then warm ones.

Who calls it: `gateway/cli/bench_dispatch.py` (process backend) and `docker_backend.measure_dispatch`
(docker and ray backends). Each builds its own controller and backend on `BENCH_CLUSTER`; this module
runs the invocations and shapes the report both print, so the three backends' figures mean the same.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from gpufaas.platform.clock import perf_ns
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import Instance

# One node, one A100-80GB: the dispatch benchmarks time one instance, so placement never matters.
BENCH_CLUSTER = {
    "gpu_types": [{"name": "A100-80GB", "memory_mb": 81920, "price_per_hour_usd": 5.12, "share_units": 10}],
    "nodes": [{"name": "node-0", "gpu_type": "A100-80GB", "gpus": 1}]}


async def cold_then_warm(ctl: Any, workflow: str, num_warm: int) -> tuple[Instance, list[int]]:
    """Submit one invocation of `workflow` (it cold-starts an instance), clear the backend's recorded
    round trips, then run `num_warm` invocations one after another. Returns the instance and the warm
    invocations' submit-to-done times in ns, sorted. UserError if any invocation does not complete."""
    loop = asyncio.get_running_loop()

    async def one() -> Any:
        fut = loop.create_future()
        ctl.submit(workflow, None, on_done=lambda inv: fut.done() or fut.set_result(inv))
        return await asyncio.wait_for(fut, 300)

    first = await one()
    if first.status.name != "COMPLETED":
        raise UserError(f"bench dispatch: the cold-start invocation failed: {first.reason}")
    inst = next(iter(ctl.instances.values()))
    ctl.backend.round_trips_ns.clear()
    e2e_ns: list[int] = []
    for i in range(num_warm):
        t0 = perf_ns()
        inv = await one()
        e2e_ns.append(perf_ns() - t0)
        if inv.status.name != "COMPLETED":
            raise UserError(f"bench dispatch: warm invocation {i} failed: {inv.reason}")
    e2e_ns.sort()
    return inst, e2e_ns


def report(backend: str, execute: str, function: str, round_trips_ns: list[int], e2e_ns: list[int],
           cold_start_ms: dict) -> dict:
    """The `gpufaas bench dispatch` JSON: warm round trips as the backend saw them, whole invocations,
    and the cold start's parts."""
    rt = sorted(round_trips_ns)

    def q(xs: list[int], p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] / 1e6, 4)

    return {"backend": backend, "execute": execute, "function": function, "num_warm": len(e2e_ns),
            "warm_rtt_ms": {"p50": q(rt, 0.5), "p99": q(rt, 0.99), "mean": round(statistics.fmean(rt) / 1e6, 4)},
            "invocation_rtt_ms": {"p50": q(e2e_ns, 0.5), "p99": q(e2e_ns, 0.99)},
            "cold_start_ms": cold_start_ms}
