"""HTTP plumbing of the gateway: the app keys, the error type and middleware, body reading and replies.

Who uses it: the route modules (`gateway/routes/`) and the app factory (`gateway/app.py`). Nothing here
knows the platform's state beyond the typed app keys; handlers reach the platform only through `PLATFORM`
(a `gpufaas.gateway.service.Platform`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Iterable

import msgpack
import yaml
from aiohttp import web

from gpufaas.gateway import api
from gpufaas.gateway.api import JSON, MSGPACK, BadInput
from gpufaas.gateway.config import GatewayConfig
from gpufaas.gateway.metrics import Metrics
from gpufaas.gateway.service import Platform
from gpufaas.gateway.tenants import QuotaExceeded, Tenant
from gpufaas.platform.errors import SpecError, UserError

log = logging.getLogger("gpufaas.gateway")


class ApiError(Exception):
    """An HTTP error answer: status, code and a one-line message (rendered by the error middleware)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error body every 4xx/5xx uses."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


CFG = web.AppKey("cfg", GatewayConfig)
PLATFORM = web.AppKey("platform", Platform)
METRICS = web.AppKey("metrics", Metrics)
TENANT = web.RequestKey("tenant", Tenant)  # who sent the request, set by `auth_middleware`

# routes anyone may call, without a key (a load balancer's health check)
OPEN_PATHS = frozenset(("/healthz",))

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "body_too_large",
               415: "unsupported_media_type", 422: "invalid", 429: "too_many_requests", 500: "internal", 503: "unavailable"}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes `{"error": {"code", "message"}}`; no traceback ever reaches the client."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message)
    except QuotaExceeded as e:
        resp = error_response(429, "quota_exceeded", str(e))
        resp.headers["Retry-After"] = str(e.retry_after_s)
        return resp
    except BadInput as e:
        return error_response(422, e.code, str(e))
    except SpecError as e:
        # NOTE: a SpecError holds one line per error (specs.format_validation_error, for the CLI); an HTTP
        # error message is one line, so they are joined
        return error_response(422, "invalid_manifest", "; ".join(str(e).splitlines()))
    except UserError as e:
        return error_response(422, "invalid", str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        msg = e.text or e.reason
        if e.status == 413:
            msg = f"request body is larger than the gateway's limit of {request.app[CFG].max_body_mb:g} MB; send less or raise --max-body-mb"
        elif e.status == 404:
            msg = f"no route {request.method} {request.path}; see /openapi.json"
        elif e.status == 405:
            msg = f"method {request.method} is not allowed on {request.path}; see /openapi.json"
        return error_response(e.status, _HTTP_CODES.get(e.status, "http_error"), msg.splitlines()[0] if msg else e.reason)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; the gateway log has the details")


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every route but OPEN_PATHS needs `Authorization: Bearer <key>`: 401 without one or with an unknown key;
    the key's tenant is `request[TENANT]` for the handler. The key itself is never logged or stored. The
    dashboard's routes (/ui...) also take its session cookie, and /ui?token=KEY logs in (`routes.ui.browser_auth`)."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        if request.path == "/ui" or request.path.startswith("/ui/"):
            from gpufaas.gateway.routes import ui  # NOTE: here, not at the top: routes.ui imports this module

            return await ui.browser_auth(request, handler)
        raise ApiError(401, "unauthorized", "this route needs an API key: send 'Authorization: Bearer <key>' "
                                            "(gpufaas --api-key, $GPUFAAS_API_KEY, or <data-dir>/admin.key)")
    tenant = request.app[PLATFORM].tenant_for_key(key.strip())
    if tenant is None:
        raise ApiError(401, "unauthorized", "unknown API key; check it, or ask the admin for one (gpufaas tenant create)")
    request[TENANT] = tenant
    return await handler(request)


def admin_only(request: web.Request) -> Tenant:
    """The request's tenant if it holds the admin key, else 403."""
    tenant = request[TENANT]
    if not tenant.admin:
        raise ApiError(403, "forbidden", f"{request.method} {request.path} is for the admin key only")
    return tenant


# ---------------------------------------------------------------- body helpers


async def read_body(request: web.Request) -> bytes:
    """The request body. HTTPRequestEntityTooLarge (413) above the app's client_max_size, as `request.read()`.

    A body that has arrived whole (the usual small JSON request) is taken from the stream at once, without
    the awaits of `request.read()`."""
    content = request.content
    if content.is_eof():
        body = content.read_nowait()
        limit = request.app[CFG].client_max_size
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return body
    return await request.read()


def _no_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (it has no NaN or infinities); send a finite number")


def _str_keyed(pairs: list[tuple[Any, Any]]) -> dict:
    """A msgpack map whose keys are all strings (a bin key would reach the routes as bytes)."""
    doc = dict(pairs)
    for k in doc:
        if type(k) is not str:
            raise ValueError(f"map key {str(k)[:40]!r} is {type(k).__name__}; keys must be strings")
    return doc


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"extension type {code} is not accepted in a request; send maps, lists, numbers, strings and bytes")


