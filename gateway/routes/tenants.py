"""Routes for tenants (the admin key only): create (the new key is in the answer, once), list, read, change, remove."""

from __future__ import annotations

from aiohttp import web

from gpufaas.gateway.http_io import PLATFORM, ApiError, admin_only, read_doc
from gpufaas.gateway.tenants import Limits, TenantExists
from gpufaas.platform.errors import UserError
from gpufaas.platform.specs import parse


def _known(request: web.Request) -> str:
    """The tenant named in the path (404 naming the known ones otherwise)."""
    plat, name = request.app[PLATFORM], request.match_info["name"]
    if name not in plat.tenants:
        raise ApiError(404, "not_found", f"unknown tenant {name!r}; tenants: {', '.join(sorted(plat.tenants))}")
    return name


async def post_tenant(request: web.Request) -> web.Response:
    """POST /v1/tenants {name, weight?, max_share_units?, max_concurrency?, rate_rps?}: 201 with {name, api_key}."""
    admin_only(request)
    doc, _ = await read_doc(request, allow_msgpack=False)
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise ApiError(422, "invalid", "request body: expected {\"name\": ..., \"weight\": ..., ...}")
    name = doc.pop("name")
    limits = parse(Limits, doc, "request body")
    try:
        key = request.app[PLATFORM].create_tenant(name, limits)
    except TenantExists as e:
        raise ApiError(409, "conflict", str(e)) from None
    return web.json_response({"name": name, "api_key": key, **limits.model_dump()}, status=201)


async def list_tenants(request: web.Request) -> web.Response:
    """GET /v1/tenants."""
    admin_only(request)
    return web.json_response({"tenants": [t.doc() for t in request.app[PLATFORM].tenants.values()]})


async def get_tenant(request: web.Request) -> web.Response:
    """GET /v1/tenants/{name}."""
    admin_only(request)
    return web.json_response(request.app[PLATFORM].tenants[_known(request)].doc())


async def patch_tenant(request: web.Request) -> web.Response:
    """PATCH /v1/tenants/{name} {weight?, ...}: change the given limits (null removes a quota)."""
    admin_only(request)
    plat, name = request.app[PLATFORM], _known(request)
    doc, _ = await read_doc(request, allow_msgpack=False)
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid", "request body: expected an object of limits to change")
    limits = parse(Limits, {**plat.tenants[name].limits.model_dump(), **doc}, "request body")
    return web.json_response(plat.set_tenant(name, limits).doc())


async def delete_tenant(request: web.Request) -> web.Response:
    """DELETE /v1/tenants/{name}: 409 while it owns functions or workflows."""
    admin_only(request)
    name = _known(request)
    try:
        request.app[PLATFORM].remove_tenant(name)
    except UserError as e:
        raise ApiError(409, "conflict", str(e)) from None
    return web.json_response({"name": name, "kind": "tenant", "result": "removed"})


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount the tenant routes."""
    router.add_post("/v1/tenants", post_tenant)
    router.add_get("/v1/tenants", list_tenants)
    router.add_get("/v1/tenants/{name}", get_tenant)
    router.add_patch("/v1/tenants/{name}", patch_tenant)
    router.add_delete("/v1/tenants/{name}", delete_tenant)
