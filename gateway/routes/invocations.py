"""Routes for invocations: invoke a workflow (sync or async) and read an async invocation's result."""

from __future__ import annotations

from aiohttp import web

from gpufaas.gateway import api
from gpufaas.gateway.api import JSON, MSGPACK, BadInput
from gpufaas.gateway.http_io import PLATFORM, TENANT, ApiError, not_found, read_doc, reply, shown

_INVOKE_KEYS = frozenset(("data", "slo_ms"))
_INVOKE_QUERY = frozenset(("mode", "slo_ms"))


async def invoke(request: web.Request) -> web.Response:
    """POST /v1/workflows/{name}/invoke: the hot path (no pydantic here; api.InvokeRequest documents it)."""
    plat = request.app[PLATFORM]
    tenant = request[TENANT].name
    name = request.match_info["name"]
    wf = plat.workflow(tenant, name)
    if wf is None:
        raise not_found("workflow", name, plat.workflow_names(tenant))
    # NOTE: the queue bound first, at the query's SLO or the workflow's (the body's slo_ms is checked again by
    # `_admit`): a refusal costs no body decode, so under overload refusing does not starve what was admitted
    query = request.query if request.query_string else None
    query_slo_ms = api.parse_slo_ms(query.get("slo_ms"), "query slo_ms") if query is not None else None
    plat.check_queue(wf, query_slo_ms)
    doc, binary = await read_doc(request)
    if type(doc) is not dict:
        raise ApiError(400, "bad_request", "request body: expected an object {\"data\": ..., \"slo_ms\": ...}")
    slo_ms = payload = None
    if doc:
        if not _INVOKE_KEYS.issuperset(doc):
            extra = sorted(set(doc) - _INVOKE_KEYS)
            raise BadInput("invalid_request", f"request body: unknown field(s) {extra}; send only data and slo_ms")
        slo_ms = api.parse_slo_ms(doc.get("slo_ms"))
    mode = "sync"
    if query is not None:
        extra_q = sorted(set(query) - _INVOKE_QUERY)
        if extra_q:
            raise BadInput("invalid_request", f"query: unknown parameter(s) {[shown(k) for k in extra_q]}; use mode and slo_ms")
        if query_slo_ms is not None:
            slo_ms = query_slo_ms
        mode = query.get("mode", "sync")
    if doc:
        payload = plat.payload(wf, doc.get("data"))
    if not binary:
        accept = request.headers.get("Accept")
        if accept is not None and MSGPACK in accept:
            binary = True
    if mode == "async":
        inv_id = plat.invoke_async(wf, payload, slo_ms)
        loc = f"/v1/invocations/{inv_id}"
        return reply({"id": inv_id, "status": "pending", "location": loc}, binary, status=202)
    if mode != "sync":
        raise BadInput("invalid_request", f"query mode: {mode!r} is not a mode; use sync (default) or async")
    inv_id, inv = await plat.invoke(wf, payload, slo_ms)
    if binary:
        return reply(plat.result_of(inv, inv_id, True), True)
    return web.Response(body=plat.result_json(inv, inv_id), content_type=JSON)


async def get_invocation(request: web.Request) -> web.Response:
    """GET /v1/invocations/{id}: pending, or the stored result; 404 for an unknown id."""
    plat = request.app[PLATFORM]
    inv_id = request.match_info["id"]
    binary = MSGPACK in request.headers.get("Accept", "")
    result = plat.stored_result(request[TENANT].name, inv_id, binary)
    if result is None:
        raise ApiError(404, "not_found", f"unknown invocation '{shown(inv_id)}'; ids come from POST /v1/workflows/NAME/invoke?mode=async")
    return reply(result, binary)


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount the invocation routes."""
    router.add_post("/v1/workflows/{name}/invoke", invoke)
    router.add_get("/v1/invocations/{id}", get_invocation)
