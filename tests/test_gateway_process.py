"""The gateway on its default backend (one worker process per instance): a bad bundle is refused with
422 at deploy, a good one serves an invocation, and closing the app leaves no worker process behind."""

from __future__ import annotations

import os

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gpufaas.gateway.app import create_app
from gpufaas.gateway.config import GatewayConfig
from tests.conftest import FUNCTIONS
from tests.helpers import AUTH, TEST_ADMIN_KEY

pytestmark = pytest.mark.slow


def children() -> set[int]:
    """Pids of this process's live children (from /proc)."""
    me = str(os.getpid())
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                out.add(int(d))
    return out


async def test_process_backend_deploy_invoke_close(tmp_path):
    before = children()
    spec = yaml.safe_load((FUNCTIONS / "aggregator" / "function.yaml").read_text())
    handler = (FUNCTIONS / "aggregator" / "handler.py").read_text()
    cfg = GatewayConfig(backend="process", policy="batch1-wholegpu", data_dir=tmp_path / "gw", keep_alive_s=60, admin_key=TEST_ADMIN_KEY)
    async with TestClient(TestServer(create_app(cfg)), headers=AUTH) as c:
        bad = await c.post("/v1/functions", json={"spec": {**spec, "name": "broken"}, "files": {"handler.py": "def build(:\n"}})
        assert bad.status == 422, await bad.text()
        err = (await bad.json())["error"]
        assert "handler.py" in err["message"] and "\n" not in err["message"]
        assert (await (await c.get("/v1/functions")).json())["functions"] == []
        r = await c.post("/v1/functions", json={"spec": spec, "files": {"handler.py": handler}})
        assert r.status == 201, await r.text()
        r = await c.post("/v1/workflows", json={"name": "agg", "slo_ms": 100, "stages": [{"name": "a", "function": "aggregator"}]})
        assert r.status == 201
        r = await c.post("/v1/workflows/agg/invoke", json={"slo_ms": 60000})
        d = await r.json()
        assert d["status"] == "completed", d
        assert len(d["output"]["decision"]) == 16
        cl = await (await c.get("/v1/cluster")).json()
        assert len(cl["instances"]) == 1 and cl["instances"][0]["cold_start_ms"] > 0
        assert children() - before  # a worker process is running
    assert children() - before == set()  # and it is gone once the app closed
