"""The gateway over real HTTP (pytest-aiohttp): deploy, invoke (sync, async, msgpack), state routes, and
every kind of bad input answered as a JSON error without a traceback."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest
import yaml

from gpufaas.gateway.app import create_app
from gpufaas.gateway.config import GatewayConfig
from tests.conftest import FUNCTIONS
from tests.helpers import AUTH, TEST_ADMIN_KEY, get_json, wait_for


def fn_spec(name: str) -> dict:
    return yaml.safe_load((FUNCTIONS / name / "function.yaml").read_text())


def wf_spec(name: str) -> dict:
    return yaml.safe_load((FUNCTIONS / "workflows" / f"{name}.yaml").read_text())


def make_cfg(tmp_path, **kw) -> GatewayConfig:
    kw.setdefault("backend", "inproc")
    kw.setdefault("cold_start_scale", 0.0)
    return GatewayConfig(data_dir=tmp_path / "gw", admin_key=TEST_ADMIN_KEY, **kw)


async def deploy_chain(client) -> None:
    for f in ("preprocess", "resnet50"):
        r = await client.post("/v1/functions", json={"spec": fn_spec(f), "files": {"handler.py": "# test\n"}})
        assert r.status == 201, await r.text()
    r = await client.post("/v1/workflows", json=wf_spec("image-classify"))
    assert r.status == 201, await r.text()


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    c = await aiohttp_client(create_app(make_cfg(tmp_path, max_body_mb=0.5)), headers=AUTH)
    await deploy_chain(c)
    return c


async def expect_error(resp, status: int, code: str | None = None, contains: str = "") -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code:
        assert body["error"]["code"] == code, body
    assert contains in body["error"]["message"], body
    assert "Traceback" not in body["error"]["message"] and "\n" not in body["error"]["message"]
    return body


async def test_sync_invoke_result_and_timing(client):
    r = await client.post("/v1/workflows/image-classify/invoke", json={"slo_ms": 500})
    assert r.status == 200, await r.text()
    d = await r.json()
    assert d["workflow"] == "image-classify" and d["status"] == "completed" and d["slo_met"] is True and d["slo_ms"] == 500
    assert [s["name"] for s in d["stages"]] == ["preprocess", "classify"]
    pre, cls = d["stages"]
    assert 0 <= pre["start_ms"] <= pre["end_ms"] <= cls["start_ms"] <= cls["end_ms"] <= d["latency_ms"]
    assert np.asarray(d["output"]["logits"]).shape == (1000,)
    r2 = await client.post("/v1/workflows/image-classify/invoke", json={})
    d2 = await r2.json()
    assert d2["id"] != d["id"] and d2["slo_ms"] == 100  # the workflow's own SLO without an override


async def test_async_invoke_then_get(client):
    r = await client.post("/v1/workflows/image-classify/invoke?mode=async", json={})
    assert r.status == 202
    acc = await r.json()
    assert acc["status"] == "pending" and acc["location"] == f"/v1/invocations/{acc['id']}"
    d = await wait_for(lambda: get_json(client, acc["location"]), lambda d: d["status"] != "pending", what="the async invocation to end")
    assert d["status"] == "completed" and d["id"] == acc["id"] and len(d["stages"]) == 2
    await expect_error(await client.get("/v1/invocations/nope-1"), 404, "not_found", "unknown invocation")


async def test_msgpack_tensors_both_ways(client):
    frame = np.arange(3 * 256 * 256, dtype=np.uint8).reshape(3, 256, 256)
    body = msgpack.packb({"data": {"frame": {"dtype": "uint8", "shape": [3, 256, 256], "data": frame.tobytes()}}, "slo_ms": 300})
    r = await client.post("/v1/workflows/image-classify/invoke", data=body, headers={"Content-Type": "application/msgpack"})
    assert r.status == 200 and r.content_type == "application/msgpack"
    d = msgpack.unpackb(await r.read(), raw=False)
    out = d["output"]["logits"]
    assert out["dtype"] == "float32" and out["shape"] == [1000]
    assert np.frombuffer(out["data"], dtype=np.float32).shape == (1000,)
    bad = msgpack.packb({"data": {"frame": {"dtype": "uint8", "shape": [3, 5], "data": b"abc"}}})
    await expect_error(await client.post("/v1/workflows/image-classify/invoke", data=bad, headers={"Content-Type": "application/msgpack"}),
                       422, "invalid_payload", "data.frame")


async def test_list_get_cluster_usage_metrics_openapi(client):
    wfs = (await (await client.get("/v1/workflows")).json())["workflows"]
    assert [w["name"] for w in wfs] == ["image-classify"] and wfs[0]["slo_ms"] == 100
    fns = (await (await client.get("/v1/functions")).json())["functions"]
    assert {f["name"] for f in fns} == {"preprocess", "resnet50"} and fns[0]["files"] == ["handler.py"]
    one = await (await client.get("/v1/functions/resnet50")).json()
    assert one["spec"]["model"] == "resnet50" and one["used_by"] == ["image-classify"]
    for _ in range(3):
        assert (await client.post("/v1/workflows/image-classify/invoke", json={})).status == 200
    cl = await (await client.get("/v1/cluster")).json()
    assert len(cl["gpus"]) == 4 and cl["instances"] and {q["stage"] for q in cl["queues"]} == {"preprocess", "classify"}
    used = sum(g["share_in_use"] for g in cl["gpus"])
    assert used == pytest.approx(sum(i["share"] for i in cl["instances"]))
    # esg says why it started each instance (", fragment": a smaller share than planned)
    assert {i["start_reason"].split(",")[0] for i in cl["instances"]} <= {"need", "consolidate", "backlog", "shed"}
    u = await (await client.get("/v1/usage")).json()
    # esg may reject an invocation that a cold start would make late: every one ended, most completed
    assert u["invocations"] == 3 and u["completed"] + u["rejected"] == 3 and u["completed"] >= 1 and u["cold_starts"] >= 2
    assert 0 <= u["slo_hit_rate"] <= 1
    assert set(u["cost"]) >= {"allocated_usd", "busy_usd", "gpu_seconds_allocated", "gpu_seconds_busy"}
    assert u["cost"]["allocated_usd"] > 0 and set(u["latency_ms"]) == {"p50", "p95", "p99"}
    m = await (await client.get("/metrics")).text()
    assert f'gpufaas_invocations_total{{status="completed",tenant="default",workflow="image-classify"}} {u["completed"]:.1f}' in m
    assert 'gpufaas_cold_starts_total{function="resnet50",tenant="default"}' in m and "gpufaas_gpu_share_in_use_ratio{" in m
    assert "gpufaas_invocation_latency_seconds_bucket" in m
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/v1/workflows/{name}/invoke" in doc["paths"]
    assert "InvokeRequest" in doc["components"]["schemas"] and "FunctionSpec" in doc["components"]["schemas"]
    assert (await (await client.get("/healthz")).json())["status"] == "ok"


async def test_redeploy_unchanged_updated_and_delete(client):
    r = await client.post("/v1/functions", json={"spec": fn_spec("resnet50"), "files": {"handler.py": "# test\n"}})
    assert r.status == 200 and (await r.json())["result"] == "unchanged"
    r = await client.post("/v1/functions", json={"spec": fn_spec("resnet50"), "files": {"handler.py": "# changed\n"}})
    assert r.status == 200 and (await r.json())["result"] == "updated"
    await expect_error(await client.delete("/v1/functions/resnet50"), 409, "conflict", "image-classify")
    assert (await client.delete("/v1/workflows/image-classify")).status == 200
    assert (await client.delete("/v1/functions/resnet50")).status == 200
    await expect_error(await client.get("/v1/functions/resnet50"), 404, "not_found", "unknown function 'resnet50'")
    await expect_error(await client.delete("/v1/workflows/image-classify"), 404, "not_found")


async def test_malformed_json_400(client):
    await expect_error(await client.post("/v1/workflows/image-classify/invoke", data=b"{nope",
                                         headers={"Content-Type": "application/json"}), 400, "bad_json", "not valid JSON")
    await expect_error(await client.post("/v1/functions", data=b"[1,", headers={"Content-Type": "application/json"}), 400, "bad_json")
    await expect_error(await client.post("/v1/workflows/image-classify/invoke", json=[1, 2]), 400, "bad_request")


async def test_unknown_workflow_and_route_404(client):
    await expect_error(await client.post("/v1/workflows/nope/invoke", json={}), 404, "not_found", "unknown workflow 'nope'")
    await expect_error(await client.get("/v1/workflows/nope"), 404, "not_found", "image-classify")
    await expect_error(await client.get("/v1/nothing-here"), 404, "not_found", "/openapi.json")
    await expect_error(await client.put("/v1/workflows", json={}), 405, "method_not_allowed")


async def test_body_over_limit_413(client):
    big = {"data": {"frame": [0] * 400_000}}  # ~800 KB of JSON, the limit is 0.5 MB
    await expect_error(await client.post("/v1/workflows/image-classify/invoke", json=big), 413, "body_too_large", "0.5 MB")


async def test_wrong_content_type_415(client):
    await expect_error(await client.post("/v1/workflows/image-classify/invoke", data=b"slo_ms=5",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"}), 415,
                       "unsupported_media_type", "application/json")
    await expect_error(await client.post("/v1/functions", data=b"x", headers={"Content-Type": "text/plain"}), 415)


@pytest.mark.parametrize("path, body, needle", [
    ("/v1/functions", {"spec": {**fn_spec("resnet50"), "batch_sizes": [0, 2]}}, "spec.batch_sizes"),
    ("/v1/functions", {"spec": {**fn_spec("resnet50"), "colour": "red"}}, "spec.colour: unknown field"),
    ("/v1/functions", {k: v for k, v in fn_spec("resnet50").items() if k != "model"}, "model: required field is missing"),
    ("/v1/functions", {"spec": {**fn_spec("resnet50"), "name": "r2", "model": "nope"}}, "no profile for model 'nope'"),
    ("/v1/functions", {"spec": {**fn_spec("resnet50"), "name": "r3", "shares": [0.25]}}, "not a multiple of 1/10"),
    ("/v1/functions", {"spec": fn_spec("resnet50"), "files": {"../evil.py": "x"}}, "files.../evil.py"),
    ("/v1/workflows", {"name": "w", "slo_ms": 50, "stages": [{"name": "a", "function": "ghost"}]}, "stages[0].function: unknown function 'ghost'"),
    ("/v1/workflows", {"name": "w", "slo_ms": 50, "stages": [{"name": "a", "function": "resnet50", "after": ["b"]},
                                                            {"name": "b", "function": "resnet50", "after": ["a"]}]}, "cycle"),
    ("/v1/workflows", {"name": "w", "slo_ms": -1, "stages": [{"name": "a", "function": "resnet50"}]}, "slo_ms"),
])
async def test_invalid_manifest_422_names_field(client, path, body, needle):
    b = await expect_error(await client.post(path, json=body), 422, contains=needle)
    assert b["error"]["code"] in ("invalid_manifest", "invalid")


@pytest.mark.parametrize("slo", ["fast", -5, 0, True, "nan", [1]])
async def test_unparseable_slo_422(client, slo):
    await expect_error(await client.post("/v1/workflows/image-classify/invoke", json={"slo_ms": slo}), 422, "invalid_slo", "slo_ms")


async def test_slo_in_query_and_unknown_fields(client):
    r = await client.post("/v1/workflows/image-classify/invoke?slo_ms=250", json={})
    assert (await r.json())["slo_ms"] == 250
    await expect_error(await client.post("/v1/workflows/image-classify/invoke?slo_ms=soon", json={}), 422, "invalid_slo", "query slo_ms")
    await expect_error(await client.post("/v1/workflows/image-classify/invoke", json={"dta": {}}), 422, "invalid_request", "dta")
    await expect_error(await client.post("/v1/workflows/image-classify/invoke?mode=later", json={}), 422, "invalid_request", "mode")


async def test_stuck_invocation_times_out(aiohttp_client, tmp_path):
    # cold starts scaled by 1e4 never finish within the 0.3 s invocation timeout
    c = await aiohttp_client(create_app(make_cfg(tmp_path, cold_start_scale=1e4, invocation_timeout_s=0.3, policy="batch1-wholegpu")), headers=AUTH)
    await deploy_chain(c)
    r = await c.post("/v1/workflows/image-classify/invoke", json={"slo_ms": 60000})
    d = await r.json()
    assert d["status"] == "timed_out" and d["slo_met"] is False and "invocation_timeout_s" in d["reason"]
    assert 300 <= d["latency_ms"] < 5000
    u = await (await c.get("/v1/usage")).json()
    assert u["timed_out"] == 1


async def test_sync_json_body_is_json_dumps_of_result_of(aiohttp_client, tmp_path):
    """The sync invoke's JSON body is written without building the dict (Platform.result_json); it must be
    byte for byte json.dumps(result_of(...)) in every case: one exit, several exits, ended early with a reason."""
    import json

    from gpufaas.gateway.http_io import PLATFORM

    c = await aiohttp_client(create_app(make_cfg(tmp_path, policy="batch1-wholegpu")), headers=AUTH)
    await deploy_chain(c)
    r = await c.post("/v1/functions", json={"spec": fn_spec("mobilenet-v2"), "files": {"handler.py": "# test\n"}})
    assert r.status == 201, await r.text()
    two_exits = {"name": "two-exits", "slo_ms": 400, "stages": [
        {"name": "pre", "function": "preprocess"}, {"name": "cls", "function": "resnet50", "after": ["pre"]},
        {"name": "mob", "function": "mobilenet-v2", "after": ["pre"]}]}
    assert (await c.post("/v1/workflows", json=two_exits)).status == 201
    plat = c.server.app[PLATFORM]

    def same(inv_id, inv):
        want = json.dumps(plat.result_of(inv, inv_id, False), separators=(",", ":")).encode()
        assert plat.result_json(inv, inv_id) == want

    for wf, slo in (("image-classify", None), ("image-classify", 0.001), ("two-exits", 250.5)):
        inv_id, inv = await plat.invoke(plat.workflow("default", wf), None, slo)
        assert inv.status.name == "COMPLETED"
        same(inv_id, inv)
    # ended before it ran, with a reason that json must escape
    inv = plat.ctl.submit("two-exits", None)
    plat.ctl.fail_invocation(inv, 'lost "payload" \\ caf\u00e9 \u2014 \n tab\t')
    same("x-1", inv)
    # the HTTP answer is that body
    r = await c.post("/v1/workflows/two-exits/invoke", json={})
    d = await r.json()
    assert r.status == 200 and d["status"] == "completed" and set(d["output"]) == {"cls", "mob"}
    assert [s["name"] for s in d["stages"]] == ["pre", "cls", "mob"] or [s["name"] for s in d["stages"]] == ["pre", "mob", "cls"]


async def test_inproc_zero_time_batches_all_end_once_with_accounting(tmp_path):
    """The inproc backend ends zero-time batches that the controller dispatches while others end in the same
    callback (issue #6): every invocation still goes through the controller and ends exactly once, with one
    batch each (batch1-wholegpu) and consistent GPU accounting."""
    from gpufaas.gateway.service import Platform
    from gpufaas.gateway.metrics import Metrics
    from gpufaas.platform.specs import FunctionSpec, WorkflowSpec, parse

    plat = Platform(make_cfg(tmp_path, zero_profile=True, policy="batch1-wholegpu"), Metrics())
    await plat.start()
    try:
        await plat.deploy_function("default", parse(FunctionSpec, {"name": "zero", "model": "zero", "batch_sizes": [1, 2, 4, 8], "shares": [1.0],
                                                        "outputs": {"y": {"dtype": "float32", "shape": [4]}}}, "t"), {})
        plat.deploy_workflow("default", parse(WorkflowSpec, {"name": "zero-wf", "slo_ms": 1000, "stages": [{"name": "s", "function": "zero"}]}, "t"))
        ctl = plat.ctl
        await plat.invoke(plat.workflow("default", "zero-wf"), None, None)  # the instance is warm
        ended: list = []
        all_ended = asyncio.Event()

        def end(inv) -> None:
            ended.append(inv)
            if len(ended) == 200:
                all_ended.set()

        invs = [ctl.submit("zero-wf", None, on_done=end) for _ in range(200)]
        await asyncio.wait_for(all_ended.wait(), 10)
        assert sorted(i.id for i in ended) == sorted(i.id for i in invs)  # each exactly once
        assert all(i.status.name == "COMPLETED" and i.outputs[0]["y"].shape == (4,) for i in invs)
        assert ctl.acct.completed == 201 and ctl.acct.batches == 201 and not ctl.inflight and not ctl.jobs
        ctl.check_invariants()
    finally:
        await plat.close()


async def test_first_invoke_on_idle_gateway_returns_result_with_slo_missed(aiohttp_client, tmp_path):
    """Right after a deploy nothing is warm and the cold start exceeds the 100 ms SLO: the invocation
    still runs (esg, on_deadline_miss: run) and answers 200 with its result and slo_met false."""
    c = await aiohttp_client(create_app(make_cfg(tmp_path, cold_start_scale=0.2)), headers=AUTH)
    await deploy_chain(c)
    r = await c.post("/v1/workflows/image-classify/invoke", json={})
    assert r.status == 200, await r.text()
    d = await r.json()
    assert d["status"] == "completed" and d["slo_met"] is False and d["latency_ms"] > 100
    assert np.asarray(d["output"]["logits"]).shape == (1000,)
