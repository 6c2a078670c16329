"""`gpufaas fidelity`: one workload served live and simulated, compared per workflow.

The live side is the real gateway (`gateway.app.create_app`) in this process, on a real TCP port
(aiohttp `AppRunner`/`TCPSite` on 127.0.0.1), with the scenario's cluster, policy parameters, keep-alive
and profiles, the inproc or process backend, emulated execution; the scenario's functions and workflows
are deployed over HTTP and the live driver (`loadgen.driver.Driver`) replays the scenario's workload at
the given load and seed. The simulated side is `loadgen.simdriver.run_scenario` on the same scenario,
load and seed: the same arrival times, invocation for invocation.

What is compared, and why so (each a source of difference that is not the platform's, removed here):
- the same invocations: those *scheduled* after the scenario's warm-up (the simulator's cut; in the live
  run by each record's scheduled time, not by when it happened to be sent);
- SLO hit = invocations that finished by their deadline / invocations in the window, failures, rejections
  and timeouts counted as misses on both sides;
- latency = the gateway's own figure (`latency_ms` of each answer: arrival at the controller to the
  workflow's end), the quantity the simulator models; the client-side figure (from the scheduled send
  time, so it adds the driver's lateness and the HTTP path) is reported beside it;
- quantiles of the exact per-invocation latencies on both sides, one definition
  (`platform.stats.quantiles`), instead of the simulator's log-bucketed histogram (1 % relative error).

What remains is the platform's own: event-loop timer lateness (every profiled wait is a loop timer, which
epoll and libuv round up to the next whole millisecond, plus wake-up and whatever else holds the core), the
policy's CPU time, the backend's dispatch path (the process backend: a msgpack round trip over a Unix
socket per batch), and the decisions that these shifts change (batch fill, placement). `diagnostics`
reports the figures that explain it: the loop's lateness (the driver's send lag: timers on the same loop),
the gateway's decision time, the HTTP path, and an estimate of the shift each workflow's p50 gets from
timer rounding alone (`rounding_ms`: stages x 2 waits x the mean rounding of 0.5 ms).

Who calls it: `gpufaas fidelity` (gateway/cli/fidelity_cmd.py) and the tests. What it changes: a temporary
data folder for the gateway (removed afterwards) and the instances it starts (stopped at the end).
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from gpufaas.loadgen.driver import COMPLETED, LiveRun
from gpufaas.loadgen.scenario import Scenario
from gpufaas.platform.clock import NS_PER_MS, NS_PER_S
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import Invocation, InvocationStatus
from gpufaas.platform.stats import quantiles

# The targets for a faithful simulator, per workflow
MAX_HIT_DIFF = 0.03   # |hit_sim - hit_live|
MAX_P50_REL = 0.15    # |p50_live - p50_sim| / p50_sim
MAX_P99_REL = 0.30    # |p99_live - p99_sim| / p99_sim
MEAN_ROUNDING_MS = 0.5  # a timer rounded up to the next whole ms is late by 0.5 ms on average
BACKENDS = ("inproc", "process")


@dataclass(frozen=True)
class Sample:
    """One invocation of the comparison window: its workflow, whether it met its SLO, and its latency (ms;
    None when it did not complete)."""

    workflow: str
    hit: bool
    latency_ms: float | None


def side_stats(samples: Iterable[Sample]) -> dict[str, dict]:
    """Per workflow (sorted): invocations, SLO hit rate, p50 and p99 of the completed ones' latency (None when
    none completed). Pure; both sides go through it, so they share one quantile definition."""
    by: dict[str, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.workflow, []).append(s)
    out = {}
    for w in sorted(by):
        ss = by[w]
        lat = np.fromiter((s.latency_ms for s in ss if s.latency_ms is not None), dtype=float)
        p50, p99 = (round(float(x), 3) for x in quantiles(lat, (0.5, 0.99))) if len(lat) else (None, None)
        out[w] = {"invocations": len(ss), "slo_hit_rate": round(sum(s.hit for s in ss) / len(ss), 6), "p50_ms": p50, "p99_ms": p99}
    return out


def compare(sim: dict[str, dict], live: dict[str, dict]) -> dict[str, dict]:
    """`{WF: {"sim", "live", "diff", "within_targets"}}` for every workflow on either side: `diff` is live
    minus sim (hit rate; p50 and p99 in ms and relative to sim), `within_targets` the issue's targets
    (hit within 0.03, p50 within 15 %, p99 within 30 %). Pure."""
    out = {}
    for w in sorted(set(sim) | set(live)):
        s, lv = sim.get(w), live.get(w)
        diff: dict[str, float | None] = {}
        ok = False
        if s is not None and lv is not None:
            hit_diff = round(lv["slo_hit_rate"] - s["slo_hit_rate"], 6)
            diff["slo_hit_rate"] = hit_diff
            ok = abs(hit_diff) <= MAX_HIT_DIFF
            for key, limit in (("p50_ms", MAX_P50_REL), ("p99_ms", MAX_P99_REL)):
                a, b = s[key], lv[key]
                if a is None or b is None:
                    diff[key] = diff[key.replace("_ms", "_rel")] = None
                    ok = ok and a is None and b is None
                    continue
                diff[key] = round(b - a, 3)
                rel = (b - a) / a if a > 0 else (0.0 if b == a else float("inf"))
                diff[key.replace("_ms", "_rel")] = round(rel, 4)
                ok = ok and abs(rel) <= limit
        out[w] = {"sim": s, "live": lv, "diff": diff, "within_targets": ok}
    return out


# ---------------------------------------------------------------- the two sides


def run_sim(sc: Scenario, policy: str, load: float, seed: int) -> tuple[dict, list[Sample]]:
    """The simulator's report and the samples of its comparison window (invocations that arrived after the
    warm-up), from each invocation as it ended."""
    from gpufaas.loadgen.simdriver import run_scenario

    warmup_end_ns = int(sc.effective_warmup_s() * NS_PER_S)
    samples: list[Sample] = []

    def ended(inv: Invocation) -> None:
        if inv.arrival_ns >= warmup_end_ns:
            done = inv.status == InvocationStatus.COMPLETED
            samples.append(Sample(inv.workflow.name, done and inv.finish_ns <= inv.deadline_ns,
                                  (inv.finish_ns - inv.arrival_ns) / NS_PER_MS if done else None))

    report = run_scenario(sc, policy, seed=seed, load=load, on_end=ended)
    return report, samples


def live_samples(run: LiveRun, warmup_s: float, client_side: bool = False) -> list[Sample]:
    """The live run's comparison window: records scheduled after the warm-up. Latency: the gateway's
    (`server_ms`), or with `client_side` the client's from the scheduled send time."""
    out = []
    for r in run.records:
        if r.sched_ns < warmup_s * NS_PER_S:
            continue
        lat = None
        if r.kind == COMPLETED:
            lat = r.latency_ns / NS_PER_MS if client_side else r.server_ms
        out.append(Sample(run.workflows[r.target], bool(r.slo_met), lat))
    return out


