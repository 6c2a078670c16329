"""`gpufaas bench soak`: a real gateway under a long or heavy load, watched over time.

What it runs: `gpufaas up` as a child process (the process backend by default: real worker processes,
emulated GPUs, `--cluster` to change them), `functions/stack.yaml` deployed through the CLI's client, one
workflow warmed up. Then three phases of Poisson arrivals to that workflow, sent over real HTTP by the
load generator's `Driver` as one open-loop run:

    idle      `--idle` s at a tenth of capacity: the latency the gateway shows when it has room
    load      `--duration` s at `--load` x capacity (0.8: a soak; 10: an overload)
    recovery  `--recovery` s at the idle rate again: how soon latency is back to its idle figure

Capacity is measured first, unless `--capacity-rps` gives it: closed-loop load on keep-alive connections,
doubling the connections (2, 4, 8, ...) for `--calibrate` s each until the rate of results within their SLO
stops rising by 10 % or the gateway starts answering 429; capacity is the best such rate seen (goodput:
past it, more connections buy bigger batches and later answers, not more useful work). It is observed, not
computed from the profiles, so it includes the gateway's own CPU cost on this machine.

Every `--sample` s it reads the gateway's RSS and open file descriptors from /proc, the workers' total RSS
(every process below the gateway) and the gateway's own event-loop lag (`loop_lag_ms`
from /healthz: the worst wake-up lateness of its loop over the last 1-2 s, measured inside the gateway,
so the load client's own delays do not count).

Answers are sorted as the hardening issue asks: a `result` (completed), a `429` (the gateway's admission
answer; it always carries Retry-After, see `http_io.error_middleware`), a `shed` (answered 200 with status
rejected, timed_out or failed and a reason), a `5xx`, and anything else (`other`: client timeouts,
connection errors, other 4xx). Figures: per sample window and for the whole run, plus

- `rss_growth_mb`: the gateway's peak RSS during load and recovery minus its RSS when the load began;
- `rss_growth_after_warmup_pct` / `fds_growth_after_warmup_pct`: last sample against the sample at the end of
  the load phase's warm-up, the first sixth of it and at most 5 minutes (a 30-minute soak: after 5 min);
- `recovery_s`: from the end of the load until latency is back to its idle figure: the first window as long
  as the idle phase, sliding over the recovery phase in 1-s steps (by send time), whose p99 is within a
  97.5 % upper confidence bound on the idle phase's p99 (`idle_p99_ms_bound`); answers that are not results
  count as infinitely late. None when no window gets there (give `--recovery` at least `--idle` + 10 s).

A benchmark: it prints figures and never passes or fails. Who calls it: `gpufaas bench soak`, `bench all`,
people. It changes nothing outside a temporary folder.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from gpufaas.platform.clock import NS_PER_S, perf_ns
from gpufaas.platform.stats import quantile, quantile_upper_bound

if TYPE_CHECKING:
    from gpufaas.loadgen.driver import Record

WORKFLOW = "image-classify"
IDLE_FRACTION = 0.1  # the idle and recovery phases' rate, as a fraction of capacity
CALIBRATE_GAIN = 1.1  # the calibration stops when doubling the connections raised the goodput by less
MAX_CALIBRATE_CONNECTIONS = 1024
WARMUP_MAX_S = 300.0  # RSS and fd growth are counted after the first sixth of the load, at most this long


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (its workers: sandboxed ones run in sessions of their own, so the
    process group would miss them), from the parent pids in /proc/*/stat."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def proc_sample(pid: int) -> dict:
    """The gateway's RSS (MB) and open fds, and its descendants (the workers): count and total RSS. Linux
    /proc; zeros where it cannot be read."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    workers = _descendants(pid)
    return {"rss_mb": round(_rss_mb(pid), 1), "fds": fds, "workers": len(workers),
            "workers_rss_mb": round(sum(_rss_mb(w) for w in workers), 1)}


def classify(kind: str) -> str:
    """A load-generator record's kind as one of result | 429 | shed | 5xx | other (see the module docstring)."""
    if kind == "completed":
        return "result"
    if kind in ("rejected", "timed_out", "failed"):
        return "shed"
    if kind.startswith("http_429"):
        return "429"
    if kind.startswith("http_5"):
        return "5xx"
    return "other"


async def _closed(host: str, port: int, raw: bytes, connections: int, secs: float) -> tuple[int, int, float]:
    """Closed loop: `connections` senders, one request in flight each, for `secs`. (results within their SLO,
    429s, seconds)."""
    from gpufaas.loadgen.driver import classify_answer
    from gpufaas.loadgen.httpfast import FastPool

    loop = asyncio.get_running_loop()
    pool = FastPool(host, port, connections)
    t0 = loop.time()
    stop = t0 + secs
    counts: Counter[str] = Counter()

    async def sender() -> None:
        while loop.time() < stop:
            status, body = await pool.request(raw)
            kind, slo_met, _ = classify_answer(status, body)
            counts["good" if slo_met else classify(kind)] += 1

    try:
        await asyncio.gather(*(sender() for _ in range(connections)))
    finally:
        pool.close()
    return counts["good"], counts["429"], loop.time() - t0


