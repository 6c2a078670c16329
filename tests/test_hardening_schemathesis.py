"""schemathesis against /openapi.json of a real gateway (inproc backend, served on a loopback port from a
thread): every operation, with the admin key, in JSON and msgpack; no answer may be a 5xx, and every answer
must conform to the document (status code documented, content type, body schema).

Bounded: MAX_EXAMPLES per operation and mode keeps the whole module under a minute on two cores. Marked
`slow` (and `live`: it serves HTTP on a port). schemathesis is a dev dependency (pyproject `[dev]`)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Iterator

import msgpack
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from gpufaas.gateway.api import openapi_document
from gpufaas.gateway.app import create_app
from gpufaas.gateway.config import GatewayConfig
from tests.helpers import AUTH, TEST_ADMIN_KEY

pytestmark = [pytest.mark.slow, pytest.mark.live]

MAX_EXAMPLES = 100  # 39 operation x mode runs: about 25 s on the 2-core machine
# NOTE: `negative_data_rejection` is left out: the invoke route ignores query parameters it does not know
# (as most HTTP APIs do), which that check counts as accepting invalid data.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except OverflowError:  # an integer past 64 bits (a negative example): no msgpack body can hold it
        reject()


@schemathesis.deserializer("application/msgpack")
def _unmsgpack(ctx: Any, response: Any) -> Any:
    return msgpack.unpackb(response.content, raw=False)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway on 127.0.0.1:<free port>, its event loop in a thread of its own (schemathesis calls it over
    HTTP with `requests`, blocking); one function and workflow deployed, so that operations on names can
    also reach a thing that exists."""
    cfg = GatewayConfig(backend="inproc", cold_start_scale=0.0, policy="batch1-wholegpu", admin_key=TEST_ADMIN_KEY,
                        data_dir=tmp_path_factory.mktemp("schemathesis") / "gw", invocation_timeout_s=5.0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
    thread.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(create_app(cfg))

    async def start() -> None:
        await runner.setup()
        await web.SockSite(runner, sock).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fn = {"name": "f1", "model": "preprocess", "shares": [1.0], "batch_sizes": [1]}
    assert requests.post(f"{url}/v1/functions", json=fn, headers=AUTH, timeout=30).status_code == 201
    wf = {"name": "w", "slo_ms": 1000, "stages": [{"name": "s", "function": "f1"}]}
    assert requests.post(f"{url}/v1/workflows", json=wf, headers=AUTH, timeout=30).status_code == 201
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=60)
        loop.close()


# NOTE: the operations come from `openapi_document()` at collection time (one test per operation, named by
# it), and the fixture checks that the gateway serves that same document. schemathesis' own lazy pytest
# integration (`schemathesis.pytest.from_fixture`) reads a private pytest attribute that pytest 9 removed.
SCHEMA = schemathesis.openapi.from_dict(openapi_document())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


def test_the_gateway_serves_the_document_under_test(gateway_url: str) -> None:
    assert requests.get(f"{gateway_url}/openapi.json", headers=AUTH, timeout=30).json() == openapi_document()
    assert len(OPERATIONS) == sum(len(ops) for ops in openapi_document()["paths"].values())


# every operation with valid data; with invalid data those that take any (a path, a query, a body)
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE) for label, op in sorted(OPERATIONS.items()) if op.body or any(p.name != "Authorization" for p in op.iter_parameters())]


def _deployable_function(case: Any) -> Any:
    """A generated function bundle aimed past the profile check: a shipped model, shares and batch it has,
    its handler among the files; the other fields (name, keep-alive, tensors, file names) stay generated."""
    case.body["spec"].update(model="preprocess", shares=[1.0], batch_sizes=[1])
    case.body.setdefault("files", {})["handler.py"] = "# test\n"
    return case


def _workflow_of_f1(case: Any) -> Any:
    """A generated workflow whose stages all run the deployed function f1 (the rest stays generated)."""
    for stage in case.body["stages"]:
        stage["function"] = "f1"
    return case


def _named(name: str) -> Any:
    def aim(case: Any) -> Any:
        case.path_parameters["name"] = name
        return case
    return aim


# NOTE: random names almost never name what is deployed, so without aim the generated requests stop at the
# first lookup (404, or 422 "unknown function") and never reach the checks and conversions behind it.
# Half of the valid examples of these operations are aimed at the deployed function f1 and workflow w
# (never a DELETE: the operations run in one gateway, and w must stay for the others).
AIMS = {"POST /v1/functions": _deployable_function, "POST /v1/workflows": _workflow_of_f1,
        "POST /v1/workflows/{name}/invoke": _named("w"), "GET /v1/workflows/{name}": _named("w"),
        "GET /v1/functions/{name}": _named("f1")}


def strategy(label: str, mode: GenerationMode) -> st.SearchStrategy:
    """The operation's cases in `mode`; for a valid-data run of an aimed operation, half of them aimed."""
    base = OPERATIONS[label].as_strategy(generation_mode=mode)
    aim = AIMS.get(label)
    return st.one_of(base, base.map(aim)) if aim is not None and mode is GenerationMode.POSITIVE else base


def test_aims_name_operations_of_the_document() -> None:
    assert set(AIMS) <= set(OPERATIONS)


@pytest.mark.parametrize("label, mode", CASES, ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_every_operation_answers_within_its_schema_and_never_5xx(label: str, mode: GenerationMode, gateway_url: str) -> None:
    @given(case=strategy(label, mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        case.call_and_validate(base_url=gateway_url, headers=AUTH, checks=CHECKS, timeout=30)

    run()
