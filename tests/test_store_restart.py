"""The SQLite store, and a gateway restart: deployments come back, and every async invocation accepted
before the restart answers with its result or a failed status that says why (never "unknown")."""

from __future__ import annotations

import sqlite3

from aiohttp.test_utils import TestClient, TestServer

from gpufaas.gateway.app import create_app
from gpufaas.gateway.config import GatewayConfig
from gpufaas.gateway.store import RESTART_REASON, Store
from tests.helpers import AUTH, TEST_ADMIN_KEY, get_json, wait_for
from tests.test_gateway_api import deploy_chain


def test_store_roundtrip_and_recover(tmp_path):
    st = Store(tmp_path / "s.sqlite3")
    st.put_function("b", {"name": "b"}, {"handler.py": b"x = 1\n"})
    st.put_function("a", {"name": "a", "model": "m"}, {})
    st.put_function("b", {"name": "b", "v": 2}, {"handler.py": b"x = 2\n", "util/h.py": b""})  # replace keeps its place
    assert [(n, s) for n, s, _ in st.functions()] == [("b", {"name": "b", "v": 2}), ("a", {"name": "a", "model": "m"})]
    assert st.functions()[0][2] == {"handler.py": b"x = 2\n", "util/h.py": b""}
    st.put_workflow("w", {"name": "w"})
    st.delete_function("a")
    assert [n for n, _, _ in st.functions()] == ["b"] and st.workflows() == [("w", {"name": "w"})]
    st.add_invocation("i1", "w")
    st.add_invocation("i2", "w")
    st.finish_invocation("i1", "completed", {"id": "i1", "status": "completed"})
    assert st.get_invocation("i2")["status"] == "pending" and st.get_invocation("zz") is None
    st.close()
    st = Store(tmp_path / "s.sqlite3")  # a new process opens the same file
    assert st.recover() == 1
    assert st.get_invocation("i2") == {"id": "i2", "workflow": "w", "status": "failed", "result": None, "reason": RESTART_REASON,
                                       "tenant": "default"}
    assert st.get_invocation("i1")["result"] == {"id": "i1", "status": "completed"}
    assert st.recover() == 0
    assert sqlite3.connect(tmp_path / "s.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    st.close()


def cfg(tmp_path, **kw) -> GatewayConfig:
    return GatewayConfig(backend="inproc", policy="batch1-wholegpu", data_dir=tmp_path / "gw", admin_key=TEST_ADMIN_KEY, **kw)


async def wait_done(c: TestClient, loc: str) -> dict:
    return await wait_for(lambda: get_json(c, loc), lambda d: d["status"] != "pending", what=f"{loc} to end")


async def test_restart_keeps_deployments_and_async_invocations(tmp_path):
    # 1: deploy, one async invocation that completes
    async with TestClient(TestServer(create_app(cfg(tmp_path, cold_start_scale=0.0))), headers=AUTH) as c:
        await deploy_chain(c)
        done_id = (await (await c.post("/v1/workflows/image-classify/invoke?mode=async", json={})).json())["id"]
        assert (await wait_done(c, f"/v1/invocations/{done_id}"))["status"] == "completed"
    # 2: after a restart the deployments are back; an async invocation stays pending (cold starts x1e4)
    async with TestClient(TestServer(create_app(cfg(tmp_path, cold_start_scale=1e4))), headers=AUTH) as c:
        wfs = (await (await c.get("/v1/workflows")).json())["workflows"]
        fns = (await (await c.get("/v1/functions")).json())["functions"]
        assert [w["name"] for w in wfs] == ["image-classify"] and {f["name"] for f in fns} == {"preprocess", "resnet50"}
        assert fns[0]["files"] == ["handler.py"]
        assert (await (await c.get(f"/v1/invocations/{done_id}")).json())["status"] == "completed"
        r = await c.post("/v1/workflows/image-classify/invoke?mode=async", json={"slo_ms": 600000})
        pending_id = (await r.json())["id"]
        # the invocation has reached the controller: its first stage's instance is cold-starting (for ~10 h)
        await wait_for(lambda: get_json(c, "/v1/cluster"), lambda d: any(i["state"] == "starting" for i in d["instances"]),
                       what="an instance to start cold")
        assert (await (await c.get(f"/v1/invocations/{pending_id}")).json())["status"] == "pending"
    # 3: the invocation the gateway never finished answers failed, with the reason
    async with TestClient(TestServer(create_app(cfg(tmp_path, cold_start_scale=0.0))), headers=AUTH) as c:
        d = await (await c.get(f"/v1/invocations/{pending_id}")).json()
        assert d["status"] == "failed" and d["reason"] == RESTART_REASON and d["id"] == pending_id
        d = await (await c.get(f"/v1/invocations/{done_id}")).json()
        assert d["status"] == "completed" and len(d["stages"]) == 2
        # and the restored platform still serves
        r = await c.post("/v1/workflows/image-classify/invoke", json={"slo_ms": 1000})
        assert (await r.json())["status"] == "completed"
