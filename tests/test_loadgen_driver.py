"""The live driver against small aiohttp servers started here: counts, errors by kind, no coordinated
omission under a one-second stall, preflight errors, and the CLI's one-line errors (exit 2)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gpufaas.loadgen import live_report
from gpufaas.loadgen.driver import Driver
from gpufaas.loadgen.workload import StreamSpec, WorkloadSpec
from gpufaas.platform.errors import UserError

pytestmark = pytest.mark.live  # starts processes (gateway, workers, HTTP servers): not in `make test-fast`

WORKFLOWS = ["wa", "wb"]


def make_app(handler=None) -> web.Application:
    async def default(request: web.Request) -> web.Response:
        body = await request.json()
        name = request.match_info["name"]
        return web.json_response({"id": "1", "workflow": name, "status": "completed", "slo_met": "slo_ms" not in body,
                                  "latency_ms": 1.0, "stages": []})

    async def workflows(request):
        return web.json_response({"workflows": [{"name": n} for n in WORKFLOWS]})

    calls = {"n": 0}

    async def usage(request):
        calls["n"] += 1
        return web.json_response({"cost": {"allocated_usd": 1.5 * calls["n"], "busy_usd": 0.5 * calls["n"]}})

    async def healthz(request):
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/workflows/{name}/invoke", handler or default)
    app.router.add_get("/v1/workflows", workflows)
    app.router.add_get("/v1/usage", usage)
    app.router.add_get("/healthz", healthz)
    return app


def wl(*streams: dict) -> WorkloadSpec:
    return WorkloadSpec(streams=[StreamSpec(**s) for s in streams])


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_counts_slo_and_cost(client):
    async with TestServer(make_app()) as srv:
        w = wl({"workflow": "wa", "arrival": "constant", "rate_rps": 100}, {"workflow": "wb", "arrival": "constant", "rate_rps": 50, "slo_ms": 5})
        run = await Driver(str(srv.make_url("")), w, seed=1, duration_s=1.0, client=client).run()
    s = live_report.summarize(run)
    assert s["sent"] == s["completed"] == 150 and s["error_count"] == 0
    assert s["per_workflow"]["wa"]["sent"] == 100 and s["per_workflow"]["wb"]["sent"] == 50
    # the fake server says slo_met only when no slo_ms override was sent: so wa hits, wb misses
    assert s["per_workflow"]["wa"]["slo_hit_rate"] == 1.0 and s["per_workflow"]["wb"]["slo_hit_rate"] == 0.0
    assert s["slo_hit_rate"] == pytest.approx(100 / 150, abs=1e-6)
    assert s["cost_usd"]["run"] == {"allocated_usd": 1.5, "busy_usd": 0.5}
    assert s["latency_ms"]["p50"] is not None and s["schedule_lag_ms"]["p99"] < 500


async def test_errors_are_counted_by_kind_never_dropped():
    n = {"i": 0}

    async def flaky(request: web.Request) -> web.Response:
        n["i"] += 1
        i = n["i"]
        if i % 4 == 0:
            return web.json_response({"error": {"code": "overloaded", "message": "busy"}}, status=503)
        if i % 4 == 1:
            return web.json_response({"id": "x", "workflow": "wa", "status": "rejected", "slo_met": False, "latency_ms": 0, "stages": []})
        if i % 4 == 2:
            return web.Response(text="not json", status=200)
        return web.json_response({"id": "x", "workflow": "wa", "status": "completed", "slo_met": True, "latency_ms": 0, "stages": []})

    async with TestServer(make_app(flaky)) as srv:
        run = await Driver(str(srv.make_url("")), wl({"workflow": "wa", "arrival": "constant", "rate_rps": 80}), seed=1, duration_s=1.0).run()
    s = live_report.summarize(run)
    assert s["sent"] == 80
    assert s["errors"] == {"bad_response": 20, "http_503_overloaded": 20, "rejected": 20}
    assert s["completed"] == 20 and s["slo_hit_rate"] == 0.25


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_one_second_stall_shows_one_second_latencies(client):
    """Open loop: requests scheduled during a 1 s stall wait for its end, and their latency (from the
    scheduled time) shows it; a closed-loop client would have sent one request and hidden the rest."""
    state: dict = {}

    async def stalling(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        now = loop.time()
        t0 = state.setdefault("t0", now)
        if t0 + 1.0 <= now < t0 + 2.0:  # the stall: nothing is answered until t0 + 2 s
            await asyncio.sleep(t0 + 2.0 - now)
        return web.json_response({"id": "x", "workflow": "wa", "status": "completed", "slo_met": True, "latency_ms": 0, "stages": []})

    async with TestServer(make_app(stalling)) as srv:
        run = await Driver(str(srv.make_url("")), wl({"workflow": "wa", "arrival": "constant", "rate_rps": 50}), seed=1,
                           duration_s=3.0, connections=8, client=client).run()
    recs = sorted(run.records, key=lambda r: r.sched_ns)
    assert len(recs) == 150 and all(r.kind == "completed" for r in recs)
    first = recs[0].sched_ns
    rel = [((r.sched_ns - first) / 1e9, r.latency_ns / 1e9) for r in recs]
    early = [lat for t, lat in rel if t < 0.9]
    at_start = [lat for t, lat in rel if 1.02 <= t < 1.15]
    during = [lat for t, lat in rel if 1.0 <= t < 2.0]
    late = [lat for t, lat in rel if t > 2.3]
    assert max(early) < 0.3
    assert at_start and min(at_start) > 0.75 and max(at_start) < 1.3   # about one second
    assert len(during) >= 45                                             # every scheduled request is there
    assert max(lat for _, lat in rel) == pytest.approx(1.0, abs=0.3)
    assert sorted(late)[len(late) // 2] < 0.3


async def test_unknown_workflow_and_unreachable_gateway_fail_before_load():
    hits = {"n": 0}

    async def count(request):
        hits["n"] += 1
        return web.json_response({})

    async with TestServer(make_app(count)) as srv:
        with pytest.raises(UserError, match="has no workflow 'nope'"):
            await Driver(str(srv.make_url("")), wl({"workflow": "nope", "rate_rps": 10}), seed=1, duration_s=1.0, source="--workflow").run()
    assert hits["n"] == 0
    with pytest.raises(UserError, match="no gateway answered"):
        await Driver("http://127.0.0.1:9", wl({"workflow": "wa", "rate_rps": 10}), seed=1, duration_s=1.0).run()


def test_report_files(tmp_path):
    from gpufaas.loadgen.driver import LiveRun, Record

    run = LiveRun("http://x", ["wa", "wb"], duration_s=2.0, wall_s=2.0, send_span_s=2.0)
    run.records = [Record(int(i * 1e8), i % 2, 1000, int(5e6 + i * 1e6), "completed" if i % 3 else "failed", i % 3 == 1, 1.0) for i in range(20)]
    s = live_report.summarize(run)
    assert s["sent"] == 20 and s["errors"] == {"failed": 7} and s["timeline"]["sent"] == [10, 10]
    live_report.write_csv(run, tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("sched_s,workflow,kind") and len(lines) == 21 and lines[1].split(",")[2] == "failed"
    live_report.write_png(run, s, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(s)


@pytest.mark.parametrize("args, msg", [
    (["--workflow", "wa", "--rate", "0", "--duration", "1"], "--rate: must be > 0"),
    (["--workflow", "wa", "--rate", "-5", "--duration", "1"], "--rate: must be > 0"),
    (["--workflow", "wa", "--rate", "5"], "--duration"),
    (["--trace", "FIXTURE_BAD", "--workflow", "wa", "--duration", "1"], "row 2, column '2': count 'x'"),
    (["--trace", "missing.csv", "--workflow", "wa", "--duration", "1"], "not found"),
    (["--workflow", "wa", "--rate", "5", "--duration", "1", "--gateway", "http://127.0.0.1:9"], "no gateway answered"),
])
def test_cli_bad_input_exit_2(tmp_path, capsys, args, msg):
    from gpufaas.gateway.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,x\n")
    args = [str(bad) if a == "FIXTURE_BAD" else a for a in args]
    with pytest.raises(SystemExit) as e:
        main(["loadgen"] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_cli_json_csv_plot_and_bench_against_a_server_process(tmp_path, capsys):
    """The happy path end to end: the benchmark's trivial server in its own process, `gpufaas loadgen
    --workload FILE --json --csv --plot`, then `gpufaas bench loadgen --json` (shape only, no timing asserts)."""
    from gpufaas.gateway.cli import main
    from gpufaas.loadgen import standin

    wfile = tmp_path / "wl.yaml"
    wfile.write_text("streams:\n  - {workflow: bench, arrival: gamma, rate_rps: 40, cv: 2}\n")
    proc, port = standin.start("gpufaas.loadgen.standin")
    url = f"http://127.0.0.1:{port}"
    try:
        main(["loadgen", "--gateway", url, "--workload", str(wfile), "--duration", "1", "--json",
              "--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png")])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    doc = json.loads(capsys.readouterr().out)
    assert doc["sent"] == doc["completed"] > 10 and doc["per_workflow"]["bench"]["slo_hit_rate"] == 1.0
    assert len((tmp_path / "r.csv").read_text().splitlines()) == doc["sent"] + 1
    assert (tmp_path / "r.png").stat().st_size > 1000
    main(["bench", "loadgen", "--rate", "100", "--duration", "1", "--json"])
    b = json.loads(capsys.readouterr().out)
    assert {"rps", "lag_ms_p99"} <= set(b) and b["sent"] == b["completed"] > 50
