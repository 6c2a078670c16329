"""The gateway's HTTP models: request/response bodies, the error body, the tensor codecs and /openapi.json.

Who uses it: the routes in `app.py` (deploy bodies are validated with these models; the invoke hot path
checks its two fields by hand and only documents itself here), `/openapi.json`, and the CLI client.

Payloads: JSON carries tensors as nested lists, `{"data": {name: [[...]]}, "slo_ms": 120}`; msgpack
(`Content-Type: application/msgpack`) carries them as `{"dtype", "shape", "data": bytes}` maps, both
ways. Outputs come back the way the request came in (or as `Accept` asks).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gpufaas.gateway.tenants import TENANT_RE, Limits
from gpufaas.platform.specs import DTYPE_BYTES, FunctionSpec, WorkflowSpec
from gpufaas.platform.units import MAX_DURATION_MS
from gpufaas.platform.wire import TensorHeaderError, tensor_from

JSON = "application/json"
MSGPACK = "application/msgpack"


class ApiModel(BaseModel):
    """Base of the HTTP bodies: unknown fields refused, floats finite (as the specs)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorDetail(ApiModel):
    code: str = Field(description="machine-readable code, e.g. bad_json, not_found, invalid_manifest")
    message: str = Field(description="one line for people: what is wrong and what to do")


class ErrorBody(ApiModel):
    """Every 4xx/5xx answer."""

    error: ErrorDetail


class FunctionBundle(ApiModel):
    """POST /v1/functions: a function's spec (function.yaml fields) plus its small bundle files.

    A bare FunctionSpec (no `spec` key) is accepted too and deploys without files."""

    spec: FunctionSpec
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> UTF-8 text (handler.py, ...)")


class InvokeRequest(ApiModel):
    """POST /v1/workflows/{name}/invoke."""

    data: dict[str, Any] | None = Field(None, description="input tensors of the entry stages: name -> nested lists (JSON) or {dtype, shape, data} (msgpack)")
    slo_ms: float | None = Field(None, gt=0, le=MAX_DURATION_MS, description="per-request SLO override, ms (> 0, at most a year); default: the workflow's")


class StageTiming(ApiModel):
    name: str
    function: str
    start_ms: float = Field(description="ms since the invocation arrived")
    end_ms: float


class InvokeResponse(ApiModel):
    """The result of one invocation (sync answer, and GET /v1/invocations/{id} once it ended)."""

    id: str
    workflow: str
    status: Literal["pending", "completed", "failed", "rejected", "timed_out"]
    slo_met: bool
    slo_ms: float
    latency_ms: float
    stages: list[StageTiming]
    output: Any = None
    reason: str = ""


class AsyncAccepted(ApiModel):
    """202 answer of `?mode=async`."""

    id: str
    status: Literal["pending"]
    location: str


class ListFunctions(ApiModel):
    functions: list[dict[str, Any]]


class ListWorkflows(ApiModel):
    workflows: list[dict[str, Any]]


# ---------------------------------------------------------------- SLO and payload parsing (hot path, no pydantic)


class BadInput(ValueError):
    """Raised by the parsers below; the route answers 422 with `code` and the message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_slo_ms(value: Any, where: str = "slo_ms") -> float | None:
    """None, or a finite number > 0 and at most `units.MAX_DURATION_MS` (a year: it becomes integer ns on the
    clock); a numeric string is accepted. BadInput naming `where` otherwise. Who calls it: the invoke route
    (body and query). Pure."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadInput("invalid_slo", f"{where}: expected a number of milliseconds > 0, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip().removesuffix("ms"))
        except ValueError:
            raise BadInput("invalid_slo", f"{where}: cannot parse {value[:40]!r} as milliseconds; send a number > 0, e.g. 120") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput("invalid_slo", f"{where}: expected a finite number of milliseconds > 0, got {str(value)[:40]!r}")
    if value > MAX_DURATION_MS:
        raise BadInput("invalid_slo", f"{where}: {value:g} ms is longer than the longest SLO, {MAX_DURATION_MS:.0f} ms (a year)")
    return float(value)


_TENSOR_KEYS = frozenset(("dtype", "shape", "data"))
_MAP_DTYPES = frozenset(DTYPE_BYTES) - {"bfloat16"}  # bfloat16 has no numpy type
_NUMBER_KINDS = frozenset("biuf")  # numpy kinds: bool, signed and unsigned int, float


