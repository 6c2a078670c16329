"""The gateway's HTTP routes, one module per resource; `add_routes` mounts them all.

    functions.py    POST/GET /v1/functions, GET/DELETE /v1/functions/{name}
    workflows.py    POST/GET /v1/workflows, GET/DELETE /v1/workflows/{name}
    invocations.py  POST /v1/workflows/{name}/invoke[?mode=async], GET /v1/invocations/{id}
    state.py        GET /v1/cluster, /v1/usage, /metrics, /openapi.json, /healthz
    tenants.py      POST/GET /v1/tenants, GET/PATCH/DELETE /v1/tenants/{name} (admin key only)
    ui.py           GET /ui, /ui/state, /ui/static/{name}: the live dashboard (admin key or its session cookie)

Every route but /healthz needs `Authorization: Bearer <key>` (`http_io.auth_middleware`); a handler reads
the key's tenant as `request[TENANT]` and asks the platform only for that tenant's things.

Handlers read the request, call the platform facade (`gateway.service.Platform`, through the `PLATFORM`
app key) and write the answer; errors are raised as `ApiError` (or the platform's UserError/SpecError)
and rendered by `gateway.http_io.error_middleware`.
"""

from __future__ import annotations

from aiohttp import web

from gpufaas.gateway.routes import functions, invocations, state, tenants, ui, workflows


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount every route of the gateway on `router` (called once by `gateway.app.create_app`)."""
    for module in (functions, workflows, invocations, state, tenants, ui):
        module.add_routes(router)
