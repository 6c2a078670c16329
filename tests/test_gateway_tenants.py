"""Tenants on a real gateway app (inproc backend): keys, the isolation matrix over every route of the
OpenAPI document, quotas (429 + Retry-After), keys never kept or logged in clear, the CLI's key lookup."""

from __future__ import annotations

import logging
import re

import pytest

from gpufaas.gateway.api import openapi_document
from gpufaas.gateway.app import create_app
from gpufaas.gateway.client import ENV_API_KEY, ENV_DATA_DIR, resolve_api_key
from gpufaas.gateway.config import GatewayConfig
from gpufaas.gateway.http_io import PLATFORM
from gpufaas.gateway.tenants import qualify, short, tenant_of

ADMIN_KEY = "gf_admin-key-of-the-tenant-tests"
FN = {"name": "f1", "model": "preprocess", "shares": [1.0], "batch_sizes": [1]}
WF = {"name": "w", "slo_ms": 1000, "stages": [{"name": "s", "function": "f1"}]}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def gw(aiohttp_client, tmp_path):
    """A gateway with the admin key, tenants 'acme' (f1 and w deployed) and 'other' (g1 and v), and one async
    invocation id per tenant."""
    cfg = GatewayConfig(backend="inproc", cold_start_scale=0.0, policy="batch1-wholegpu", data_dir=tmp_path / "gw", admin_key=ADMIN_KEY)
    c = await aiohttp_client(create_app(cfg))
    keys = {"admin": ADMIN_KEY}
    ids = {}
    # 'other' names its things differently, so every call with its key on acme's names must be a 404
    for t, fn, wf in (("acme", FN, WF), ("other", {**FN, "name": "g1"}, {**WF, "name": "v", "stages": [{"name": "s", "function": "g1"}]})):
        r = await c.post("/v1/tenants", json={"name": t}, headers=bearer(ADMIN_KEY))
        assert r.status == 201, await r.text()
        keys[t] = (await r.json())["api_key"]
        assert (await c.post("/v1/functions", json=fn, headers=bearer(keys[t]))).status == 201
        assert (await c.post("/v1/workflows", json=wf, headers=bearer(keys[t]))).status == 201
        r = await c.post(f"/v1/workflows/{wf['name']}/invoke?mode=async", json={}, headers=bearer(keys[t]))
        assert r.status == 202
        ids[t] = (await r.json())["id"]
    return c, keys, ids, tmp_path / "gw"


# Per OpenAPI (path, method): how to call it on tenant acme's things, and what the owner gets. A route in the
# document without a rule here fails test_every_route_has_a_rule: a new route must say who may call it.
# kind: "open" (no key needed), "admin" (admin key only), "owned" (the tenant's own things: another key gets 404).
RULES = {
    ("/healthz", "get"): ("open", "/healthz", None, 200),
    ("/openapi.json", "get"): ("any", "/openapi.json", None, 200),
    ("/metrics", "get"): ("admin", "/metrics", None, 200),
    ("/v1/tenants", "get"): ("admin", "/v1/tenants", None, 200),
    ("/v1/tenants", "post"): ("admin", "/v1/tenants", {"name": "newco"}, 201),
    ("/v1/tenants/{name}", "get"): ("admin", "/v1/tenants/acme", None, 200),
    ("/v1/tenants/{name}", "patch"): ("admin", "/v1/tenants/acme", {"weight": 2}, 200),
    ("/v1/tenants/{name}", "delete"): ("admin", "/v1/tenants/acme", None, 409),  # it still owns f1 and w
    ("/v1/functions", "get"): ("listing", "/v1/functions", None, 200),
    ("/v1/functions", "post"): ("any", "/v1/functions", {**FN, "name": "f2"}, 201),
    ("/v1/functions/{name}", "get"): ("owned", "/v1/functions/f1", None, 200),
    ("/v1/functions/{name}", "delete"): ("owned", "/v1/functions/f1", None, 409),  # w uses it
    ("/v1/workflows", "get"): ("listing", "/v1/workflows", None, 200),
    ("/v1/workflows", "post"): ("any", "/v1/workflows", {**WF, "name": "w2"}, 201),
    ("/v1/workflows/{name}", "get"): ("owned", "/v1/workflows/w", None, 200),
    ("/v1/workflows/{name}", "delete"): ("owned", "/v1/workflows/w", None, 200),
    ("/v1/workflows/{name}/invoke", "post"): ("owned", "/v1/workflows/w/invoke", {}, 200),
    ("/v1/invocations/{id}", "get"): ("owned", "/v1/invocations/{acme_id}", None, 200),
    ("/v1/cluster", "get"): ("any", "/v1/cluster", None, 200),
    ("/v1/usage", "get"): ("any", "/v1/usage", None, 200),
    ("/ui", "get"): ("admin", "/ui", None, 200),
    ("/ui/state", "get"): ("admin", "/ui/state", None, 200),
    ("/ui/static/{name}", "get"): ("admin", "/ui/static/app.js", None, 200),
}