def stack_file(scenario_path: Path, folder: Path) -> Path:
    """A stack manifest in `folder` deploying the scenario's functions and workflows as the scenario file
    names them (bundle folders and YAML files by absolute path; inline specs as they are)."""
    import yaml

    from gpufaas.loadgen.scenario import entry_path
    from gpufaas.platform.specs import read_yaml

    data = read_yaml(scenario_path)
    doc: dict = {"version": "1"}
    for key in ("functions", "workflows"):
        doc[key] = [str(entry_path(e, scenario_path.parent, f"{scenario_path}: {key}")) if isinstance(e, str) else e
                    for e in data.get(key, [])]
    p = folder / "stack.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


async def run_live(sc: Scenario, scenario_path: Path, policy: str, load: float, seed: int, backend: str,
                   folder: Path, timeout_s: float = 30.0) -> LiveRun:
    """Serve the scenario on a gateway in this process (real port, emulated execution, `backend`), deploy
    its stack over HTTP, replay its workload with the driver and return the run. The gateway is stopped
    (its instances with it) before this returns."""
    import yaml
    from aiohttp import web

    from gpufaas.gateway.app import create_app
    from gpufaas.gateway.client import Client, deploy_stack, load_stack
    from gpufaas.gateway.config import GatewayConfig
    from gpufaas.loadgen.driver import Driver

    cluster = folder / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(sc.cluster.model_dump(mode="json")))
    key = secrets.token_hex(16)
    cfg = GatewayConfig(backend=backend, execute="emulated", data_dir=folder / "gw", port=0, policy=policy,
                        policy_params=sc.params.get(policy, {}), cluster_file=cluster, keep_alive_s=sc.keep_alive_s,
                        invocation_timeout_s=timeout_s, admin_key=key)
    profiles = (Path(sc.profiles),) if sc.profiles else ()
    runner = web.AppRunner(create_app(cfg, profiles_dirs=profiles), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}"
        items = load_stack(stack_file(scenario_path, folder))
        await asyncio.get_running_loop().run_in_executor(None, lambda: deploy_stack(Client(url, api_key=key), items))
        driver = Driver(url, sc.workload, seed=seed, duration_s=sc.duration_s, load=load, timeout_s=timeout_s,
                        source=str(scenario_path), api_key=key)
        return await driver.run()
    finally:
        await runner.cleanup()


