"""`gpufaas up --backend docker`: the gateway serves the video-analytics workflow end to end over HTTP,
each stage in its own container; with no engine reachable, `up` fails at once with a one-line error.

The engine fixture starts dockerd when none runs and skips (with the reason) only when none can start.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gpufaas.gateway.app import create_app
from gpufaas.gateway.client import load_stack
from gpufaas.gateway.config import GatewayConfig
from gpufaas.platform.backends.docker_backend import container_count
from tests.helpers import AUTH, TEST_ADMIN_KEY

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
VIDEO = {"preprocess", "ssdlite", "resnet50", "mobilenet-v2", "vit-b16", "aggregator"}


def video_stack() -> list[tuple[str, dict, dict]]:
    items = load_stack(ROOT / "functions" / "stack.yaml", env={})
    return [it for it in items if (it[0] == "function" and it[1]["name"] in VIDEO)
            or (it[0] == "workflow" and it[1]["name"] == "video-analytics")]


async def test_up_backend_docker_serves_video_analytics(engine, tmp_path):
    port = 20000 + uuid.uuid4().int % 20000  # the backend's scope is named after the port
    cfg = GatewayConfig(port=port, backend="docker", policy="batch1-wholegpu", data_dir=tmp_path / "data", admin_key=TEST_ADMIN_KEY,
                        cluster_file=ROOT / "loadgen" / "scenarios" / "clusters" / "a100x8-2nodes.yaml")
    client = TestClient(TestServer(create_app(cfg), port=port), headers=AUTH)
    await client.start_server()
    scope = f"gw{port}"
    try:
        for kind, spec, files in video_stack():
            path = "/v1/functions" if kind == "function" else "/v1/workflows"
            body = {"spec": spec, "files": files} if kind == "function" else spec
            r = await client.post(path, json=body)
            assert r.status in (200, 201), await r.text()
        frame = np.zeros((3, 256, 256), dtype=np.uint8).tolist()

        async def one() -> dict:
            r = await client.post("/v1/workflows/video-analytics/invoke", json={"data": {"frame": frame}})
            assert r.status == 200, await r.text()
            return await r.json()

        results = [await one() for _ in range(2)]  # cold, then warm
        for res in results:
            assert res["status"] == "completed", res["reason"]
            assert [s["name"] for s in res["stages"]][-1] == "fuse"
            assert np.asarray(res["output"]["decision"]).shape == (16,)
        assert container_count(engine, scope) >= len(VIDEO), "each stage runs in a container"
    finally:
        await client.close()
    assert container_count(engine, scope) == 0, "the gateway's exit must remove its containers"


def test_up_backend_docker_without_engine_fails_at_start(tmp_path, monkeypatch, capsys):
    from gpufaas.gateway.cli import main

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/gpufaas-test.sock")
    with pytest.raises(SystemExit) as ex:
        main(["up", "--backend", "docker", "--port", "0", "--data-dir", str(tmp_path)])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no Docker engine reachable at unix:///nonexistent/gpufaas-test.sock"), err