def test_every_route_has_a_rule_and_every_rule_a_route():
    doc = openapi_document()
    ops = {(p, m) for p, methods in doc["paths"].items() for m in methods}
    assert ops == set(RULES), f"routes without a tenant rule: {sorted(ops - set(RULES))}; rules without a route: {sorted(set(RULES) - ops)}"


async def test_every_served_route_is_in_the_openapi_document(gw):
    c, *_ = gw
    doc = openapi_document()
    served = {(r.resource.canonical, r.method.lower()) for r in c.server.app.router.routes() if r.method not in ("HEAD", "*")}
    assert served == {(p, m) for p, ms in doc["paths"].items() for m in ms}


@pytest.mark.parametrize("op", sorted(RULES), ids=lambda op: f"{op[1]} {op[0]}")
async def test_isolation_matrix(gw, op):
    """One route x {no key, bad key, the other tenant's key, the owner's key, the admin key}."""
    c, keys, ids, _ = gw
    kind, path, body, ok = RULES[op]
    method = op[1]
    path = path.replace("{acme_id}", ids["acme"])

    async def call(headers: dict) -> tuple[int, str]:
        r = await c.request(method.upper(), path, json=body, headers=headers)
        return r.status, await r.text()

    for who, headers in (("no key", {}), ("bad key", bearer("gf_not-a-key-at-all-0000000000000")), ("bad scheme", {"Authorization": keys["acme"]})):
        st, text = await call(headers)
        if kind == "open":
            assert st == 200, (who, text)
        else:
            assert st == 401, (who, st, text)
            assert '"unauthorized"' in text
    if kind == "admin":
        for who in ("acme", "other"):
            st, text = await call(bearer(keys[who]))
            assert st == 403, (who, st, text)
        st, text = await call(bearer(keys["admin"]))
        assert st == ok, text
        return
    if kind == "owned":
        # another tenant (and the admin, whose things are the default tenant's) gets 404, never the owner's data
        for who in ("other", "admin"):
            st, text = await call(bearer(keys[who]))
            assert st == 404, (who, st, text)
            # the same answer as for a name or id that never existed: no hint that it does
            ghost = path.replace(ids["acme"], "nope").replace("/f1", "/nope").replace("/w/", "/nope/")
            ghost = ghost[:-2] + "/nope" if ghost.endswith("/w") else ghost
            r2 = await c.request(method.upper(), ghost, json=body, headers=bearer(keys[who]))
            assert r2.status == 404
            assert text.replace(ids["acme"], "nope").replace("'f1'", "'nope'").replace("'w'", "'nope'") == await r2.text()
    st, text = await call(bearer(keys["acme"]))
    assert st == ok, text