async def calibrate(host: str, port: int, raw: bytes, step_s: float, on_step: Callable[[int, float], None]) -> dict:
    """Capacity by a closed-loop ramp (see the module docstring): {"capacity_rps", "steps": [...]}."""
    best = 0.0
    steps = []
    c = 2
    while c <= MAX_CALIBRATE_CONNECTIONS:
        done, refused, secs = await _closed(host, port, raw, c, step_s)
        rate = done / secs
        steps.append({"connections": c, "good_rps": round(rate, 1), "refused": refused})
        on_step(c, rate)
        gained = rate > best * CALIBRATE_GAIN
        best = max(best, rate)
        if not gained or refused:
            break
        c *= 2
    return {"capacity_rps": round(best, 1), "steps": steps}


def _windows(records: list[Record], phases: list[tuple[str, float, float]], bin_s: float) -> list[dict]:
    """Per `bin_s` window of send time: phase, offered rps, answers by class, p99 of completed (ms)."""
    end_s = phases[-1][2]
    n = max(1, int(end_s / bin_s + 0.999))
    kinds: list[Counter[str]] = [Counter() for _ in range(n)]
    lat: list[list[float]] = [[] for _ in range(n)]
    for r in records:
        b = min(n - 1, int(r.sched_ns / NS_PER_S / bin_s))
        cls = classify(r.kind)
        kinds[b][cls] += 1
        if cls == "result":
            lat[b].append(r.latency_ns / 1e6)
    out = []
    for b in range(n):
        t = b * bin_s
        phase = next((name for name, a, z in phases if a <= t < z), phases[-1][0])
        out.append({"t_s": round(t, 3), "phase": phase, "offered_rps": round(sum(kinds[b].values()) / bin_s, 1),
                    **{k: kinds[b][k] for k in ("result", "429", "shed", "5xx", "other")},
                    "p99_ms": round(quantile(lat[b], 0.99), 2) if lat[b] else None})
    return out


def recovery_s(records: list[Record], idle_s: float, load_end_s: float, end_s: float) -> tuple[float | None, float | None]:
    """(seconds from the load's end until latency is back to its idle figure, that figure): see the module
    docstring. The idle figure is a 97.5 % upper confidence bound on the idle phase's p99
    (`stats.quantile_upper_bound`); a window of the idle phase's length slides over the recovery phase in 1-s
    steps, and the first whose p99 is within that bound ends the recovery. An answer that is not a result
    counts as an infinite latency there. None when no window fits or none is within the bound."""
    def lat(r: Record) -> float:
        return r.latency_ns / 1e6 if classify(r.kind) == "result" else math.inf

    idle = [lat(r) for r in records if r.sched_ns < idle_s * NS_PER_S]
    if not idle or math.isinf(bound := quantile_upper_bound(idle, 0.99)):
        return None, None
    rec = sorted((r.sched_ns / NS_PER_S, lat(r)) for r in records if r.sched_ns >= load_end_s * NS_PER_S)
    t = load_end_s
    while t + idle_s <= end_s + 1e-9:
        window = [x for s_, x in rec if t <= s_ < t + idle_s]
        if window and quantile(window, 0.99) <= bound:
            return round(t - load_end_s, 3), round(bound, 2)
        t += 1.0
    return None, round(bound, 2)


