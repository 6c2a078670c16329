"""`python -m gpufaas.gateway.demo` (what `make demo` runs): a gateway, a stack, a short load, a report.

Steps: start `gpufaas up` as a child process (emulated GPUs: one node with four A100s; the process
backend when this checkout has it, else the inproc backend), deploy `functions/stack.yaml` through the
CLI's client, warm the two demo workflows up with a loose SLO (cold starts are not what the demo
measures), send Poisson arrivals over real HTTP to both for `--duration-s`, print SLO hit rate,
latency and cost, then stop the gateway with SIGINT and check that nothing it started is left running.

Who calls it: `make demo`, people. It changes nothing outside a temporary data folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from gpufaas.platform.shipped import functions_dir, package_root

ROOT = package_root()
STACK = functions_dir() / "stack.yaml"
WORKFLOWS = ("image-classify", "text-pipeline")


def free_port() -> int:
    """A TCP port that was free a moment ago (the gateway binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    """'process' when this checkout has the process backend, else 'inproc'."""
    import importlib.util

    return "process" if importlib.util.find_spec("gpufaas.platform.backends.process") is not None else "inproc"


def start_gateway(port: int, data_dir: Path, backend: str, log_path: Path, extra: list[str] | None = None) -> subprocess.Popen:
    """`python -m gpufaas.gateway` in its own session (process group), output to `log_path`."""
    cmd = [sys.executable, "-m", "gpufaas.gateway", "--port", str(port), "--data-dir", str(data_dir), "--backend", backend,
           "--keep-alive-s", "120", "--timeout-s", "10", *(extra or [])]
    log = open(log_path, "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


async def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Poll /healthz until it answers; RuntimeError if the gateway exits or the time runs out."""
    import aiohttp

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    async with aiohttp.ClientSession() as s:
        while loop.time() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with code {proc.returncode} before it answered")
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the gateway did not answer /healthz within {timeout_s:g} s")


async def run_load(url: str, workflows: tuple[str, ...], rate_rps: float, duration_s: float, seed: int = 1) -> list[dict]:
    """Poisson arrivals per workflow (seeded), each a real HTTP invoke; returns one record per request."""
    import aiohttp

    results: list[dict] = []
    loop = asyncio.get_running_loop()
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(wf: str) -> None:
            t0 = loop.time()
            try:
                async with s.post(f"{url}/v1/workflows/{wf}/invoke", json={}) as r:
                    doc = await r.json()
                results.append({"workflow": wf, "http": r.status, "status": doc.get("status", "error"),
                                "slo_met": bool(doc.get("slo_met")), "latency_ms": doc.get("latency_ms", 0.0),
                                "rtt_ms": (loop.time() - t0) * 1e3})
            except aiohttp.ClientError as e:
                results.append({"workflow": wf, "http": 0, "status": f"client error: {e}", "slo_met": False,
                                "latency_ms": 0.0, "rtt_ms": (loop.time() - t0) * 1e3})

        async def stream(i: int, wf: str) -> None:
            rng = np.random.default_rng(seed + i * 31)
            tasks = []
            start = loop.time()
            t = start
            while True:
                t += rng.exponential(1.0 / rate_rps)
                if t - start >= duration_s:
                    break
                await asyncio.sleep(max(0.0, t - loop.time()))
                tasks.append(asyncio.ensure_future(one(wf)))
            await asyncio.gather(*tasks)

        await asyncio.gather(*(stream(i, wf) for i, wf in enumerate(workflows)))
    return results


def summarize(results: list[dict], usage: dict) -> dict:
    """Per-workflow and overall SLO hit rate and latency (server-measured), plus the gateway's cost figures."""
    out: dict = {"workflows": {}}
    for wf in sorted({r["workflow"] for r in results}):
        rs = [r for r in results if r["workflow"] == wf]
        lat = np.array([r["latency_ms"] for r in rs if r["status"] == "completed"] or [0.0])
        rtt = np.array([r["rtt_ms"] for r in rs])
        out["workflows"][wf] = {
            "requests": len(rs), "completed": sum(r["status"] == "completed" for r in rs),
            "slo_hit_rate": round(sum(r["slo_met"] for r in rs) / len(rs), 4),
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p99": round(float(np.percentile(lat, 99)), 2)},
            "http_rtt_ms_p50": round(float(np.percentile(rtt, 50)), 2),
            "statuses": {s: sum(r["status"] == s for r in rs) for s in sorted({r["status"] for r in rs})},
        }
    n = len(results)
    out["requests"] = n
    out["slo_hit_rate"] = round(sum(r["slo_met"] for r in results) / n, 4) if n else 0.0
    out["cost"] = usage.get("cost", {})
    out["cold_starts"] = usage.get("cold_starts")
    out["policy"] = usage.get("policy")
    out["backend"] = usage.get("backend")
    return out


def print_report(rep: dict) -> None:
    print(f"\n== gpufaas demo: policy {rep['policy']}, backend {rep['backend']}, {rep['requests']} requests ==")
    print(f"{'workflow':<16} {'requests':>8} {'SLO hit':>8} {'p50 ms':>8} {'p99 ms':>8} {'HTTP p50 ms':>12}  statuses")
    for wf, r in rep["workflows"].items():
        print(f"{wf:<16} {r['requests']:>8} {r['slo_hit_rate']:>8.3f} {r['latency_ms']['p50']:>8.1f} {r['latency_ms']['p99']:>8.1f} "
              f"{r['http_rtt_ms_p50']:>12.1f}  {r['statuses']}")
    c = rep["cost"]
    print(f"overall SLO hit rate {rep['slo_hit_rate']:.3f}; cold starts {rep['cold_starts']}")
    print(f"cost so far: allocated ${c.get('allocated_usd', 0):.6f} ({c.get('gpu_seconds_allocated', 0):.1f} GPU-s), "
          f"busy ${c.get('busy_usd', 0):.6f} ({c.get('gpu_seconds_busy', 0):.2f} GPU-s)")


def stop_gateway(proc: subprocess.Popen, timeout_s: float = 30.0) -> tuple[int, bool]:
    """SIGINT, wait, then check the process group is gone. Returns (exit code, clean). Kills leftovers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return proc.returncode, False
    clean = True
    try:
        os.killpg(proc.pid, 0)  # anything left in the gateway's process group?
        clean = False
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        clean = False
    return proc.returncode, clean


async def demo(args: argparse.Namespace) -> int:
    from gpufaas.gateway.client import Client, deploy_stack, load_stack

    backend = args.backend or default_backend()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="gpufaas-demo-"))
    log_path = tmp / "gateway.log"
    print(f"starting the gateway at {url} (backend {backend}, emulated GPUs; log {log_path})", flush=True)
    proc = start_gateway(port, tmp / "data", backend, log_path)
    code = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def at() -> str:
        return f"[{loop.time() - t0:5.1f} s]"

    try:
        await wait_healthy(url, proc)
        print(f"{at()} gateway up", flush=True)
        client = Client(url)
        items = load_stack(STACK)
        deployed = await loop.run_in_executor(None, deploy_stack, client, items)
        print(f"{at()} deployed {len(deployed)} items from {STACK.relative_to(ROOT)}: " + ", ".join(d["name"] for d in deployed), flush=True)
        # NOTE: warm-up with a loose SLO: a policy that admits only what can meet its deadline would
        # otherwise reject the first requests of a cold cluster, and cold starts are not what this measures.
        print(f"{at()} warming up (cold starts)...", flush=True)
        await asyncio.gather(*(loop.run_in_executor(None, lambda w=wf: client.invoke(w, None, 120_000.0)) for wf in WORKFLOWS for _ in range(2)))
        print(f"{at()} load: {args.rate_rps:g} rps per workflow for {args.duration_s:g} s to {', '.join(WORKFLOWS)}", flush=True)
        results = await run_load(url, WORKFLOWS, args.rate_rps, args.duration_s, seed=args.seed)
        usage = await loop.run_in_executor(None, client.get, "/v1/usage")
        rep = summarize(results, usage)
        print_report(rep)
        if args.json:
            print(json.dumps(rep))
        if not results or not any(r["status"] == "completed" for r in results):
            print("demo: no invocation completed", file=sys.stderr)
            code = 1
    except Exception as e:  # noqa: BLE001 (the demo reports and still stops the gateway)
        print(f"demo failed: {e}; gateway log: {log_path}", file=sys.stderr)
        code = 1
    finally:
        rc, clean = stop_gateway(proc)
        print(f"{at()} gateway stopped (exit code {rc}); {'no processes left' if clean else 'LEFTOVER PROCESSES were killed'}", flush=True)
        if not clean or rc not in (0, -signal.SIGINT):
            code = code or 1
            try:
                tail = log_path.read_text().splitlines()[-15:]
                print("gateway log tail:\n  " + "\n  ".join(tail), file=sys.stderr)
            except OSError:
                pass
        if code == 0:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # kept (with the gateway log) when something went wrong
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse flags, run the demo on uvloop, return the exit code."""
    import uvloop

    p = argparse.ArgumentParser(prog="python -m gpufaas.gateway.demo", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["process", "inproc"], default=None, help="default: process if present, else inproc")
    p.add_argument("--rate-rps", type=float, default=10.0, help="arrival rate per workflow")
    p.add_argument("--duration-s", type=float, default=20.0, help="how long the load runs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    args = p.parse_args(argv)
    if args.rate_rps <= 0 or args.duration_s <= 0:
        p.error("--rate-rps and --duration-s must be > 0")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(demo(args))


if __name__ == "__main__":
    sys.exit(main())
