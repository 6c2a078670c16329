"""A stand-in gateway for benchmarks, and the one way a benchmark runs an aiohttp server in a child process.

`python -m gpufaas.loadgen.standin [--body FILE]` serves, on uvloop, the routes a load client touches:
`POST /v1/workflows/{name}/invoke` answers at once with a fixed JSON body (FILE, else a completed
invocation), JSON-encoded per request so the answer costs what the gateway's costs; `GET /v1/workflows`,
`/v1/usage` and `/healthz` answer with fixed documents. It prints its port once it listens.

Who calls it: `gpufaas bench gateway` (the bare aiohttp + uvloop handler it compares the gateway with; its
gateway child is served through `serve` too) via `start`, which pins the child to a core and waits for the
port. Nothing here reads wall time or writes files.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import click
from aiohttp import web

DEFAULT_BODY = {"id": "x", "workflow": "w", "status": "completed", "slo_met": True, "latency_ms": 0.0, "stages": []}


def standin_app(body: dict) -> web.Application:
    """The stand-in's routes (see the module docstring); `body` is the invoke answer."""

    async def invoke(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), content_type="application/json")

    async def workflows(request: web.Request) -> web.Response:
        return web.json_response({"workflows": [{"name": "bench"}]})

    async def usage(request: web.Request) -> web.Response:
        return web.json_response({"cost": {"allocated_usd": 0.0, "busy_usd": 0.0}})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/workflows/{name}/invoke", invoke)
    app.router.add_get("/v1/workflows", workflows)
    app.router.add_get("/v1/usage", usage)
    app.router.add_get("/healthz", healthz)
    return app


def serve(app: web.Application, port: int = 0) -> None:
    """Serve `app` on 127.0.0.1:`port` (0: any free port) with uvloop until the process is killed; print the
    bound port on stdout once it listens (what `start` waits for). Runs the app's startup and cleanup
    contexts like `web.run_app`."""
    import uvloop

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    uvloop.run(main())


def start(module: str, *args: str, cpu: int | None = None, timeout_s: float = 120.0) -> tuple[subprocess.Popen, int]:
    """Run `python -m module args...` (a module whose main calls `serve`), pinned to `cpu` where given (Linux);
    returns (process, port on 127.0.0.1) once it printed the port. The caller terminates the process.
    RuntimeError, with the last line of the child's stderr, when it exits or stays silent for `timeout_s`."""

    def pin() -> None:  # in the child, before exec: the server and every thread it starts stay on `cpu`
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=pin if cpu is not None else None)
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.isdigit():
        proc.kill()
        err = proc.stderr.read().strip().splitlines()
        raise RuntimeError(f"server `python -m {module}` did not start (printed {line!r}): {err[-1] if err else 'no error output'}")
    return proc, int(line)


@click.command()
@click.option("--body", "body_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON file with the invoke answer [default: a completed invocation]")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="TCP port (0: any free one)")
def main(body_file: str | None, port: int) -> None:
    """Serve the stand-in gateway (see the module docstring)."""
    serve(standin_app(json.loads(Path(body_file).read_text()) if body_file else DEFAULT_BODY), port)


if __name__ == "__main__":
    main()