async def soak(*, duration_s: float, load: float, idle_s: float, recovery_s_: float, sample_s: float, calibrate_s: float,
               capacity_rps: float | None, backend: str, cluster: str | None, policy: str | None, seed: int, connections: int,
               timeout_s: float, log: Callable[[str], None]) -> dict:
    """Run the benchmark (see the module docstring) and return its figures."""
    from gpufaas.gateway.client import Client, deploy_stack, load_stack
    from gpufaas.gateway.config import ADMIN_KEY_FILE
    from gpufaas.gateway.demo import STACK, free_port, start_gateway, stop_gateway, wait_healthy
    from gpufaas.loadgen.driver import Driver
    from gpufaas.loadgen.httpfast import FastPool, encode_post
    from gpufaas.loadgen.workload import StreamSpec, WorkloadSpec

    loop = asyncio.get_running_loop()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="gpufaas-soak-"))
    extra = (["--cluster", cluster] if cluster else []) + (["--policy", policy] if policy else [])
    extra += ["--timeout-s", str(timeout_s)]
    proc = start_gateway(port, tmp / "data", backend, tmp / "gateway.log", extra)
    log(f"gateway {url} (backend {backend}; log {tmp / 'gateway.log'})")
    try:
        await wait_healthy(url, proc)
        key = (tmp / "data" / ADMIN_KEY_FILE).read_text().strip()
        client = Client(url, api_key=key)
        await loop.run_in_executor(None, deploy_stack, client, load_stack(STACK))
        await asyncio.gather(*(loop.run_in_executor(None, functools.partial(client.invoke, WORKFLOW, None, 120_000.0))
                               for _ in range(4)))  # cold starts with a loose SLO: not what this measures
        raw = encode_post("127.0.0.1", port, f"/v1/workflows/{WORKFLOW}/invoke", b"{}", {"Authorization": f"Bearer {key}"})
        if capacity_rps is None:
            cal = await calibrate("127.0.0.1", port, raw, calibrate_s,
                                  lambda c, r: log(f"calibrating: {c} connections -> {r:.0f} results/s within the SLO"))
            capacity_rps = cal["capacity_rps"]
        else:
            cal = {"capacity_rps": capacity_rps, "steps": [], "given": True}
        if capacity_rps <= 0:
            raise click.ClickException("bench soak: no result met its SLO during calibration; see the gateway log " + str(tmp / "gateway.log"))
        idle_rps = IDLE_FRACTION * capacity_rps
        load_end_s = idle_s + duration_s
        phases = [("idle", 0.0, idle_s), ("load", idle_s, load_end_s), ("recovery", load_end_s, load_end_s + recovery_s_)]
        workload = WorkloadSpec(streams=[
            StreamSpec(workflow=WORKFLOW, arrival="poisson", rate_rps=idle_rps, start_s=0.0, duration_s=idle_s),
            StreamSpec(workflow=WORKFLOW, arrival="poisson", rate_rps=load * capacity_rps, start_s=idle_s, duration_s=duration_s),
            StreamSpec(workflow=WORKFLOW, arrival="poisson", rate_rps=idle_rps, start_s=load_end_s, duration_s=recovery_s_)])
        log(f"capacity {capacity_rps:.0f}/s; idle {idle_rps:.0f}/s for {idle_s:g} s, load {load:g}x = {load * capacity_rps:.0f}/s "
            f"for {duration_s:g} s, recovery {recovery_s_:g} s")
        samples: list[dict] = []
        probe = FastPool("127.0.0.1", port, 1)
        health = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

        async def sampler(t0_ns: int) -> None:
            while True:
                status, body = await probe.request(health)
                lag = json.loads(body).get("loop_lag_ms") if status == 200 else None
                t = (perf_ns() - t0_ns) / NS_PER_S
                # NOTE: in a thread: the /proc walk takes milliseconds, which on this loop would delay the sends
                samples.append({"t_s": round(t, 1), **await asyncio.to_thread(proc_sample, proc.pid), "loop_lag_ms": lag})
                s = samples[-1]
                log(f"t={t:6.1f} s  rss {s['rss_mb']:.0f} MB  fds {s['fds']}  workers {s['workers']} ({s['workers_rss_mb']:.0f} MB)  "
                    f"loop lag {lag} ms")
                await asyncio.sleep(sample_s)

        driver = Driver(url, workload, seed=seed, duration_s=load_end_s + recovery_s_, connections=connections,
                        timeout_s=timeout_s, api_key=key, source="bench soak")
        t0_ns = perf_ns()
        task = loop.create_task(sampler(t0_ns))
        try:
            run = await driver.run()
        finally:
            task.cancel()
            probe.close()
    finally:
        rc, clean = stop_gateway(proc)
    windows = _windows(run.records, phases, 1.0)
    recovered_s, idle_bound = recovery_s(run.records, idle_s, load_end_s, load_end_s + recovery_s_)
    total = Counter(classify(r.kind) for r in run.records)
    during = [s for s in samples if idle_s <= s["t_s"]]
    before = min((s for s in samples if s["t_s"] <= idle_s), key=lambda s: idle_s - s["t_s"], default=samples[0] if samples else None)
    warm_at = idle_s + min(WARMUP_MAX_S, duration_s / 6)
    warm = next((s for s in samples if s["t_s"] >= warm_at), None)
    last = samples[-1] if samples else None

    def pct(a: float, b: float) -> float | None:
        return round(100.0 * (b - a) / a, 1) if a else None

    lags = [s["loop_lag_ms"] for s in during if s["loop_lag_ms"] is not None]
    load_windows = [w for w in windows if w["phase"] == "load"]
    goodput = sum(w["result"] for w in load_windows) / duration_s
    return {
        "workflow": WORKFLOW, "backend": backend, "load": load, "duration_s": duration_s, "capacity_rps": capacity_rps,
        "calibration": cal, "sent": len(run.records), "answers": {k: total[k] for k in ("result", "429", "shed", "5xx", "other")},
        "other_kinds": dict(Counter(r.kind for r in run.records if classify(r.kind) == "other")),
        "unfinished": run.unfinished, "load_goodput_rps": round(goodput, 1),
        "offered_load_rps": round(sum(w["offered_rps"] for w in load_windows) / max(1, len(load_windows)), 1),
        "rss_mb_before_load": before["rss_mb"] if before else None,
        "rss_growth_mb": round(max(s["rss_mb"] for s in during) - before["rss_mb"], 1) if during and before else None,
        "rss_growth_after_warmup_pct": pct(warm["rss_mb"], last["rss_mb"]) if warm and last else None,
        "fds_growth_after_warmup_pct": pct(warm["fds"], last["fds"]) if warm and last else None,
        "loop_lag_ms_max": max(lags) if lags else None,
        "idle_p99_ms_bound": idle_bound, "recovery_s": recovered_s, "gateway_exit": rc, "gateway_clean_exit": clean,
        "samples": samples, "windows": windows}


