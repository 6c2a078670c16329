"""`gpufaas bench gateway`: the synchronous invoke path against a bare aiohttp + uvloop handler.

Both servers run side by side in child processes pinned to the same core (uvloop), each started with
`loadgen.standin.start`: the gateway (this module run with `python -m`) with the inproc backend and a 0 ms
profile (a one-stage workflow whose instance is warm; every request still goes submit -> policy pass ->
backend -> completion -> metrics and accounting), and the stand-in server `loadgen.standin`, a bare
handler that reads the body and returns, JSON-encoded per request, the same body the gateway returned.
One load client, pinned to another core where there is one, drives both the same way with the live
driver's HTTP/1.1 client (`loadgen.httpfast`): `closed_loop` (keep-alive, `concurrency` connections, one
request in flight each) for throughput, a one-connection `FastPool` for sequential round trips.

Measurement, made to survive a noisy machine: both servers are warmed up, then `rounds` rounds each
measure both back to back, alternating which goes first (ABBA), followed by the median latency of
sequential requests on one connection. The figures are medians over rounds: rps of each, the per-round
ratio gateway/bare, and the per-round latency difference. Server CPU time per request (from /proc) is
reported too, with how busy each server was: a server well below 100% busy was limited by the client,
by wake-up latency between the two cores, or by other load on the machine, not by itself. 64 connections
keep both servers saturated on this 2-core machine; at 16 the bare server idled ~25% of the time between
bursts, which understated its rps and flattered the ratio (the figures then disagree with cpu_ratio).

JSON: {"gateway_rps", "bare_rps", "ratio", "added_latency_ms_p50", ...} (figures only, never pass/fail).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import click

from gpufaas.loadgen.httpfast import BadResponse, FastPool, closed_loop, encode_post
from gpufaas.platform.clock import perf_ns

WORKFLOW = "zero-wf"
INVOKE_PATH = f"/v1/workflows/{WORKFLOW}/invoke"


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _start(procs: list[subprocess.Popen], module: str, *args: str, cpu: int | None) -> tuple[subprocess.Popen, int]:
    """`loadgen.standin.start`, the process added to `procs` (which `measure` terminates); a ClickException
    when it does not start."""
    from gpufaas.loadgen import standin

    try:
        proc, port = standin.start(module, *args, cpu=cpu)
    except RuntimeError as e:
        raise click.ClickException(f"bench: {e}") from None
    procs.append(proc)
    return proc, port


async def _latency(pool: FastPool, request: bytes, n: int) -> float:
    """Median round trip (ms) of `n` sequential requests on one connection of `pool`; each must answer 200."""
    out = []
    for _ in range(n):
        t0 = perf_ns()
        status, body = await pool.request(request)
        out.append((perf_ns() - t0) / 1e6)
        if status != 200:
            raise click.ClickException(f"bench: server answered {status}: {body[:200]!r}")
    return statistics.median(out)


def measure(*, duration_s: float = 2.0, concurrency: int = 64, rounds: int = 5, latency_n: int = 300, warmup_s: float = 1.0,
            policy: str = "batch1-wholegpu", on_round: Callable[[int], None] | None = None) -> dict:
    """Run the comparison; returns the figures (see the module docstring). `on_round(i)` runs after each
    measured round (progress)."""
    import uvloop

    from gpufaas.gateway.client import Client
    from gpufaas.gateway.config import ADMIN_KEY_FILE

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    tmp = Path(tempfile.mkdtemp(prefix="gpufaas-bench-gw-"))
    procs: list[subprocess.Popen] = []
    try:
        gw, gw_port = _start(procs, __name__, str(tmp / "gw"), policy, cpu=server_cpu)
        key = (tmp / "gw" / ADMIN_KEY_FILE).read_text().strip()  # written by the gateway's first start, before it listens
        auth = {"Authorization": f"Bearer {key}"}
        client = Client(f"http://127.0.0.1:{gw_port}", timeout_s=30, api_key=key)
        client.request("POST", "/v1/functions", {"name": "zero", "model": "zero", "batch_sizes": [1, 2, 4, 8], "shares": [1.0],
                                                 "outputs": {"y": {"dtype": "float32", "shape": [4]}}})
        client.deploy_workflow({"name": WORKFLOW, "slo_ms": 1000, "stages": [{"name": "s", "function": "zero"}]})
        _, sample = client.invoke(WORKFLOW)
        if sample.get("status") != "completed":
            raise click.ClickException(f"bench: the gateway's warm-up invocation ended {sample.get('status')}: {sample.get('reason')}")
        (tmp / "body.json").write_text(json.dumps(sample))
        bare, bare_port = _start(procs, "gpufaas.loadgen.standin", "--body", str(tmp / "body.json"), cpu=server_cpu)
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        servers = {"bare": (bare, bare_port), "gateway": (gw, gw_port)}
        rps: dict[str, list[float]] = {"bare": [], "gateway": []}
        cpu_us: dict[str, list[float]] = {"bare": [], "gateway": []}
        busy: dict[str, list[float]] = {"bare": [], "gateway": []}
        lat: dict[str, list[float]] = {"bare": [], "gateway": []}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            ports = {kind: port for kind, (_, port) in servers.items()}
            # the same request to both (the stand-in ignores the key)
            reqs = {kind: encode_post("127.0.0.1", port, INVOKE_PATH, b"{}", auth) for kind, port in ports.items()}
            seq = {kind: FastPool("127.0.0.1", port, 1) for kind, port in ports.items()}  # sequential round trips

            def load(kind: str, secs: float) -> tuple[int, float]:
                try:
                    return r.run(closed_loop("127.0.0.1", ports[kind], reqs[kind], concurrency, secs))
                except (BadResponse, OSError) as e:
                    raise click.ClickException(f"bench: {kind} server: {e}") from None

            for kind in servers:  # warm-up: connections, caches, the policy's instance
                load(kind, warmup_s)
                r.run(_latency(seq[kind], reqs[kind], 50))
            for i in range(rounds):
                order = ("bare", "gateway") if i % 2 == 0 else ("gateway", "bare")
                for kind in order:
                    p = servers[kind][0]
                    c0 = _cpu_s(p.pid)
                    n, secs = load(kind, duration_s)
                    c1 = _cpu_s(p.pid)
                    rps[kind].append(n / secs)
                    if c0 is not None and c1 is not None and n:
                        cpu_us[kind].append((c1 - c0) / n * 1e6)
                        busy[kind].append((c1 - c0) / secs)
                for kind in order:
                    lat[kind].append(r.run(_latency(seq[kind], reqs[kind], latency_n)))
                if on_round is not None:
                    on_round(i)
            for pool in seq.values():
                pool.close()
        usage = client.get("/v1/usage")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    med = statistics.median
    ratios = [g / b for g, b in zip(rps["gateway"], rps["bare"]) if b > 0]
    added = [g - b for g, b in zip(lat["gateway"], lat["bare"])]
    out = {"gateway_rps": round(med(rps["gateway"]), 1), "bare_rps": round(med(rps["bare"]), 1),
           "ratio": round(med(ratios), 3) if ratios else 0.0,
           "added_latency_ms_p50": round(med(added), 3),
           "gateway_latency_ms_p50": round(med(lat["gateway"]), 3), "bare_latency_ms_p50": round(med(lat["bare"]), 3),
           "ratio_min": round(min(ratios), 3) if ratios else 0.0, "ratio_max": round(max(ratios), 3) if ratios else 0.0,
           "round_ratios": [round(x, 3) for x in ratios]}
    if cpu_us["gateway"] and cpu_us["bare"]:
        out.update({"gateway_cpu_us_per_req": round(med(cpu_us["gateway"]), 1), "bare_cpu_us_per_req": round(med(cpu_us["bare"]), 1),
                    "cpu_ratio": round(med(b / g for g, b in zip(cpu_us["gateway"], cpu_us["bare"])), 3),
                    "gateway_server_busy": round(med(busy["gateway"]), 2), "bare_server_busy": round(med(busy["bare"]), 2)})
    out.update({"policy": policy, "concurrency": concurrency, "duration_s": duration_s, "rounds": rounds,
                "server_cpu": server_cpu, "client_cpu": client_cpu,
                "loadavg_1m_before": round(load_before, 2) if load_before is not None else None,
                "loadavg_1m_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                "gateway_completed": usage.get("completed"), "gateway_rejected": usage.get("rejected")})
    return out


@click.command("gateway")
@click.option("--duration", "duration_s", type=float, default=2.0, show_default=True, help="seconds per measured round and server")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="connections, one request in flight each (enough to keep both servers 100% busy)")
@click.option("--rounds", type=click.IntRange(1, 50), default=5, show_default=True, help="interleaved rounds; the medians count")
@click.option("--warmup", "warmup_s", type=float, default=1.0, show_default=True, help="seconds of warm-up load per server")
@click.option("--policy", default="batch1-wholegpu", show_default=True, help="the gateway's policy")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def COMMAND(duration_s: float, concurrency: int, rounds: int, warmup_s: float, policy: str, as_json: bool) -> None:  # noqa: N802 (bench.py looks for COMMAND)
    """Gateway invoke path vs a bare aiohttp+uvloop handler (0 ms profile, both servers on one core)."""
    from gpufaas.gateway.cli import progress
    from gpufaas.gateway.cli.bench import emit
    from gpufaas.platform.policy.registry import builtin_registry

    builtin_registry().policy_class(policy)  # an unknown policy: UserError (exit 2) before any server starts
    with progress.make(as_json, transient=True) as bar:
        task = bar.add_task("bench gateway", total=rounds, info=f"{policy}, {concurrency} connections")
        r = measure(duration_s=duration_s, concurrency=concurrency, rounds=rounds, warmup_s=warmup_s, policy=policy,
                    on_round=lambda i: bar.advance(task))
    if as_json:
        emit("gateway", r, True)
    else:
        click.echo(f"gateway: {r['gateway_rps']:.0f} req/s, bare aiohttp+uvloop: {r['bare_rps']:.0f} req/s, ratio {r['ratio']:.2f} "
                   f"(median of {r['rounds']} rounds, {r['ratio_min']:.2f}-{r['ratio_max']:.2f}); median latency "
                   f"{r['gateway_latency_ms_p50']:.3f} vs {r['bare_latency_ms_p50']:.3f} ms (added {r['added_latency_ms_p50']:.3f} ms); "
                   f"policy {r['policy']}, {r['concurrency']} connections")


def _serve_gateway(data_dir: str, policy: str) -> None:
    """The gateway child (`python -m gpufaas.gateway.cli.bench_gateway DATA_DIR POLICY`, started by `measure`):
    the inproc backend with a 0 ms profile and instant cold starts, on any free port (printed)."""
    from gpufaas.gateway.app import create_app
    from gpufaas.gateway.config import GatewayConfig
    from gpufaas.loadgen.standin import serve

    serve(create_app(GatewayConfig(backend="inproc", zero_profile=True, cold_start_scale=0.0, data_dir=Path(data_dir),
                                   policy=policy or None, port=0)))


if __name__ == "__main__":
    import sys

    _serve_gateway(*sys.argv[1:3])
