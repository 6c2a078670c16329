"""The gateway's app factory: `create_app(cfg) -> web.Application`, and `run(cfg)` to serve it.

The gateway in rooms:

    gateway/app.py              this factory: app keys filled, middleware, routes mounted, platform lifecycle
    gateway/service.py          `Platform`: the narrow facade over the controller, backend and store
    gateway/routes/*.py         the handlers, one module per resource (functions, workflows, invocations, state)
    gateway/http_io.py          HTTP plumbing: app keys, `ApiError` and the error middleware, body reading, replies
    gateway/invocation_body.py  an invocation's answer as a document and as hot-path JSON

The platform (controller + backend + emulated GPUs + SQLite store) starts and stops with the app as a
`cleanup_ctx`; shared state sits behind typed `web.AppKey`s. Nothing here installs uvloop: the entry
points (`gpufaas up`, the demo, the benchmark) do, so tests and the simulator keep their own loops.
JSON by default, `application/msgpack` for tensor payloads; errors `{"error": {"code", "message"}}`
(the routes are listed in `gateway/routes/__init__.py` and served at /openapi.json).

Who calls `create_app`: `gpufaas up`, the demo, the gateway benchmark, the tests.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gpufaas.gateway.config import GatewayConfig
from gpufaas.gateway.http_io import CFG, METRICS, PLATFORM, auth_middleware, error_middleware
from gpufaas.gateway.metrics import Metrics
from gpufaas.gateway.routes import add_routes, ui
from gpufaas.gateway.service import Platform

log = logging.getLogger("gpufaas.gateway")


class PathOnlyAccessLogger(AbstractAccessLogger):
    """The access log (`gpufaas up --access-log`): method, path without its query, status, size, time.

    NOTE: the query is left out because `/ui?token=KEY` carries the admin key there; no header is logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %s %d %.6f", request.remote, request.method, request.path, response.status,
                         response.body_length, time)


async def _platform_ctx(app: web.Application) -> AsyncIterator[None]:
    plat = app[PLATFORM]
    await plat.start()
    lag = asyncio.get_running_loop().create_task(app[METRICS].loop_lag.run())
    yield
    lag.cancel()
    await plat.close()


def create_app(cfg: GatewayConfig, *, profiles_dirs: tuple[Path, ...] = ()) -> web.Application:
    """The gateway application for `cfg`. No side effects until it starts (the platform starts in its
    cleanup context: store opened, backend prepared, stored deployments restored). `profiles_dirs`:
    profile folders searched before the shipped profiles."""
    app = web.Application(client_max_size=cfg.client_max_size, middlewares=[error_middleware, auth_middleware])
    metrics = Metrics()
    app[CFG] = cfg
    app[METRICS] = metrics
    app[PLATFORM] = Platform(cfg, metrics, profiles_dirs)
    app.cleanup_ctx.append(_platform_ctx)
    add_routes(app.router)
    ui.attach(app)  # the dashboard's sessions and sampler (after the platform's context: it reads the controller)
    return app


def run(cfg: GatewayConfig, *, print_fn: Callable[[str], None] = print, profiles_dirs: tuple[Path, ...] = ()) -> None:
    """Serve `cfg` until SIGINT/SIGTERM with uvloop (the entry point of `gpufaas up` and the demo's gateway)."""
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg, profiles_dirs=profiles_dirs)

    async def banner(app: web.Application) -> None:
        plat = app[PLATFORM]
        print_fn(f"gpufaas gateway on http://{cfg.host}:{cfg.port} (policy {plat.policy_name}, backend {cfg.backend}, "
                 f"execute {cfg.execute}, data {cfg.data_dir}; {len(plat.ctl.functions)} functions and "
                 f"{len(plat.ctl.workflows)} workflows of {len(plat.tenants)} tenants restored, {plat.recovered} unfinished "
                 f"async invocations marked failed; admin key in {cfg.data_dir / 'admin.key'})")

    app.on_startup.append(banner)
    web.run_app(app, host=cfg.host, port=cfg.port, print=None, access_log=log if cfg.access_log else None, access_log_class=PathOnlyAccessLogger,
                loop=uvloop.new_event_loop(), handle_signals=True, shutdown_timeout=5.0)
