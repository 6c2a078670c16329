"""The benches' stand-in server and the HTTP load client: `closed_loop` counts only 200 answers, stops
at its time, and fails loudly on any other answer; `FastPool` and the stand-in agree on the body."""

from __future__ import annotations

import json

import pytest

from gpufaas.loadgen.httpfast import BadResponse, FastPool, closed_loop, encode_post
from gpufaas.loadgen.standin import DEFAULT_BODY, standin_app

BODY = {"id": "7", "workflow": "zero-wf", "status": "completed", "slo_met": True, "latency_ms": 0.1, "stages": []}


async def test_closed_loop_and_pool_against_the_standin(aiohttp_server):
    server = await aiohttp_server(standin_app(BODY))
    req = encode_post("127.0.0.1", server.port, "/v1/workflows/zero-wf/invoke", b"{}")
    n, secs = await closed_loop("127.0.0.1", server.port, req, 4, 0.2)
    assert n >= 4 and 0.2 <= secs < 5.0  # every connection answered at least once, and it stopped
    pool = FastPool("127.0.0.1", server.port, 1)
    status, body = await pool.request(req)
    pool.close()
    assert status == 200 and json.loads(body) == BODY


async def test_closed_loop_refuses_an_answer_other_than_200(aiohttp_server):
    server = await aiohttp_server(standin_app(DEFAULT_BODY))
    req = encode_post("127.0.0.1", server.port, "/no/such/route", b"{}")
    with pytest.raises(BadResponse, match="server answered 404"):
        await closed_loop("127.0.0.1", server.port, req, 2, 5.0)


def test_start_runs_the_module_and_reports_a_child_that_fails(tmp_path):
    from gpufaas.gateway.client import Client
    from gpufaas.loadgen.standin import start

    (tmp_path / "body.json").write_text(json.dumps(BODY))
    proc, port = start("gpufaas.loadgen.standin", "--body", str(tmp_path / "body.json"))
    try:
        assert Client(f"http://127.0.0.1:{port}").invoke("zero-wf") == (200, BODY)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    with pytest.raises(RuntimeError, match=r"did not start .*Error: .*missing.json.* does not exist"):
        start("gpufaas.loadgen.standin", "--body", str(tmp_path / "missing.json"))
