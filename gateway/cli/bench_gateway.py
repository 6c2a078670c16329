"""`gpufaas bench gateway`: the synchronous invoke path against a bare aiohttp + uvloop handler.

Both servers run in a child process pinned to one core (uvloop): the gateway with the inproc backend
and a 0 ms profile (a one-stage workflow whose instance is warm), and a bare handler that returns the
same JSON body the gateway returned. A small raw-socket HTTP/1.1 client (keep-alive, one request in
flight per connection), pinned to another core where there is one, measures requests per second at a
fixed concurrency, then the median latency of sequential requests; rounds alternate bare and gateway,
and the best round of each counts. Figures only, never pass/fail.

JSON: {"gateway_rps", "bare_rps", "ratio", "added_latency_ms_p50", ...}.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click

WORKFLOW = "zero-wf"


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def _serve(kind: str, port: int, cpu: int | None, arg: str) -> None:
    """Child process: serve the bare handler (`arg` = file with the body) or the gateway (`arg` = data dir, policy)."""
    import uvloop
    from aiohttp import web

    _pin(cpu)
    if kind == "bare":
        body = json.loads(Path(arg).read_text())

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/workflows/{name}/invoke", handler)
    else:
        from gpufaas.gateway.app import create_app
        from gpufaas.gateway.config import GatewayConfig

        data_dir, _, policy = arg.partition(",")
        app = create_app(GatewayConfig(backend="inproc", zero_profile=True, cold_start_scale=0.0, data_dir=Path(data_dir),
                                       policy=policy or None, port=port))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


def _start(kind: str, port: int, cpu: int | None, arg: str) -> subprocess.Popen:
    code = f"from gpufaas.gateway.cli.bench_gateway import _serve; _serve({kind!r}, {port}, {cpu!r}, {arg!r})"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            return p  # it answers (404/405): up
        except OSError:
            if p.poll() is not None:
                raise click.ClickException(f"bench server {kind} exited: {p.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
    p.kill()
    raise click.ClickException(f"bench server {kind} did not start")


def _post(url: str, path: str, doc: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(doc).encode(), method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


async def _load(port: int, concurrency: int, duration_s: float) -> tuple[int, float]:
    """Closed-loop load: `concurrency` keep-alive connections for `duration_s`. Returns (requests, seconds)."""
    body = b"{}"
    req = (f"POST /v1/workflows/{WORKFLOW}/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    count = 0
    stop_at = loop.time() + duration_s

    async def conn() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < stop_at:
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        n = int(line[15:])
                await reader.readexactly(n)
                if not head.startswith(b"HTTP/1.1 200"):
                    status_line = head.split(b"\r\n", 1)[0].decode()
                    raise click.ClickException(f"bench: server answered {status_line}")
                count += 1
        finally:
            writer.close()

    t0 = loop.time()
    await asyncio.gather(*(conn() for _ in range(concurrency)))
    return count, loop.time() - t0


async def _latency(port: int, n: int) -> float:
    """Median round trip (ms) of `n` sequential requests on one connection."""
    req = (f"POST /v1/workflows/{WORKFLOW}/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           f"Content-Length: 2\r\n\r\n{{}}").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        n_body = int([ln for ln in head.split(b"\r\n") if ln[:15].lower() == b"content-length:"][0][15:])
        await reader.readexactly(n_body)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    writer.close()
    out.sort()
    return out[len(out) // 2]


def measure(*, duration_s: float = 3.0, concurrency: int = 16, rounds: int = 2, latency_n: int = 500, policy: str = "batch1-wholegpu") -> dict:
    """Run the comparison; returns the figures (see the module docstring)."""
    import uvloop

    from gpufaas.gateway.demo import free_port

    ncpu = os.cpu_count() or 1
    server_cpu, client_cpu = (0, 1) if ncpu >= 2 else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="gpufaas-bench-gw-"))
    gw_port = free_port()
    gw = _start("gateway", gw_port, server_cpu, f"{tmp / 'gw'},{policy}")
    procs = [gw]
    try:
        url = f"http://127.0.0.1:{gw_port}"
        _post(url, "/v1/functions", {"name": "zero", "model": "zero", "batch_sizes": [1, 2, 4, 8], "shares": [1.0],
                                     "outputs": {"y": {"dtype": "float32", "shape": [4]}}})
        _post(url, "/v1/workflows", {"name": WORKFLOW, "slo_ms": 1000, "stages": [{"name": "s", "function": "zero"}]})
        sample = _post(url, f"/v1/workflows/{WORKFLOW}/invoke", {})
        if sample.get("status") != "completed":
            raise click.ClickException(f"bench: the gateway's warm-up invocation ended {sample.get('status')}: {sample.get('reason')}")
        (tmp / "body.json").write_text(json.dumps(sample))
        bare_port = free_port()
        procs.append(_start("bare", bare_port, server_cpu, str(tmp / "body.json")))
        _pin(client_cpu)
        best = {"bare": 0.0, "gateway": 0.0}
        lat = {"bare": [], "gateway": []}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            for kind, port in (("bare", bare_port), ("gateway", gw_port)):
                r.run(_load(port, concurrency, 0.5))  # warm-up
            for _ in range(rounds):
                for kind, port in (("bare", bare_port), ("gateway", gw_port)):
                    n, secs = r.run(_load(port, concurrency, duration_s))
                    best[kind] = max(best[kind], n / secs)
                    lat[kind].append(r.run(_latency(port, latency_n)))
        usage = json.loads(urllib.request.urlopen(url + "/v1/usage").read())
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    bare_p50, gw_p50 = min(lat["bare"]), min(lat["gateway"])
    return {"gateway_rps": round(best["gateway"], 1), "bare_rps": round(best["bare"], 1),
            "ratio": round(best["gateway"] / best["bare"], 3) if best["bare"] else 0.0,
            "added_latency_ms_p50": round(gw_p50 - bare_p50, 3), "gateway_latency_ms_p50": round(gw_p50, 3),
            "bare_latency_ms_p50": round(bare_p50, 3), "policy": policy, "concurrency": concurrency,
            "duration_s": duration_s, "rounds": rounds, "server_cpu": server_cpu, "client_cpu": client_cpu,
            "gateway_completed": usage.get("completed"), "gateway_rejected": usage.get("rejected")}


@click.command("gateway")
@click.option("--duration", "duration_s", type=float, default=3.0, show_default=True, help="seconds per measured round and server")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=16, show_default=True, help="connections, one request in flight each")
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True, help="alternating rounds; the best counts")
@click.option("--policy", default="batch1-wholegpu", show_default=True, help="the gateway's policy")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def COMMAND(duration_s: float, concurrency: int, rounds: int, policy: str, as_json: bool) -> None:  # noqa: N802 (bench.py looks for COMMAND)
    """Gateway invoke path vs a bare aiohttp+uvloop handler (0 ms profile, one server core)."""
    from gpufaas.gateway.cli.bench import emit

    r = measure(duration_s=duration_s, concurrency=concurrency, rounds=rounds, policy=policy)
    if as_json:
        emit("gateway", r, True)
    else:
        click.echo(f"gateway: {r['gateway_rps']:.0f} req/s, bare aiohttp+uvloop: {r['bare_rps']:.0f} req/s, ratio {r['ratio']:.2f}; "
                   f"median latency {r['gateway_latency_ms_p50']:.3f} vs {r['bare_latency_ms_p50']:.3f} ms "
                   f"(added {r['added_latency_ms_p50']:.3f} ms); policy {r['policy']}, {r['concurrency']} connections")