@click.command("soak")
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=60.0, show_default=True, help="seconds of the load phase")
@click.option("--load", type=click.FloatRange(min=0, min_open=True), default=0.8, show_default=True,
              help="the load phase's rate as a multiple of capacity (0.8: a soak; 10: an overload)")
@click.option("--idle", "idle_s", type=click.FloatRange(min=1), default=10.0, show_default=True, help="seconds at a tenth of capacity before the load")
@click.option("--recovery", "recovery_s_", type=click.FloatRange(min=1), default=25.0, show_default=True,
              help="seconds at a tenth of capacity after the load (at least --idle: recovery is judged over windows that long)")
@click.option("--sample", "sample_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="seconds between RSS/fd/lag samples")
@click.option("--calibrate", "calibrate_s", type=click.FloatRange(min=0.5), default=3.0, show_default=True, help="seconds per calibration step")
@click.option("--capacity-rps", type=click.FloatRange(min=0, min_open=True), default=None, help="skip the calibration: capacity in results within the SLO per second")
@click.option("--backend", type=click.Choice(["process", "inproc"]), default="process", show_default=True, help="the gateway's backend")
@click.option("--cluster", type=click.Path(exists=True, dir_okay=False), default=None, help="cluster YAML for the gateway (default: its own)")
@click.option("--policy", default=None, help="the gateway's policy (default: its own)")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--connections", type=click.IntRange(1, 4096), default=512, show_default=True, help="the load client's connection limit")
@click.option("--timeout-s", type=click.FloatRange(min=1), default=30.0, show_default=True, help="the gateway's per-invocation timeout and the client's")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (samples and windows included)")
def COMMAND(duration_s: float, load: float, idle_s: float, recovery_s_: float, sample_s: float, calibrate_s: float,  # noqa: N802
            capacity_rps: float | None, backend: str, cluster: str | None, policy: str | None, seed: int, connections: int,
            timeout_s: float, as_json: bool) -> None:
    """A gateway under load over time: answers by kind, RSS, fds, loop lag, recovery (Linux)."""
    import uvloop

    from gpufaas.gateway.cli.bench import emit

    if not Path("/proc/self/status").exists():
        raise click.UsageError("bench soak reads /proc: it runs on Linux only")

    def log(msg: str) -> None:
        if not as_json:
            click.echo(f"soak: {msg}", err=True)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        out = r.run(soak(duration_s=duration_s, load=load, idle_s=idle_s, recovery_s_=recovery_s_, sample_s=sample_s,
                         calibrate_s=calibrate_s, capacity_rps=capacity_rps, backend=backend, cluster=cluster, policy=policy,
                         seed=seed, connections=connections, timeout_s=timeout_s, log=log))
    if as_json:
        emit("soak", out, True)
        return
    a = out["answers"]
    click.echo(f"soak: {out['sent']} sent to {out['workflow']} ({out['backend']} backend), load {out['load']:g}x of "
               f"{out['capacity_rps']:.0f}/s for {out['duration_s']:g} s (offered {out['offered_load_rps']:.0f}/s): "
               f"{a['result']} results, {a['429']} 429, {a['shed']} shed, {a['5xx']} 5xx, {a['other']} other "
               f"{out['other_kinds'] or ''}; goodput {out['load_goodput_rps']:.0f}/s")
    click.echo(f"soak: gateway RSS {out['rss_mb_before_load']} MB at the load's start, growth {out['rss_growth_mb']} MB (peak), "
               f"{out['rss_growth_after_warmup_pct']} % after warm-up; fds {out['fds_growth_after_warmup_pct']} % after warm-up; "
               f"loop lag max {out['loop_lag_ms_max']} ms")
    click.echo(f"soak: idle p99 {out['idle_p99_ms_bound']} ms (97.5 % upper bound); back within it {out['recovery_s']} s after the load "
               f"stopped (windows of {idle_s:g} s)")