async def read_doc(request: web.Request, *, allow_msgpack: bool = True, allow_yaml: bool = False) -> tuple[Any, bool]:
    """Read and decode the body: (document, is_msgpack). Empty body -> ({}, False). 400/413/415 on bad input.

    Who calls it: every route that takes a body. 400 (`bad_json`, `bad_msgpack`, `bad_yaml`) for a body
    that does not decode, naming the problem: bad syntax, NaN/Infinity in JSON, nesting deeper than the
    parser's recursion limit (about 1000 levels; no request needs more than a handful), msgpack extension
    types or non-string map keys, YAML aliases. What the document holds is the route's to check."""
    body = await read_body(request)
    if not body:
        return {}, False
    if body == b"{}" and request.headers.get("Content-Type") == JSON:
        return {}, False  # the common invoke body, without json.loads
    ctype = request.content_type
    if ctype == JSON or ctype.endswith("+json"):
        try:
            return json.loads(body, parse_constant=_no_json_constant), False
        except RecursionError:
            raise ApiError(400, "bad_json", "request body is nested too deeply; a request is a few levels of objects and lists") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "bad_json", f"request body is not valid JSON: {str(e)[:200]}") from None
    if ctype == MSGPACK and allow_msgpack:
        try:
            return msgpack.unpackb(body, raw=False, ext_hook=_no_ext, object_pairs_hook=_str_keyed), True
        except RecursionError:
            raise ApiError(400, "bad_msgpack", "request body is nested too deeply; a request is a few levels of maps and lists") from None
        except Exception as e:  # noqa: BLE001 (msgpack raises several unrelated types)
            raise ApiError(400, "bad_msgpack", f"request body is not valid msgpack: {str(e)[:200]}") from None
    if allow_yaml and ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
        try:
            return yaml.load(body, Loader=_RequestYamlLoader), False
        except RecursionError:
            raise ApiError(400, "bad_yaml", "request body is nested too deeply; a manifest is a few levels of mappings and lists") from None
        except yaml.YAMLError as e:
            raise ApiError(400, "bad_yaml", f"request body is not valid YAML: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
    accepted = [JSON] + ([MSGPACK] if allow_msgpack else []) + (["application/yaml"] if allow_yaml else [])
    raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype[:80]!r} is not accepted here; send one of {', '.join(accepted)}")


class _RequestYamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases. NOTE: an alias (`*a`) makes a shared reference, so a few hundred bytes
    of nested aliases (the "billion laughs") become a document whose traversal (validation, storing) takes
    exponential time; a request body never needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted in a request body",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def reply(doc: Any, binary: bool, status: int = 200) -> web.Response:
    """`doc` as msgpack when `binary`, else compact JSON."""
    if binary:
        return web.Response(body=msgpack.packb(doc, use_bin_type=True), status=status, content_type=MSGPACK)
    return web.Response(body=api.json_compact(doc).encode(), status=status, content_type=JSON)


def shown(name: str) -> str:
    """`name` as an error message may quote it: at most 80 characters, escaped (a path may carry %0A or 5,000 characters)."""
    return name if name.isprintable() and len(name) <= 80 else repr(name[:80])[1:-1]


def not_found(kind: str, name: str, known: Iterable[str]) -> ApiError:
    """404 for an unknown function or workflow, naming what is deployed (or how to deploy)."""
    names = sorted(known)
    hint = f"deployed: {', '.join(names[:20])}" if names else f"no {kind}s are deployed; run gpufaas deploy"
    return ApiError(404, "not_found", f"unknown {kind} '{shown(name)}'; {hint}")
