"""`python -m gpufaas.gateway.demo` (what `make demo` runs): a gateway, a stack, a short load, a report.

Steps: start `gpufaas up` as a child process (emulated GPUs: one node with four A100s; the process
backend when this checkout has it, else the inproc backend), deploy `functions/stack.yaml` through the
CLI's client with the admin key the gateway wrote, warm the two demo workflows up with a loose SLO (cold
starts are not what the demo measures), send Poisson arrivals over real HTTP to both for `--duration-s`
with the load generator (`loadgen.driver.Driver`), print its report (SLO hit rate, latency, cost), then stop the gateway with SIGINT and check that nothing it started is left running.

Who calls it: `make demo`, people. It changes nothing outside a temporary data folder.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

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


if TYPE_CHECKING:
    from gpufaas.loadgen.workload import WorkloadSpec


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


def demo_workload(rate_rps: float) -> "WorkloadSpec":
    """Poisson arrivals at `rate_rps` to each demo workflow (the load generator's own workload model)."""
    from gpufaas.loadgen.workload import StreamSpec, WorkloadSpec

    return WorkloadSpec(streams=[StreamSpec(workflow=wf, arrival="poisson", rate_rps=rate_rps) for wf in WORKFLOWS])


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
    from gpufaas.gateway.config import ADMIN_KEY_FILE
    from gpufaas.loadgen import live_report
    from gpufaas.loadgen.driver import Driver

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
        key = (tmp / "data" / ADMIN_KEY_FILE).read_text().strip()  # written by the gateway at its first start
        client = Client(url, api_key=key)
        items = load_stack(STACK)
        deployed = await loop.run_in_executor(None, deploy_stack, client, items)
        print(f"{at()} deployed {len(deployed)} items from {STACK.relative_to(ROOT)}: " + ", ".join(d["name"] for d in deployed), flush=True)
        # NOTE: warm-up with a loose SLO: a policy that admits only what can meet its deadline would
        # otherwise reject the first requests of a cold cluster, and cold starts are not what this measures.
        print(f"{at()} warming up (cold starts)...", flush=True)
        await asyncio.gather(*(loop.run_in_executor(None, functools.partial(client.invoke, wf, None, 120_000.0)) for wf in WORKFLOWS for _ in range(2)))
        print(f"{at()} load: {args.rate_rps:g} rps per workflow for {args.duration_s:g} s to {', '.join(WORKFLOWS)}", flush=True)
        run = await Driver(url, demo_workload(args.rate_rps), seed=args.seed, duration_s=args.duration_s, api_key=key).run()
        rep = live_report.summarize(run)
        live_report.print_table(rep)
        if args.json:
            print(json.dumps(rep))
        if not rep["completed"]:
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
