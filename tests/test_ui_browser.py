"""The live dashboard (/ui): its login flow and cookie session, the ring buffer's windowed figures, `gpufaas ui`,
and the page itself in a real headless Chromium (the Debian package, driven over the DevTools protocol with
aiohttp's websocket client) against a gateway under load."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import webbrowser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gpufaas.gateway.app import create_app
from gpufaas.gateway.cli import main
from gpufaas.gateway.config import GatewayConfig
from gpufaas.gateway.routes.ui import COOKIE, DASHBOARD, MAX_SESSIONS, SESSION_TTL_S, Dashboard, Sample
from gpufaas.platform.units import NS_PER_S
from tests.helpers import AUTH, TEST_ADMIN_KEY, wait_for

FN = {"name": "f1", "model": "preprocess", "shares": [1.0], "batch_sizes": [1]}
WF = {"name": "w", "slo_ms": 2000, "stages": [{"name": "s", "function": "f1"}]}
HTML = {"Accept": "text/html,application/xhtml+xml"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def config(tmp_path: Path, **kw: Any) -> GatewayConfig:
    kw.setdefault("cold_start_scale", 0.0)
    return GatewayConfig(backend="inproc", policy="batch1-wholegpu", data_dir=tmp_path / "gw", admin_key=TEST_ADMIN_KEY, **kw)


@pytest.fixture
async def gw(aiohttp_client, tmp_path):
    """A gateway with f1 and w deployed, and a tenant 'acme' whose key is returned."""
    c = await aiohttp_client(create_app(config(tmp_path)))
    assert (await c.post("/v1/functions", json=FN, headers=AUTH)).status == 201
    assert (await c.post("/v1/workflows", json=WF, headers=AUTH)).status == 201
    r = await c.post("/v1/tenants", json={"name": "acme"}, headers=AUTH)
    assert r.status == 201
    return c, (await r.json())["api_key"]


class Seen:
    """Every answer a test got, headers and body, to check that no key ever comes back."""

    def __init__(self) -> None:
        self.blobs: list[str] = []

    async def get(self, c, path: str, **kw: Any) -> tuple[aiohttp.ClientResponse, str]:
        r = await c.get(path, allow_redirects=False, **kw)
        text = await r.text()
        self.blobs.append(json.dumps(list(r.headers.items())) + text)
        return r, text

    def assert_never(self, *keys: str) -> None:
        for k in keys:
            assert all(k not in b for b in self.blobs), "a key came back in an answer"


async def test_token_login_sets_a_session_cookie_and_redirects(gw):
    c, tenant_key = gw
    seen = Seen()
    r, _ = await seen.get(c, f"/ui?token={TEST_ADMIN_KEY}")
    assert r.status == 303 and r.headers["Location"] == "/ui"
    set_cookie = r.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    for attr in ("HttpOnly", "SameSite=Strict", "Path=/ui"):
        assert attr.lower() in set_cookie.lower(), set_cookie
    sid = r.cookies[COOKIE].value
    assert len(sid) >= 40 and TEST_ADMIN_KEY not in sid
    c.session.cookie_jar.clear()  # from here on, the cookie is sent by hand (or not at all)
    cookie = {"Cookie": f"{COOKIE}={sid}"}

    r, text = await seen.get(c, "/ui/state", headers=cookie)
    assert r.status == 200, text
    doc = json.loads(text)
    assert [q["workflow"] for q in doc["queues"]] == ["w"] and len(doc["gpus"]) == 4
    r, text = await seen.get(c, "/ui", headers={**cookie, **HTML})
    assert r.status == 200 and "/ui/static/app.js" in text
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    r, text = await seen.get(c, "/ui/static/app.js", headers=cookie)
    assert r.status == 200 and r.content_type == "text/javascript" and "/ui/state" in text

    # the cookie is the dashboard's only: the API routes still want the bearer key
    r, _ = await seen.get(c, "/v1/cluster", headers=cookie)
    assert r.status == 401
    # a forged or stale session id is no session
    r, _ = await seen.get(c, "/ui/state", headers={"Cookie": f"{COOKIE}={sid[:-4]}AAAA"})
    assert r.status == 401
    # a second login is a second session; the first stays valid
    r2, _ = await seen.get(c, f"/ui?token={TEST_ADMIN_KEY}", headers=HTML)
    assert r2.cookies[COOKIE].value != sid
    assert (await seen.get(c, "/ui/state", headers=cookie))[0].status == 200
    seen.assert_never(TEST_ADMIN_KEY, tenant_key)


async def test_bad_or_missing_credentials_get_401_and_a_tenant_key_403(gw):
    c, tenant_key = gw
    seen = Seen()
    c.session.cookie_jar.clear()
    # an unknown token: 401, no cookie; a browser gets a page saying how to log in
    r, text = await seen.get(c, "/ui?token=gf_not-a-key-at-all-0000000000000", headers=HTML)
    assert r.status == 401 and r.content_type == "text/html"
    assert "gpufaas ui" in text and "Set-Cookie" not in r.headers
    r, text = await seen.get(c, "/ui?token=")
    assert r.status == 401 and json.loads(text)["error"]["code"] == "unauthorized"
    # nothing at all: 401 (HTML for the page in a browser, JSON for the state and for scripts)
    r, text = await seen.get(c, "/ui", headers=HTML)
    assert r.status == 401 and r.content_type == "text/html" and "/ui?token=" in text
    for path in ("/ui", "/ui/state", "/ui/static/style.css"):
        r, text = await seen.get(c, path)
        assert r.status == 401 and json.loads(text)["error"]["code"] == "unauthorized", path
    # a tenant's key: 403 as a token (no session) and as a bearer key
    r, text = await seen.get(c, f"/ui?token={tenant_key}", headers=HTML)
    assert r.status == 403 and "admin key only" in text and "Set-Cookie" not in r.headers
    for path in ("/ui", "/ui/state", "/ui/static/app.js"):
        r, _ = await seen.get(c, path, headers=bearer(tenant_key))
        assert r.status == 403, path
    # the admin's bearer key works without a session; an unknown static file is a 404
    assert (await seen.get(c, "/ui/state", headers=AUTH))[0].status == 200
    r, text = await seen.get(c, "/ui/static/..%2Fhttp_io.py", headers=AUTH)
    assert r.status == 404 and "app.js" in text
    seen.assert_never(TEST_ADMIN_KEY, tenant_key)


async def test_state_reports_the_workload_from_the_accounting(gw):
    c, _ = gw
    for _ in range(5):
        assert (await c.post("/v1/workflows/w/invoke", json={}, headers=AUTH)).status == 200
    doc = await (await c.get("/ui/state", headers=AUTH)).json()
    (wf,) = doc["workflows"]
    assert (wf["name"], wf["ended"], wf["total_ended"]) == ("w", 5, 5)
    assert wf["slo_hit_rate"] == 1.0  # no cold-start time, a 2 s SLO
    assert doc["totals"]["invocations"] == 5 and doc["decisions"]["total"] > 0
    insts = [i for g in doc["gpus"] for i in g["instances"]]
    assert insts and {i["function"] for i in insts} == {"f1"} and {i["state"] for i in insts} <= {"idle", "busy", "cold-starting"}
    assert doc["cost"]["allocated_usd"] > 0


async def test_the_sampler_records_the_accounting_every_period(gw):
    c, _ = gw
    dash = c.server.app[DASHBOARD]
    assert (await c.post("/v1/workflows/w/invoke", json={}, headers=AUTH)).status == 200

    async def samples() -> list[Sample]:
        return list(dash.samples)

    ring = await wait_for(samples, lambda r: len(r) >= 2 and r[-1].per_workflow.get("w") == (1, 1), timeout_s=10,
                          what="two samples, the last after the invocation")
    assert all(b.t_ns - a.t_ns >= 0.9 * dash.period_s * NS_PER_S for a, b in zip(ring, ring[1:]))
    assert ring[-1].decisions >= 1 and ring[-1].allocated_usd > 0
    doc = await (await c.get("/ui/state", headers=AUTH)).json()
    assert len(doc["series"]["t_s"]) >= 2 and doc["series"]["t_s"][-1] == 0.0


def _sample(t_s: int, decisions: int, ended: int, hits: int, usd: float) -> Sample:
    return Sample(t_s * NS_PER_S, decisions, decisions * 10.0, usd, usd / 2, ended - hits, {"w": (ended, hits)})


def test_ring_buffer_keeps_history_s_and_windows_are_differences():
    dash = Dashboard(period_s=1.0, history_s=4)
    for t in range(10):  # counters grow by 10 decisions, 2 ended (1 hit) and $1 a second
        dash.record(_sample(t, 10 * t, 2 * t, t, float(t)))
    assert [s.t_ns // NS_PER_S for s in dash.samples] == [6, 7, 8, 9]
    report = {"per_workflow": {"w": {"invocations": 20, "slo_hit_rate": 0.5}}, "cost": {"allocated_usd": 10.0, "busy_usd": 5.0},
              "decision_us": {"p50": 10.0, "p99": 10.0}, "refused_decisions": 0, "invocations": 20, "completed": 20, "failed": 0,
              "rejected": 0, "timed_out": 0, "slo_hit_rate": 0.5, "cold_starts": 1}
    cluster = {"policy": "p", "backend": "b", "execute": "emulated", "inflight": 0, "gpus": [], "instances": [], "queues": []}
    doc = dash.state_doc(_sample(10, 100, 20, 10, 10.0), report, cluster)
    assert doc["window_s"] == 4.0  # from the oldest kept sample (t = 6) to now (t = 10)
    assert doc["workflows"] == [{"name": "w", "ended": 8, "slo_hit_rate": 0.5, "total_ended": 20, "total_slo_hit_rate": 0.5}]
    assert doc["cost"]["window_allocated_usd"] == 4.0 and doc["cost"]["window_busy_usd"] == 2.0
    assert doc["decisions"]["per_s"] == 10.0 and doc["decisions"]["mean_us"] == 10.0
    s = doc["series"]
    assert s["t_s"] == [-3.0, -2.0, -1.0, 0.0] and s["decisions_per_s"] == [10.0] * 4
    assert s["allocated_usd_per_h"] == [3600.0] * 4 and s["slo_hit"]["w"] == [0.5] * 4


def test_sessions_expire_and_are_bounded():
    dash = Dashboard()
    sid = dash.login("default", 0)
    assert dash.session_tenant(sid, SESSION_TTL_S * NS_PER_S - 1) == "default"
    assert dash.session_tenant(sid, SESSION_TTL_S * NS_PER_S) is None
    assert dash.session_tenant(None, 0) is None and dash.session_tenant("", 0) is None
    ids = [dash.login("default", 1) for _ in range(MAX_SESSIONS + 1)]
    assert dash.session_tenant(ids[0], 2) is None and dash.session_tenant(ids[-1], 2) == "default"


# ---------------------------------------------------------------- gpufaas ui


@pytest.mark.live  # serves HTTP on a loopback port for the CLI
async def test_cli_prints_the_login_address_and_opens_it(tmp_path, monkeypatch, capsys):
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    server = TestServer(create_app(config(tmp_path)), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")

    def cli(*args: str) -> int:
        try:
            main(["ui", "--gateway", base, *args])
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    async def run(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli, *args)  # the CLI's client blocks; the gateway serves on this loop
        out, err = capsys.readouterr()
        return code, out, err

    try:
        code, out, _ = await run("--api-key", TEST_ADMIN_KEY)
        assert code == 0 and out.strip() == f"{base}/ui?token={TEST_ADMIN_KEY}" and opened == [out.strip()]
        code, out, _ = await run("--api-key", TEST_ADMIN_KEY, "--no-open")
        assert code == 0 and out.strip() and len(opened) == 1
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/v1/tenants", json={"name": "acme"}, headers=AUTH) as resp:
                tenant_key = (await resp.json())["api_key"]
        code, out, err = await run("--api-key", tenant_key)
        assert code == 2 and "admin key only" in err and tenant_key not in out + err
        code, _, err = await run("--api-key", "gf_not-a-key-at-all-0000000000000")
        assert code == 2 and "unknown" in err.lower()
        monkeypatch.setattr(webbrowser, "open", lambda url: False)
        code, out, err = await run("--api-key", TEST_ADMIN_KEY)
        assert code == 0 and out.strip() and "no browser found" in err
    finally:
        await server.close()
    code, _, err = await run("--api-key", TEST_ADMIN_KEY, "--no-open")
    assert code == 3 and "no gateway" in err


# ---------------------------------------------------------------- the page in a real browser


def chromium() -> str | None:
    """The Debian package's browser (`.ci/run` installs it), or None."""
    found = shutil.which("chromium")
    return found or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,800", "--remote-debugging-port=0")


