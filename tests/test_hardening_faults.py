"""Faults lose nothing and overload sheds (issue 15, items 1, 2 and 5): SQLite on a full disk or a read-only
data dir answers 503 naming the cause and recovers; a corrupt store stops `gpufaas up` with one line and
exit 2, untouched; start-up errors name their cause; a flood gets 429 + Retry-After before any work;
async results expire; a worker SIGKILLed or SIGSTOPped mid-batch is logged and replaced, and every
invocation ends."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gpufaas.gateway.app import create_app
from gpufaas.gateway.cli.gateway_cmds import startup_error
from gpufaas.gateway.config import GatewayConfig
from gpufaas.gateway.http_io import PLATFORM
from gpufaas.gateway.store import Store, StoreCorrupt
from gpufaas.platform.runtime import InvocationStatus
from tests.helpers import AUTH, TEST_ADMIN_KEY, get_json, wait_for
from tests.test_process_backend import GOOD, _busy_pid, setup, submit

pytestmark = pytest.mark.live  # starts processes and servers

FN = {"name": "f1", "model": "resnet50", "shares": [1.0], "batch_sizes": [1]}
WF = {"name": "w", "slo_ms": 1000, "stages": [{"name": "s", "function": "f1"}]}


def gateway(data_dir: Path, **kw) -> TestClient:
    cfg = GatewayConfig(backend="inproc", policy="batch1-wholegpu", data_dir=data_dir, admin_key=TEST_ADMIN_KEY, **kw)
    return TestClient(TestServer(create_app(cfg)), headers=AUTH)


async def deploy(c: TestClient) -> None:
    assert (await c.post("/v1/functions", json=FN)).status == 201
    assert (await c.post("/v1/workflows", json=WF)).status == 201


async def ended(c: TestClient, inv_id: str) -> dict:
    return await wait_for(lambda: get_json(c, f"/v1/invocations/{inv_id}"), lambda d: d.get("status") != "pending",
                          timeout_s=30.0, what=f"invocation {inv_id} to end")


@pytest.fixture
def tmpfs():
    """A 4 MB tmpfs (this machine runs as root); skipped where mounting is not allowed."""
    d = Path(tempfile.mkdtemp(prefix="gpufaas-tmpfs-"))
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], capture_output=True).returncode:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)
    os.rmdir(d)


async def test_full_disk_and_read_only_data_dir_answer_503_and_recover(tmpfs: Path) -> None:
    async with gateway(tmpfs / "gw") as c:
        await deploy(c)
        r = await c.post("/v1/workflows/w/invoke?mode=async", json={})
        first = (await r.json())["id"]
        await ended(c, first)
        filler = tmpfs / "filler"
        with open(filler, "wb") as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        for _ in range(3):  # a few: the WAL may still hold a page or two of room
            r = await c.post("/v1/workflows/w/invoke?mode=async", json={})
            if r.status == 503:
                break
        assert r.status == 503, await r.text()
        err = (await r.json())["error"]
        assert "disk is full" in err["message"] and "gateway.sqlite3" in err["message"] and "\n" not in err["message"]
        assert (await c.get(f"/v1/invocations/{first}")).status == 200  # reads still work
        assert (await c.get("/healthz")).status == 200
        filler.unlink()  # space returns: so does the gateway
        r = await c.post("/v1/workflows/w/invoke?mode=async", json={})
        assert r.status == 202, await r.text()
        assert (await ended(c, (await r.json())["id"]))["status"] == "completed"

    # NOTE: a mount with files open for writing cannot be remounted read-only, so the read-only data dir is
    # tried at the next start: one line naming the cause, the file left as it was
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        with pytest.raises(StoreCorrupt, match=r"gateway.sqlite3: cannot open the store: its folder is on a read-only file system"):
            Store(tmpfs / "gw" / "gateway.sqlite3")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    db = sqlite3.connect(tmpfs / "gw" / "gateway.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM invocations WHERE status='pending'").fetchone()[0] == 0


def test_a_corrupt_store_stops_up_with_one_line_and_exit_2_untouched(tmp_path: Path) -> None:
    data = tmp_path / "gw"
    data.mkdir()
    store = data / "gateway.sqlite3"
    garbage = b"SQLite format 3\0" + os.urandom(8192)
    store.write_bytes(garbage)
    p = subprocess.run([sys.executable, "-m", "gpufaas.gateway", "--backend", "inproc", "--port", "0", "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(store) in lines[0] and "move it aside" in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert store.read_bytes() == garbage and not (data / "admin.key").exists()


def test_startup_errors_name_their_cause(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with socket.socket() as s2, pytest.raises(OSError) as ei:
            s2.bind(("127.0.0.1", port))
    assert "already in use" in startup_error(ei.value, "127.0.0.1", port)
    assert "no permission" in startup_error(OSError(errno.EACCES, "Permission denied"), "0.0.0.0", 80)
    bad_dir = OSError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))
    msg = startup_error(bad_dir, "127.0.0.1", 8080)
    assert msg.startswith(str(tmp_path / "ro")) and "--data-dir" in msg and "port" not in msg
    assert "not an address" in startup_error(OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "10.9.9.9", 8080)


async def test_a_flood_gets_429_with_retry_after_before_any_work(tmp_path: Path) -> None:
    async with gateway(tmp_path / "gw", cold_start_scale=0.3) as c:
        await deploy(c)
        plat = c.server.app[PLATFORM]
        floor = plat.queue_floor(plat.workflow("default", "w"))  # 4 A100 x 10 units x batch 1 = 40
        n = 3 * floor
        loop = asyncio.get_running_loop()

        async def one() -> tuple[int, float, str | None]:
            t0 = loop.time()
            r = await c.post("/v1/workflows/w/invoke", json={})
            await r.read()
            return r.status, loop.time() - t0, r.headers.get("Retry-After")

        flood = asyncio.gather(*(one() for _ in range(n)))
        wf_name = plat.workflow("default", "w").name
        await wait_for(lambda: asyncio.sleep(0, plat.queues.inflight.get(wf_name, 0)), lambda k: k >= floor,
                       timeout_s=10.0, what="the workflow to fill")
        # full: the bound is checked before the body is read, so a body that would be a 400 gets the 429
        bad = await c.post("/v1/workflows/w/invoke", data=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status == 429 and (await bad.json())["error"]["code"] != "bad_json", await bad.text()
        answers = await flood
        usage = await get_json(c, "/v1/usage")
    refused = [a for a in answers if a[0] == 429]
    served = [a for a in answers if a[0] == 200]
    assert len(refused) + len(served) == n and len(served) == floor  # all arrive before the cold start ends
    assert all(int(ra) >= 1 for _, _, ra in refused)
    assert max(t for _, t, _ in refused) < min(t for _, t, _ in served)  # refused at once, not after queueing
    assert usage["invocations"] == floor  # the refused ones never reached the controller


async def test_async_results_expire_after_the_retention_period(tmp_path: Path) -> None:
    async with gateway(tmp_path / "gw", cold_start_scale=0.0, result_retention_s=1.0) as c:
        await deploy(c)
        inv_id = (await (await c.post("/v1/workflows/w/invoke?mode=async", json={})).json())["id"]
        assert (await ended(c, inv_id))["status"] == "completed"
        gone = await wait_for(lambda: c.get(f"/v1/invocations/{inv_id}"), lambda r: r.status != 200, timeout_s=10.0,
                              what="the result to expire")
        assert gone.status == 404


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
async def test_a_worker_killed_or_hung_mid_batch_is_logged_replaced_and_nothing_is_lost(tmp_path: Path, sig: int,
                                                                                         caplog: pytest.LogCaptureFixture) -> None:
    ctl, be = setup(tmp_path, latency_ms=1500, heartbeat_s=0.3, gpus=1)
    caplog.set_level(logging.WARNING, logger="gpufaas.process")
    try:
        futs = [submit(ctl, GOOD) for _ in range(4)]
        pid = await _busy_pid(ctl, be)
        os.kill(pid, sig)
        invs = await asyncio.wait_for(asyncio.gather(*futs), 60)
        assert all(inv.status == InvocationStatus.COMPLETED for inv in invs), [inv.reason for inv in invs]  # retried once
        assert not ctl.inflight and ctl.acct.retries >= 1
        want = "exited with code -9 mid-batch" if sig == signal.SIGKILL else "hung: no heartbeat"
        assert any(f"pid {pid}" in r.getMessage() and want in r.getMessage() for r in caplog.records), caplog.text
        (inst,) = ctl.instances.values()  # the replacement
        assert inst.info["pid"] != pid
    finally:
        await be.aclose()
