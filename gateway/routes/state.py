"""Routes that report the gateway's state: cluster, usage, metrics, the OpenAPI document, health."""

from __future__ import annotations

from aiohttp import web

from gpufaas.gateway import api
from gpufaas.gateway.http_io import METRICS, PLATFORM, TENANT, ApiError, admin_only


async def get_cluster(request: web.Request) -> web.Response:
    """GET /v1/cluster: GPUs, instances and queues."""
    return web.json_response(request.app[PLATFORM].cluster_doc(request[TENANT]))


async def get_usage(request: web.Request) -> web.Response:
    """GET /v1/usage[?tenant=T]: invocations, SLO hit and cost so far, of the key's tenant (the admin: the whole
    gateway, or tenant T)."""
    plat, tenant = request.app[PLATFORM], request[TENANT]
    of = request.query.get("tenant")
    if of is not None:
        admin_only(request)
        if of not in plat.tenants:
            raise ApiError(404, "not_found", f"unknown tenant {of!r}; list them with gpufaas tenant ls")
    return web.json_response(plat.usage_doc(tenant, of))


async def get_metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition (the admin key only: it names every tenant's workflows)."""
    admin_only(request)
    body = request.app[PLATFORM].metrics_text()
    return web.Response(body=body, headers={"Content-Type": request.app[METRICS].content_type})


async def get_openapi(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.json_response(api.openapi_document())


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: liveness, with the policy, the backend and the event loop's recent lag (`Platform.health_doc`)."""
    return web.json_response(request.app[PLATFORM].health_doc())


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount the state routes."""
    router.add_get("/v1/cluster", get_cluster)
    router.add_get("/v1/usage", get_usage)
    router.add_get("/metrics", get_metrics)
    router.add_get("/openapi.json", get_openapi)
    router.add_get("/healthz", healthz)