class Cdp:
    """A DevTools-protocol session over one page target's websocket: `call` a method, and the events seen."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is None:
                self.events.append(data)
            elif "error" in data:
                fut.set_exception(RuntimeError(f"DevTools error: {data['error']}"))
            else:
                fut.set_result(data.get("result", {}))

    async def call(self, method: str, **params: Any) -> dict:
        self._next += 1
        fut = self._pending[self._next] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        return await asyncio.wait_for(fut, 30)

    async def js(self, expression: str) -> Any:
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and the browser's own error log (failed loads, CSP violations)."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


DOM = """JSON.stringify({
  href: location.href, cookie: document.cookie, status: (document.getElementById('status') || {}).textContent,
  instances: [...document.querySelectorAll('[data-instance]')].map(e => [e.dataset.function, e.dataset.state, e.textContent]),
  workflows: [...document.querySelectorAll('tr[data-workflow]')].map(e => [e.dataset.workflow, e.dataset.hitWindow, e.dataset.endedWindow]),
  text: document.body ? document.body.innerText : ""})"""


@pytest.mark.live
@pytest.mark.slow
async def test_dashboard_in_headless_chromium(tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    server = TestServer(create_app(config(tmp_path, cold_start_scale=0.1)), host="127.0.0.1")
    await server.start_server()
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
                                                stdout=asyncio.subprocess.DEVNULL, stderr=(tmp_path / "chromium.log").open("wb"))
    cdp: Cdp | None = None
    try:
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession(base_url=base, headers=AUTH) as http:
            assert (await http.post("/v1/functions", json=FN)).status == 201
            assert (await http.post("/v1/workflows", json=WF)).status == 201

            async def stream(n: int) -> list[int]:
                codes = []
                for _ in range(n):
                    async with http.post("/v1/workflows/w/invoke", json={}) as r:
                        codes.append(r.status)
                return codes

            load = asyncio.gather(*(stream(15) for _ in range(4)))  # 60 invocations, 4 at a time: cold starts, then warm

            # chromium writes its DevTools port to the profile folder once it listens
            port_file = profile / "DevToolsActivePort"

            async def port() -> str | None:
                return port_file.read_text().split("\n")[0] if port_file.exists() and port_file.read_text().strip() else None

            devtools = f"http://127.0.0.1:{await wait_for(port, bool, timeout_s=30, what='chromium listening for DevTools')}"
            async with aiohttp.ClientSession() as s:
                async with s.get(devtools + "/json/list") as r:
                    page = next(t for t in await r.json() if t["type"] == "page")
                cdp = Cdp(await s.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0))
                for domain in ("Runtime", "Log", "Page"):
                    await cdp.call(f"{domain}.enable")
                await cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
                await cdp.call("Page.navigate", url=f"{base}/ui?token={TEST_ADMIN_KEY}")

                codes = [c for stream_codes in await load for c in stream_codes]
                assert codes == [200] * 60

                async def dom() -> dict:
                    try:
                        return json.loads(await cdp.js(DOM) or "{}")
                    except RuntimeError:  # the page is between documents (the login redirect): no context to run in
                        return {}

                def shows_the_load(d: dict) -> bool:
                    hit = [float(h) for wf, h, _ in d.get("workflows", []) if wf == "w" and h]
                    return d.get("status") == "live" and bool(d.get("instances")) and bool(hit) and hit[0] > 0

                d = await wait_for(dom, shows_the_load, timeout_s=20, what="the dashboard showing w's instances and SLO hit")
                assert d["href"] == f"{base}/ui", "the token must leave the address bar"
                assert TEST_ADMIN_KEY not in d["href"] and d["cookie"] == "", "the session cookie is HttpOnly"
                assert {f for f, _, _ in d["instances"]} == {"f1"}
                assert {s for _, s, _ in d["instances"]} <= {"cold-starting", "busy", "idle"}
                assert all(f"f1 · {st}" in text for _, st, text in d["instances"])
                assert int(d["workflows"][0][2]) == 60 and "policy batch1-wholegpu" in d["text"]
                assert cdp.console_errors() == []

                # the screenshot is taken under load: 8 streams keep invoking until it is taken
                stop = asyncio.Event()

                async def until_stopped() -> None:
                    while not stop.is_set():
                        async with http.post("/v1/workflows/w/invoke", json={}) as r:
                            assert r.status == 200

                more = asyncio.gather(*(until_stopped() for _ in range(8)))

                def busy(d: dict) -> bool:
                    return any(st == "busy" for _, st, _ in d.get("instances", []))

                await wait_for(dom, busy, timeout_s=20, what="the dashboard showing a busy instance under load")
                shot = base64.b64decode((await cdp.call("Page.captureScreenshot", format="png"))["data"])
                stop.set()
                await more
                assert cdp.console_errors() == []
                assert shot[:8] == b"\x89PNG\r\n\x1a\n"
                out = Path(os.environ.get("GPUFAAS_ARTIFACTS_DIR") or tmp_path)
                out.mkdir(parents=True, exist_ok=True)
                (out / "dashboard-1280x800.png").write_bytes(shot)
                await cdp.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        await server.close()
