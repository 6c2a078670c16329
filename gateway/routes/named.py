"""List, read and remove for the named resources (functions and workflows): one set of handlers, built
per resource from the platform methods that serve it. Who calls it: `functions.py` and `workflows.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from gpufaas.gateway.http_io import PLATFORM, TENANT, ApiError, not_found
from gpufaas.gateway.service import Platform
from gpufaas.platform.errors import UserError


@dataclass(frozen=True)
class Named:
    """A named resource: its kind ('function'), and the `Platform` methods that list, read, name and remove
    it, each for one tenant (the request's: a tenant never sees another's names)."""

    kind: str
    listing: Callable[[Platform, str], list[dict]]
    doc: Callable[[Platform, str, str], dict | None]
    names: Callable[[Platform, str], list[str]]
    remove: Callable[[Platform, str, str], None]


def add_named_routes(router: web.UrlDispatcher, res: Named) -> None:
    """Mount GET /v1/{kind}s, GET and DELETE /v1/{kind}s/{name}: 404 naming the deployed ones for an unknown
    name, 409 when the platform refuses a removal (a function still used by a workflow)."""
    kind = res.kind

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({f"{kind}s": res.listing(request.app[PLATFORM], request[TENANT].name)})

    async def get(request: web.Request) -> web.Response:
        plat, tenant, name = request.app[PLATFORM], request[TENANT].name, request.match_info["name"]
        doc = res.doc(plat, tenant, name)
        if doc is None:
            raise not_found(kind, name, res.names(plat, tenant))
        return web.json_response(doc)

    async def delete(request: web.Request) -> web.Response:
        plat, tenant, name = request.app[PLATFORM], request[TENANT].name, request.match_info["name"]
        names = res.names(plat, tenant)
        if name not in names:
            raise not_found(kind, name, names)
        try:
            res.remove(plat, tenant, name)
        except UserError as e:
            raise ApiError(409, "conflict", str(e)) from None
        return web.json_response({"name": name, "kind": kind, "result": "removed"})

    router.add_get(f"/v1/{kind}s", listing)
    router.add_get(f"/v1/{kind}s/{{name}}", get)
    router.add_delete(f"/v1/{kind}s/{{name}}", delete)