async def test_names_are_per_tenant_and_never_leak(gw):
    c, keys, ids, _ = gw
    # both may use the same name: 'other' deploys its own f1, removes it again; acme's stays
    assert (await c.post("/v1/functions", json=FN, headers=bearer(keys["other"]))).status == 201
    assert (await c.delete("/v1/functions/f1", headers=bearer(keys["other"]))).status == 200
    r = await c.get("/v1/functions/f1", headers=bearer(keys["other"]))
    assert r.status == 404 and "deployed: g1" in await r.text()
    # a function still used: the 409 names the tenant's own workflow, as the tenant knows it
    r = await c.delete("/v1/functions/g1", headers=bearer(keys["other"]))
    assert r.status == 409 and "other/" not in await r.text() and "'v'" in (await r.text()).replace('"', "'")
    r = await c.get("/v1/functions", headers=bearer(keys["acme"]))
    assert [f["name"] for f in (await r.json())["functions"]] == ["f1"]
    # a workflow naming a function only another tenant has: refused naming only the caller's own functions
    r = await c.post("/v1/workflows", json=WF, headers=bearer(keys["other"]))
    assert r.status == 422
    assert "acme" not in await r.text()
    # what acme reads never names another tenant
    for path in ("/v1/functions", "/v1/workflows", "/v1/cluster", "/v1/usage", f"/v1/invocations/{ids['acme']}"):
        text = await (await c.get(path, headers=bearer(keys["acme"]))).text()
        assert "other" not in text and "acme/" not in text, (path, text)
    r = await c.post("/v1/workflows/w/invoke", json={}, headers=bearer(keys["acme"]))
    doc = await r.json()
    assert doc["workflow"] == "w" and doc["stages"][0]["function"] == "f1"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", doc["id"]), "ids carry 128 random bits"


async def test_quotas_answer_429_with_retry_after_and_lose_nothing(gw):
    c, keys, *_ = gw
    r = await c.patch("/v1/tenants/acme", json={"rate_rps": 2}, headers=bearer(ADMIN_KEY))
    assert r.status == 200 and (await r.json())["rate_rps"] == 2
    answers = [await c.post("/v1/workflows/w/invoke", json={}, headers=bearer(keys["acme"])) for _ in range(5)]
    codes = [a.status for a in answers]
    assert codes[:2] == [200, 200] and set(codes[2:]) == {429}, codes
    refused = answers[2]
    assert int(refused.headers["Retry-After"]) >= 1
    err = (await refused.json())["error"]
    assert err["code"] == "quota_exceeded" and "rate_rps" in err["message"]
    # the other tenant is not limited by acme's quota
    assert (await c.post("/v1/workflows/v/invoke", json={}, headers=bearer(keys["other"]))).status == 200
    # every admitted invocation ended (nothing admitted is lost)
    usage = await (await c.get("/v1/usage", headers=bearer(keys["acme"]))).json()
    assert usage["invocations"] == 1 + 2  # the fixture's async one and the two admitted here


async def test_concurrency_quota(aiohttp_client, tmp_path):
    cfg = GatewayConfig(backend="inproc", cold_start_scale=1e4, policy="batch1-wholegpu", data_dir=tmp_path / "gw",
                        admin_key=ADMIN_KEY, invocation_timeout_s=5)
    c = await aiohttp_client(create_app(cfg))
    key = (await (await c.post("/v1/tenants", json={"name": "slow", "max_concurrency": 1}, headers=bearer(ADMIN_KEY))).json())["api_key"]
    await c.post("/v1/functions", json=FN, headers=bearer(key))
    await c.post("/v1/workflows", json=WF, headers=bearer(key))
    first = await c.post("/v1/workflows/w/invoke?mode=async", json={}, headers=bearer(key))  # waits on a very long cold start
    assert first.status == 202
    second = await c.post("/v1/workflows/w/invoke", json={}, headers=bearer(key))
    assert second.status == 429 and "max_concurrency" in (await second.json())["error"]["message"]
    assert int(second.headers["Retry-After"]) >= 1


async def test_keys_are_never_stored_or_logged_in_clear(gw, caplog):
    caplog.set_level(logging.DEBUG)
    c, keys, _, data_dir = gw
    await c.get("/v1/functions", headers=bearer(keys["acme"]))
    await c.get("/v1/functions", headers=bearer("gf_wrong-key-0000000000000000000"))
    await c.post("/v1/tenants", json={"name": "acme"}, headers=bearer(ADMIN_KEY))  # 409, logged or not
    blobs = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file() and p.name != "admin.key")
    for k in keys.values():
        assert k.encode() not in blobs, "a key is in the data dir in clear"
        assert k not in caplog.text
    assert (data_dir / "admin.key").stat().st_mode & 0o077 == 0


