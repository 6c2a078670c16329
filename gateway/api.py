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

from gpufaas.platform.specs import DTYPE_BYTES, FunctionSpec, WorkflowSpec

JSON = "application/json"
MSGPACK = "application/msgpack"


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    slo_ms: float | None = Field(None, gt=0, description="per-request SLO override, ms (> 0); default: the workflow's")


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
    """None, or a finite number > 0 (a numeric string is accepted). BadInput otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadInput("invalid_slo", f"{where}: expected a number of milliseconds > 0, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip().removesuffix("ms"))
        except ValueError:
            raise BadInput("invalid_slo", f"{where}: cannot parse {value!r} as milliseconds; send a number > 0, e.g. 120") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadInput("invalid_slo", f"{where}: expected a finite number of milliseconds > 0, got {value!r}")
    return float(value)


def decode_tensor(name: str, value: Any, spec_dtype: str | None) -> np.ndarray:
    """One input tensor from JSON nested lists or a msgpack {dtype, shape, data} map."""
    if isinstance(value, dict):
        try:
            dtype, shape, raw = value["dtype"], value["shape"], value["data"]
        except KeyError as e:
            raise BadInput("invalid_payload", f"data.{name}: a tensor map needs dtype, shape and data; {e.args[0]} is missing") from None
        if dtype not in DTYPE_BYTES or dtype == "bfloat16":
            raise BadInput("invalid_payload", f"data.{name}.dtype: unknown dtype {dtype!r}; use one of {sorted(set(DTYPE_BYTES) - {'bfloat16'})}")
        try:
            arr = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
        except (ValueError, TypeError) as e:
            raise BadInput("invalid_payload", f"data.{name}: data does not match dtype {dtype} and shape {shape}: {e}") from None
        return arr
    try:
        return np.asarray(value, dtype=None if spec_dtype in (None, "bfloat16") else np.dtype(spec_dtype))
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput("invalid_payload", f"data.{name}: not a rectangular array of numbers ({str(e).splitlines()[0]})") from None


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
if json.encoder.c_make_encoder is not None:
    _c_encode = json.encoder.c_make_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None,
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
          params: list[dict] | None = None, errors: tuple[str, ...] = ("404",)) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {
            JSON: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}},
            MSGPACK: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}}}
    op["responses"][ok_code] = {"description": "OK", "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{ok.__name__}"}}}} \
        if ok is not None else {"description": "OK"}
    for code in errors:
        op["responses"][code] = {"description": "error", "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    return op


def openapi_document(version: str = "0.1.0") -> dict:
    """The OpenAPI 3.1 document served at /openapi.json (built from the models above)."""
    models = [ErrorBody, FunctionBundle, FunctionSpec, WorkflowSpec, InvokeRequest, InvokeResponse, AsyncAccepted,
              StageTiming, ListFunctions, ListWorkflows]
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
                          "post": _path("Deploy (or replace) a function with its bundle files", body=FunctionBundle, ok_code="201", errors=bad)},
        "/v1/functions/{name}": {"get": _path("One function", params=name), "delete": _path("Remove a function", params=name, errors=("404", "409"))},
        "/v1/workflows": {"get": _path("List workflows", ok=ListWorkflows, errors=()),
                          "post": _path("Deploy (or replace) a workflow", body=WorkflowSpec, ok_code="201", errors=bad)},
        "/v1/workflows/{name}": {"get": _path("One workflow", params=name), "delete": _path("Remove a workflow", params=name, errors=("404", "409"))},
        "/v1/workflows/{name}/invoke": {"post": _path(
            "Invoke a workflow: synchronous (200, the result) or with ?mode=async (202, an id)", body=InvokeRequest, ok=InvokeResponse,
            params=name + [{"name": "mode", "in": "query", "required": False, "schema": {"enum": ["sync", "async"]}}],
            errors=("404",) + bad)},
        "/v1/invocations/{id}": {"get": _path("An async invocation's status or result", ok=InvokeResponse,
                                              params=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}])},
        "/v1/cluster": {"get": _path("GPUs, shares, instances and queues", errors=())},
        "/v1/usage": {"get": _path("Cost, SLO and latency figures so far", errors=())},
        "/metrics": {"get": _path("Prometheus metrics (text format)", errors=())},
        "/healthz": {"get": _path("Liveness", errors=())},
        "/openapi.json": {"get": _path("This document", errors=())},
    }
    return {"openapi": "3.1.0", "info": {"title": "gpufaas gateway", "version": version}, "paths": paths,
            "components": {"schemas": schemas}}