def decode_tensor(name: str, value: Any, spec_dtype: str | None) -> np.ndarray:
    """One input tensor from JSON nested lists or a msgpack {dtype, shape, data} map. BadInput naming
    `data.<name>` (and the key) for anything else: a map without exactly those keys or whose dtype, shape
    or data `wire.tensor_from` refuses (the same checks as a worker's frames), lists that are not a
    rectangular array of numbers, and NaN or infinities. Who calls it: `Platform.payload` (the invoke
    route). Pure: returns a new array (for a map, a read-only view on its bytes)."""
    field = f"data.{str(name)[:80]}"
    if isinstance(value, dict):
        if value.keys() != _TENSOR_KEYS:
            missing, extra = sorted(_TENSOR_KEYS - value.keys()), sorted(str(k)[:40] for k in value.keys() - _TENSOR_KEYS)
            raise BadInput("invalid_payload", f"{field}: a tensor map holds exactly dtype, shape and data"
                                              f"{'; missing ' + ', '.join(missing) if missing else ''}{'; unknown ' + ', '.join(extra) if extra else ''}")
        dtype, shape, raw = value["dtype"], value["shape"], value["data"]
        try:
            arr = tensor_from(dtype, shape, raw, _MAP_DTYPES)
        except TensorHeaderError as e:
            hint = "; in JSON, send the tensor as nested lists" if e.part == "data" and not isinstance(raw, bytes) else ""
            raise BadInput("invalid_payload", f"{field}.{e.part}: {e}{hint}") from None
    else:
        try:
            # a float past the dtype's range becomes inf (refused below), without numpy's RuntimeWarning
            with np.errstate(over="ignore", invalid="ignore"):
                arr = np.asarray(value, dtype=None if spec_dtype in (None, "bfloat16") else np.dtype(spec_dtype))
        except (ValueError, TypeError, OverflowError) as e:
            raise BadInput("invalid_payload", f"{field}: not a rectangular array of numbers ({str(e).splitlines()[0][:200]})") from None
        if arr.dtype.kind not in _NUMBER_KINDS:
            raise BadInput("invalid_payload", f"{field}: not an array of numbers (it holds {arr.dtype.name} values); send numbers")
    # NOTE: one pass over the values, vectorized: microseconds for an image-sized input. JSON has no NaN or
    # infinity (1e999 parses as one), and a handler fed them returns garbage without an error.
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BadInput("invalid_payload", f"{field}: holds NaN or infinity; send finite numbers")
    return arr


def encode_output(value: Any, binary: bool) -> Any:
    """Stage outputs for the response: arrays as nested lists (JSON) or {dtype, shape, data} (msgpack)."""
    if isinstance(value, np.ndarray):
        if binary:
            return {"dtype": str(value.dtype), "shape": list(value.shape), "data": value.tobytes()}
        return value.tolist()
    if isinstance(value, dict):
        return {k: encode_output(v, binary) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_output(v, binary) for v in value]
    if hasattr(value, "numpy") and hasattr(value, "shape"):  # a torch tensor from a real handler
        return encode_output(value.numpy(), binary)
    return value


# NOTE: json.dumps(o, separators=...) builds a JSONEncoder and a C encoder on every call; this one is built
# once (same output: compact separators, ensure_ascii, NaN allowed; no circular-reference check, which
# outputs never need).
json_compact: Callable[[Any], str]
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # the C accelerator, private to json
if _c_make_encoder is not None:
    _c_encode = _c_make_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None,
                                            ":", ",", False, False, True)

    def json_compact(o: Any) -> str:
        """json.dumps(o, separators=(",", ":"))."""
        return "".join(_c_encode(o, 0))
else:  # pragma: no cover (CPython always has the C encoder)
    json_compact = json.JSONEncoder(separators=(",", ":")).encode


def encode_output_json(value: Any) -> str:
    """json_compact(encode_output(value, False)), with the usual shapes (an array, or a mapping of arrays)
    converted in one pass."""
    t = type(value)
    if t is np.ndarray:
        return json_compact(value.tolist())
    if t is dict:
        return json_compact({k: v.tolist() if type(v) is np.ndarray else encode_output(v, False) for k, v in value.items()})
    return json_compact(encode_output(value, False))


# ---------------------------------------------------------------- OpenAPI


