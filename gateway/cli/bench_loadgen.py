"""`gpufaas bench loadgen`: how fast the live driver sends on time, from one core, against a trivial server.

A trivial gateway (answers every invoke at once with a fixed completed body) runs in a separate process
so the driver has its own core; the driver (single-threaded asyncio on uvloop) sends an open-loop Poisson
stream at `--rate` for `--duration` seconds. Printed: achieved send rate `rps`, schedule lag p99
`lag_ms_p99` (target from issue 7: 2,000 rps with lag p99 < 5 ms), completed rate, latency p99, and the
driver's CPU use (process CPU seconds / wall seconds; <= 1 means it fit in one core). Figures, never
pass/fail.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Callable

import click

def measure(rate_rps: float = 2000.0, duration_s: float = 10.0, arrival: str = "poisson", connections: int = 256,
            client: str = "fast", progress: Callable[[float, int, int, int], None] | None = None) -> dict:
    """Run the driver against a fresh trivial server; returns the benchmark's figures. `progress` is the
    Driver's callback (elapsed_s, sent, completed, errors), about twice a second."""
    from gpufaas.loadgen import live_report, standin
    from gpufaas.loadgen.driver import Driver, run_blocking
    from gpufaas.loadgen.workload import StreamSpec, WorkloadSpec

    wl = WorkloadSpec(streams=[StreamSpec(workflow="bench", arrival=arrival, rate_rps=rate_rps)])
    # NOTE: the stand-in is a separate interpreter (`python -m gpufaas.loadgen.standin`), so it never shares
    # the driver's GIL; it prints its port once it listens.
    proc, port = standin.start("gpufaas.loadgen.standin")
    url = f"http://127.0.0.1:{port}"
    try:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.perf_counter()
        run = run_blocking(Driver(url, wl, seed=1, duration_s=duration_s, connections=connections, timeout_s=30, client=client,
                                  progress=progress))
        wall_s = time.perf_counter() - w0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    s = live_report.summarize(run)
    cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"rps": s["achieved_rps"], "lag_ms_p99": s["schedule_lag_ms"]["p99"], "target_rps": rate_rps, "arrival": arrival,
            "duration_s": duration_s, "client": client, "sent": s["sent"], "completed": s["completed"], "errors": s["error_count"],
            "completed_rps": s["completed_rps"], "lag_ms_p50": s["schedule_lag_ms"]["p50"], "lag_ms_max": s["schedule_lag_ms"]["max"],
            "latency_ms_p99": s["latency_ms"]["p99"], "driver_cpu_per_wall_s": round(cpu_s / wall_s, 3),
            "cpus": os.cpu_count()}


@click.command("loadgen")
@click.option("--rate", "rate_rps", type=float, default=2000.0, show_default=True, help="offered rate, requests per second")
@click.option("--duration", "duration_s", type=float, default=10.0, show_default=True, help="seconds of load")
@click.option("--arrival", type=click.Choice(["poisson", "constant"]), default="poisson", show_default=True, help="arrival process")
@click.option("--client", type=click.Choice(["fast", "aiohttp"]), default="fast", show_default=True, help="the driver's HTTP client")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def COMMAND(rate_rps: float, duration_s: float, arrival: str, client: str = "fast", as_json: bool = False) -> None:  # noqa: N802 (bench.py's module contract)
    """Live driver speed: achieved rps and schedule lag p99 against a trivial local server."""
    from gpufaas.gateway.cli import progress
    from gpufaas.gateway.cli.bench import emit
    from gpufaas.platform.errors import UserError

    if not rate_rps > 0 or not duration_s > 0:
        raise UserError("--rate and --duration: must be > 0")
    with progress.make(as_json, counts=False, transient=True) as bar:
        on_progress = progress.live_load(bar, "bench loadgen", duration_s)
        result = measure(rate_rps, duration_s, arrival, client=client, progress=on_progress if progress.shown(as_json) else None)
    emit("loadgen", result, as_json)