def _pct(xs: list[float]) -> dict | None:
    if not xs:
        return None
    p50, p99 = quantiles(np.asarray(xs, dtype=float), (0.5, 0.99))
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(max(xs)), 3)}


def diagnostics(sc: Scenario, run: LiveRun, warmup_s: float) -> dict:
    """What explains live minus sim, measured in the live run: the event loop's timer lateness (the
    driver's send lag: its sends are timers on the gateway's loop), the gateway's decision time per pass,
    the HTTP path (client minus gateway latency per completed invocation), and per workflow the p50 shift
    that timer rounding alone predicts (stages x 2 waits x 0.5 ms)."""
    window = [r for r in run.records if r.sched_ns >= warmup_s * NS_PER_S]
    http = [r.latency_ns / NS_PER_MS - r.server_ms for r in window if r.kind == COMPLETED and r.server_ms is not None]
    stages = {w.name: len(w.stages) for w in sc.workflows}
    return {"loop_lateness_ms": _pct([r.lag_ns / NS_PER_MS for r in window]),
            "decision_us": (run.usage_after or {}).get("decision_us"),
            "http_path_ms": _pct(http),
            "rounding_ms": {w: 2 * n * MEAN_ROUNDING_MS for w, n in sorted(stages.items())},
            "live_errors": {k: sum(1 for r in window if r.kind == k) for k in sorted({r.kind for r in window} - {COMPLETED})}}


def check_scenario(sc: Scenario) -> None:
    """UserError (one line) for a scenario the live side cannot replay as the simulator runs it: one with
    tenants (the live gateway would need a tenant, a key and per-tenant copies for each)."""
    from gpufaas.gateway.tenants import DEFAULT_TENANT

    if sc.tenants or any(t.tenant != DEFAULT_TENANT for t in sc.workload.targets()):
        raise UserError(f"--scenario: {sc.name} has tenants; fidelity replays single-tenant scenarios (chain, video, mixed)")


def run_fidelity(scenario_path: str | Path, *, duration_s: float, policy: str = "esg", load: float = 1.0,
                 seed: int | None = None, backend: str = "process") -> dict:
    """Run the scenario live and simulated (module docstring) and return the JSON of `gpufaas fidelity
    --json`: `per_workflow` (`compare`), the client-side live figures, `diagnostics`, and `meta`."""
    from gpufaas.loadgen.results import effective_params, file_sha256, run_meta
    from gpufaas.loadgen.scenario import load_scenario

    if backend not in BACKENDS:
        raise UserError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    path = Path(scenario_path)
    sc = load_scenario(path)
    check_scenario(sc)
    sc = sc.model_copy(update={"duration_s": duration_s})
    warmup_s = sc.effective_warmup_s()  # SpecError when the scenario's warm-up is not shorter than --duration
    seed = sc.seed if seed is None else seed
    report, sim_samples = run_sim(sc, policy, load, seed)
    with tempfile.TemporaryDirectory(prefix="gpufaas-fidelity-") as tmp:
        run = asyncio.run(run_live(sc, path, policy, load, seed, backend, Path(tmp)))
    per = compare(side_stats(sim_samples), side_stats(live_samples(run, warmup_s)))
    client = side_stats(live_samples(run, warmup_s, client_side=True))
    for w, d in per.items():
        if d["live"] is not None and w in client:
            d["live"]["client_p50_ms"] = client[w]["p50_ms"]
            d["live"]["client_p99_ms"] = client[w]["p99_ms"]
    return {"scenario": sc.name, "policy": policy, "backend": backend, "load": load, "seed": seed,
            "duration_s": duration_s, "warmup_s": warmup_s, "per_workflow": per,
            "within_targets": all(d["within_targets"] for d in per.values()),
            "diagnostics": diagnostics(sc, run, warmup_s),
            "sim_decision_us": report["decision_us"],
            "meta": run_meta(file_sha256(path), seed, effective_params(sc, [policy]))}