def _path(summary: str, *, body: type[BaseModel] | None = None, ok: type[BaseModel] | None = None, ok_code: str = "200",
          params: list[dict] | None = None, errors: tuple[str, ...] = ("404",), more_ok: dict[str, type[BaseModel] | None] | None = None,
          binary_ok: bool = False) -> dict:
    """One operation: `ok` answers with `ok_code` (and each of `more_ok`'s codes with its model), as JSON, or
    as JSON or msgpack when `binary_ok` (the answer takes the request's encoding, or Accept's)."""
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {
            JSON: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}},
            MSGPACK: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}}}
    for code, model in {ok_code: ok, **(more_ok or {})}.items():
        if model is None:
            op["responses"][code] = {"description": "OK"}
            continue
        schema = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        op["responses"][code] = {"description": "OK", "content": {JSON: schema, MSGPACK: schema} if binary_ok else {JSON: schema}}
    for code in errors:
        op["responses"][code] = {"description": "error", "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    return op


class TenantCreate(Limits):
    """POST /v1/tenants: the new tenant's name and its limits."""

    name: str = Field(pattern=TENANT_RE, description="tenant name: 1-32 lower-case letters, digits and '-'")


class TenantCreated(TenantCreate):
    """The answer to POST /v1/tenants: the API key is in it, and nowhere else, ever."""

    api_key: str


class TenantDoc(Limits):
    """A tenant as GET /v1/tenants/{name} shows it (never its key)."""

    name: str
    admin: bool


def openapi_document(version: str = "0.1.0") -> dict:
    """The OpenAPI 3.1 document served at /openapi.json (built from the models above)."""
    models: list[type[BaseModel]] = [ErrorBody, FunctionBundle, FunctionSpec, WorkflowSpec, InvokeRequest, InvokeResponse, AsyncAccepted,
              StageTiming, ListFunctions, ListWorkflows, Limits, TenantCreate, TenantCreated, TenantDoc]
    schemas: dict[str, Any] = {}
    for m in models:
        s = m.model_json_schema(ref_template="#/components/schemas/{model}")
        for k, v in s.pop("$defs", {}).items():
            schemas.setdefault(k, v)
        schemas[m.__name__] = s
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    bad = ("400", "413", "415", "422")
    paths = {
        "/v1/functions": {"get": _path("List functions", ok=ListFunctions, errors=()),
                          "post": _path("Deploy (or replace) a function with its bundle files", body=FunctionBundle, ok_code="201",
                                        more_ok={"200": None}, errors=bad)},
        "/v1/functions/{name}": {"get": _path("One function", params=name), "delete": _path("Remove a function", params=name, errors=("404", "409"))},
        "/v1/workflows": {"get": _path("List workflows", ok=ListWorkflows, errors=()),
                          "post": _path("Deploy (or replace) a workflow", body=WorkflowSpec, ok_code="201", more_ok={"200": None},
                                        errors=bad)},
        "/v1/workflows/{name}": {"get": _path("One workflow", params=name), "delete": _path("Remove a workflow", params=name, errors=("404", "409"))},
        "/v1/workflows/{name}/invoke": {"post": _path(
            "Invoke a workflow: synchronous (200, the result) or with ?mode=async (202, an id)", body=InvokeRequest, ok=InvokeResponse,
            more_ok={"202": AsyncAccepted}, binary_ok=True, params=name + [{"name": "mode", "in": "query", "required": False, "schema": {"enum": ["sync", "async"]}}],
            errors=("404",) + bad)},
        "/v1/invocations/{id}": {"get": _path("An async invocation's status or result", ok=InvokeResponse, binary_ok=True,
                                              params=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}])},
        "/v1/cluster": {"get": _path("GPUs, shares, instances and queues", errors=())},
        "/v1/usage": {"get": _path("Cost, SLO and latency figures so far", errors=())},
        "/metrics": {"get": _path("Prometheus metrics (text format)", errors=())},
        "/healthz": {"get": _path("Liveness", errors=())},
        "/openapi.json": {"get": _path("This document", errors=())},
        # the dashboard (gateway/routes/ui.py): the admin key, or the session cookie that /ui?token=KEY sets
        "/ui": {"get": {**_path("The live dashboard page (admin key or its session cookie; a browser gets 401/403 as a small HTML "
                                "page). With ?token=ADMIN_KEY: log in, set the session cookie and redirect (303) to /ui",
                                params=[{"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}],
                                errors=("403",)),
                        "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}},
                                      "303": {"description": "logged in: the session cookie is set; go to /ui"},
                                      "403": _path("", errors=("403",))["responses"]["403"]}}},
        "/ui/state": {"get": _path("What the dashboard shows: GPUs, instances, queues, windowed SLO hit, cost and decision "
                                   "figures, and their series (admin key or the dashboard's session cookie)", errors=("403",))},
        "/ui/static/{name}": {"get": {**_path("The dashboard's script (app.js) and style sheet (style.css)", params=name,
                                             errors=("403", "404")),
                                      "responses": {"200": {"description": "the file", "content": {
                                                        "text/javascript": {"schema": {"type": "string"}},
                                                        "text/css": {"schema": {"type": "string"}}}},
                                                    **_path("", errors=("403", "404"))["responses"]}}},
        "/v1/tenants": {"get": _path("List tenants (admin key)", errors=("403",)),
                        "post": _path("Create a tenant; the answer holds its API key, once (admin key)", body=TenantCreate,
                                      ok=TenantCreated, ok_code="201", errors=("403", "409") + bad)},
        "/v1/tenants/{name}": {"get": _path("One tenant (admin key)", ok=TenantDoc, params=name, errors=("403", "404")),
                               "patch": _path("Change a tenant's weight or quotas (admin key)", body=Limits, ok=TenantDoc, params=name,
                                              errors=("403", "404") + bad),
                               "delete": _path("Remove a tenant that owns nothing (admin key)", params=name, errors=("403", "404", "409"))},
    }
    # NOTE: every operation but /healthz needs the bearer key (401 without one); /metrics is the admin's (403);
    # an invocation past a tenant quota gets 429 with Retry-After.
    for path, ops in paths.items():
        for method, op in ops.items():
            if path == "/healthz":
                op["security"] = []
                continue
            op["responses"]["401"] = _path("", errors=("401",))["responses"]["401"]
            if path == "/metrics":
                op["responses"]["403"] = _path("", errors=("403",))["responses"]["403"]
            if path.endswith("/invoke"):
                op["responses"]["429"] = _path("", errors=("429",))["responses"]["429"]
    return {"openapi": "3.1.0", "info": {"title": "gpufaas gateway", "version": version}, "paths": paths,
            "security": [{"bearer": []}],
            "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