async def test_tenant_lifecycle_errors(gw):
    c, keys, *_ = gw
    r = await c.post("/v1/tenants", json={"name": "acme"}, headers=bearer(ADMIN_KEY))
    assert r.status == 409
    r = await c.post("/v1/tenants", json={"name": "Bad Name!"}, headers=bearer(ADMIN_KEY))
    assert r.status == 422
    r = await c.post("/v1/tenants", json={"name": "x", "weight": -1}, headers=bearer(ADMIN_KEY))
    assert r.status == 422 and "weight" in await r.text()
    r = await c.delete("/v1/tenants/default", headers=bearer(ADMIN_KEY))
    assert r.status == 409
    # a removed tenant's key stops working at once
    key = (await (await c.post("/v1/tenants", json={"name": "temp"}, headers=bearer(ADMIN_KEY))).json())["api_key"]
    assert (await c.get("/v1/functions", headers=bearer(key))).status == 200
    assert (await c.delete("/v1/tenants/temp", headers=bearer(ADMIN_KEY))).status == 200
    assert (await c.get("/v1/functions", headers=bearer(key))).status == 401


def test_names_map_one_to_one():
    for tenant, name in (("default", "image-classify"), ("acme", "image-classify"), ("a-b", "x.y_z")):
        q = qualify(tenant, name)
        assert (tenant_of(q), short(q)) == (tenant, name)
    assert qualify("default", "w") != qualify("acme", "w")


def test_cli_key_lookup(tmp_path):
    (tmp_path / "admin.key").write_text("gf_from-file\n")
    env = {ENV_DATA_DIR: str(tmp_path)}
    assert resolve_api_key("gf_flag", "http://127.0.0.1:8080", {ENV_API_KEY: "gf_env", **env}) == "gf_flag"
    assert resolve_api_key(None, "http://127.0.0.1:8080", {ENV_API_KEY: "gf_env", **env}) == "gf_env"
    assert resolve_api_key(None, "http://127.0.0.1:8080", env) == "gf_from-file"
    assert resolve_api_key(None, "http://gpu-cluster.example:8080", env) is None  # a remote gateway has its own keys


async def test_metrics_carry_a_tenant_label_with_the_tenants_own_names(gw):
    c, keys, *_ = gw
    assert (await c.post("/v1/workflows/w/invoke", json={}, headers=bearer(keys["acme"]))).status == 200
    m = await (await c.get("/metrics", headers=bearer(ADMIN_KEY))).text()
    assert 'gpufaas_invocations_total{status="completed",tenant="acme",workflow="w"}' in m
    assert 'gpufaas_cold_starts_total{function="f1",tenant="acme"}' in m
    assert "acme/" not in m  # the controller's names stay inside the gateway


def test_access_log_never_carries_the_query(caplog):
    """`/ui?token=KEY` logs in with the admin key in the query: the access log writes the path alone."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from gpufaas.gateway.app import PathOnlyAccessLogger

    caplog.set_level(logging.INFO)
    logger = logging.getLogger("gpufaas.gateway.test-access")
    PathOnlyAccessLogger(logger, "").log(make_mocked_request("GET", f"/ui?token={ADMIN_KEY}"), web.Response(status=303), 0.001)
    assert "GET /ui 303" in caplog.text and ADMIN_KEY not in caplog.text


async def test_usage_per_tenant_has_its_own_cost_and_the_weights_reach_the_controller(gw):
    c, keys, *_ = gw
    assert (await c.post("/v1/workflows/w/invoke", json={}, headers=bearer(keys["acme"]))).status == 200
    u = await (await c.get("/v1/usage", headers=bearer(keys["acme"]))).json()
    assert u["tenant"] == "acme" and u["cost"]["allocated_usd"] > 0 and u["cost"]["gpu_seconds_allocated"] > 0
    whole = await (await c.get("/v1/usage", headers=bearer(ADMIN_KEY))).json()
    assert whole["cost"]["allocated_usd"] >= u["cost"]["allocated_usd"]
    assert (await (await c.get("/v1/usage?tenant=acme", headers=bearer(ADMIN_KEY))).json())["tenant"] == "acme"
    assert (await c.get("/v1/usage?tenant=acme", headers=bearer(keys["other"]))).status == 403
    r = await c.patch("/v1/tenants/acme", json={"weight": 3, "max_share_units": 20}, headers=bearer(ADMIN_KEY))
    assert r.status == 200
    shares = c.server.app[PLATFORM].ctl.tenancy.shares
    assert shares["acme"].weight == 3 and shares["acme"].max_share_units == 20
