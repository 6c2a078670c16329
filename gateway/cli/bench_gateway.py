"""`gpufaas bench gateway`: the synchronous invoke path against a bare aiohttp + uvloop handler.

Both servers run side by side in child processes pinned to the same core (uvloop): the gateway with the
inproc backend and a 0 ms profile (a one-stage workflow whose instance is warm; every request still goes
submit -> policy pass -> backend -> completion -> metrics and accounting), and a bare handler that reads
the body and returns, JSON-encoded per request, the same body the gateway returned. One load client,
pinned to another core where there is one, drives both the same way: a small HTTP/1.1 client on raw
asyncio protocols (keep-alive, `concurrency` connections, one request in flight each), closed loop.

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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click

WORKFLOW = "zero-wf"
REQUEST = (f"POST /v1/workflows/{WORKFLOW}/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           f"Content-Length: 2\r\n\r\n{{}}").encode()


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


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class _Conn(asyncio.Protocol):
    """One keep-alive connection of the closed-loop client: send, read one whole response, send again."""

    def __init__(self, stop_at: float, done: asyncio.Future) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_at = stop_at
        self.done = done
        self.buf = b""
        self.need = -1  # bytes of the current response (head + body) once its head is parsed
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.need < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            head = buf[:i]
            if not head.startswith(b"HTTP/1.1 200"):
                status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
                self._end(click.ClickException(f"bench: server answered {status_line}"))
                return
            j = head.lower().find(b"\r\ncontent-length:")
            if j < 0:
                self._end(click.ClickException("bench: response without Content-Length"))
                return
            k = head.find(b"\r\n", j + 2)
            self.need = i + 4 + int(head[j + 17:k if k >= 0 else len(head)])
        if len(buf) < self.need:
            self.buf = buf
            return
        self.buf = b""  # one request in flight: nothing follows the response
        self.need = -1
        self.count += 1
        if self.loop.time() >= self.stop_at:
            self._end(None)
        else:
            self.transport.write(REQUEST)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(click.ClickException(f"bench: connection lost: {exc}") if not self.done.done() else None)

    def _end(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(self.count)
            else:
                self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


async def _load(port: int, concurrency: int, duration_s: float) -> tuple[int, float]:
    """Closed-loop load: `concurrency` keep-alive connections for `duration_s`. Returns (requests, seconds)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop_at = t0 + duration_s
    dones = [loop.create_future() for _ in range(concurrency)]
    for d in dones:
        await loop.create_connection(lambda d=d: _Conn(stop_at, d), "127.0.0.1", port)
    counts = await asyncio.gather(*dones)
    return sum(counts), loop.time() - t0


async def _latency(port: int, n: int) -> float:
    """Median round trip (ms) of `n` sequential requests on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        n_body = int([ln for ln in head.split(b"\r\n") if ln[:15].lower() == b"content-length:"][0][15:])
        await reader.readexactly(n_body)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    writer.close()
    return statistics.median(out)


def measure(*, duration_s: float = 2.0, concurrency: int = 64, rounds: int = 5, latency_n: int = 300, warmup_s: float = 1.0,
            policy: str = "batch1-wholegpu") -> dict:
    """Run the comparison; returns the figures (see the module docstring)."""
    import uvloop

    from gpufaas.gateway.demo import free_port

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(ncpu))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if ncpu >= 2 else (None, None)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
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
        bare = _start("bare", bare_port, server_cpu, str(tmp / "body.json"))
        procs.append(bare)
        _pin(client_cpu)
        servers = {"bare": (bare, bare_port), "gateway": (gw, gw_port)}
        rps: dict[str, list[float]] = {"bare": [], "gateway": []}
        cpu_us: dict[str, list[float]] = {"bare": [], "gateway": []}
        busy: dict[str, list[float]] = {"bare": [], "gateway": []}
        lat: dict[str, list[float]] = {"bare": [], "gateway": []}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            for kind, (_, port) in servers.items():  # warm-up: connections, caches, the policy's instance
                r.run(_load(port, concurrency, warmup_s))
                r.run(_latency(port, 50))
            for i in range(rounds):
                order = ("bare", "gateway") if i % 2 == 0 else ("gateway", "bare")
                for kind in order:
                    p, port = servers[kind]
                    c0 = _cpu_s(p.pid)
                    n, secs = r.run(_load(port, concurrency, duration_s))
                    c1 = _cpu_s(p.pid)
                    rps[kind].append(n / secs)
                    if c0 is not None and c1 is not None and n:
                        cpu_us[kind].append((c1 - c0) / n * 1e6)
                        busy[kind].append((c1 - c0) / secs)
                for kind in order:
                    lat[kind].append(r.run(_latency(servers[kind][1], latency_n)))
        usage = json.loads(urllib.request.urlopen(url + "/v1/usage").read())
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
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
    from gpufaas.gateway.cli.bench import emit

    r = measure(duration_s=duration_s, concurrency=concurrency, rounds=rounds, warmup_s=warmup_s, policy=policy)
    if as_json:
        emit("gateway", r, True)
    else:
        click.echo(f"gateway: {r['gateway_rps']:.0f} req/s, bare aiohttp+uvloop: {r['bare_rps']:.0f} req/s, ratio {r['ratio']:.2f} "
                   f"(median of {r['rounds']} rounds, {r['ratio_min']:.2f}-{r['ratio_max']:.2f}); median latency "
                   f"{r['gateway_latency_ms_p50']:.3f} vs {r['bare_latency_ms_p50']:.3f} ms (added {r['added_latency_ms_p50']:.3f} ms); "
                   f"policy {r['policy']}, {r['concurrency']} connections")
