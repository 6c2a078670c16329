"""Routes for workflows: deploy, list, read, remove (invoking one is in `invocations.py`)."""

from __future__ import annotations

from aiohttp import web

from gpufaas.gateway.http_io import PLATFORM, TENANT, ApiError, read_doc
from gpufaas.gateway.routes.named import Named, add_named_routes
from gpufaas.gateway.service import Platform
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.specs import WorkflowSpec, parse


async def post_workflow(request: web.Request) -> web.Response:
    """POST /v1/workflows; 409 when a stage names a function that is not deployed."""
    plat = request.app[PLATFORM]
    doc, _ = await read_doc(request, allow_yaml=True)
    spec = parse(WorkflowSpec, doc, "request body")
    try:
        result = plat.deploy_workflow(request[TENANT].name, spec)
    except SpecError:
        raise
    except UserError as e:
        raise ApiError(409, "conflict", str(e)) from None
    return web.json_response({"name": spec.name, "kind": "workflow", "result": result}, status=201 if result == "created" else 200)


def add_routes(router: web.UrlDispatcher) -> None:
    """Mount the workflow routes."""
    router.add_post("/v1/workflows", post_workflow)
    add_named_routes(router, Named("workflow", Platform.workflows_doc, Platform.workflow_doc, Platform.workflow_names, Platform.remove_workflow))
