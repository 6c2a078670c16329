"""One workload, two runs: live over HTTP against the real gateway (inproc backend, emulated GPUs, esg) and
simulated on the virtual clock. They must send the same invocations per workflow, and agree on SLO hit
rate and latency (p50, p99) within tolerances derived from what was measured in the same live run.

How far apart may they be? The live gateway runs the same controller and policy as the simulator, with
the profile-timed inproc backend on a `LoopClock`; given the same decisions, an invocation's server-side
latency differs from its simulated one only by:
- timer lateness: every wait of the platform (a batch's profiled run, an input transfer, a cold start,
  a batch-fill wait) is an event-loop timer, which fires late by the selector's rounding (epoll rounds a
  timeout up to the next whole ms) plus the wake-up and whatever other work or other processes held the
  core (this 2-core machine is shared). The driver's sends are timers on the same loop, so their
  schedule lag measures this lateness, in the same run, as a distribution (at least 1 ms is assumed:
  the rounding, which a run with few sends may not happen to show);
- the platform's own CPU time, which the simulator counts as zero: the policy's decisions (the gateway's
  decision_us p99, from /v1/usage after the run) on each dispatch;
- an invocation's path has at most two such waits per stage (one before it starts: input transfer, cold
  start or batch-fill wait; one for its run), so it moves by at most D_w = 2 x stages(w) x (timer
  lateness + decision time);
- the simulator reports latency quantiles from a log-bucketed histogram (1% relative error), and its
  quantile definition (which order statistics it picks) may differ from numpy's: the live quantile is
  taken as the interval of the usual definitions.
If every invocation moves by at most D, every latency quantile moves by at most D, and an invocation's SLO
outcome can flip only if its latency lies within D of its SLO: the hit-rate tolerance is the number of
such invocations (counted on the live run, with the largest lateness seen), not a fixed percentage.
For the p50 each timer is taken as late as the loop's p99 lateness (a median invocation whose timers are
all later than that would need several rare events at once); for the p99, as late as the largest
lateness seen. The client-side latency adds the HTTP path (client latency minus the gateway's own
latency, per request, measured in the same run; its largest value). The tolerances therefore widen when
the machine is busy, the honest consequence of measuring on a shared machine: on this 2-core machine,
lightly loaded, the p50 tolerance came to 15-28 ms, against a systematic live-minus-sim shift of 2-3 ms
at the p50 (mostly epoll's rounding: a 3.47 ms profiled run takes ~4.2 ms live).

NOTE: the comparison window leaves out the first seconds (`WARMUP_S`, the simulator's warm-up cut, the
same cut applied to the live records by scheduled time): while the first instances cold-start, requests
queue behind one another, and a queued request inherits the timer lateness of every batch ahead of it,
which the per-invocation bound above does not cover. Counts and SLO outcomes are compared over the whole
run (cold starts included: there the hit rate is neither 0 nor 1), invocation by invocation: outcomes there
are decided by seconds of cold start, far from the ms of lateness, except for the invocations near their
SLO, where "near" in the warm-up also takes the backlog's accumulated lateness (the largest live-minus-
simulated latency among the warm-up's invocations whose outcomes agree; 6 ms on a quiet run, 40-60 ms with
a busy loop in the other core), and an admission refusal (the gateway's workflow queue bound, applied on
the simulated side too) made on one side only in the warm-up, since the bound counts the invocations in
flight, which that lateness moves. Without those two, the test failed in 2 of 4 runs beside a busy core:
two live 429s at 3.28 s, and one invocation at 3.18 s 121-142 ms live against 80 ms simulated.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from gpufaas.loadgen.driver import COMPLETED, LiveRun, Record
from gpufaas.loadgen.fidelity import REFUSED_KIND_PREFIX
from gpufaas.platform.runtime import Invocation, InvocationStatus
from tests.helpers import TEST_ADMIN_KEY

# starts an HTTP gateway and drives it for DURATION_S of wall time: not in `make test-fast`
pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
POLICY = "esg"
DURATION_S = 10
WARMUP_S = 4.0
HIST_REL_ERR = 0.01  # gpufaas.platform.accounting.Histogram: base 1.02, reported at the bucket's geometric middle
EPOLL_GRANULARITY_MS = 1.0

SCENARIO = """
name: agree
duration_s: {duration}
warmup_s: {warmup}
drain_s: 10
seed: 5
cluster: {root}/loadgen/scenarios/clusters/a100x4.yaml
functions: [{fn}/preprocess, {fn}/resnet50, {fn}/distilbert, {fn}/bert-base, {fn}/aggregator]
workflows: [{fn}/workflows/image-classify.yaml, {fn}/workflows/text-pipeline.yaml]
workload:
  streams:
    - {{workflow: image-classify, arrival: poisson, rate_rps: 30}}
    - {{workflow: text-pipeline, arrival: gamma, rate_rps: 15, cv: 2}}
  traces:
    - {{format: timestamps, path: ts.csv, workflows: [image-classify, text-pipeline], time_scale: 2}}
"""


class Pair(NamedTuple):
    """One invocation's outcome on both sides: its live record, workflow and SLO; hit, latency (None unless
    completed) and whether admission refused it, live and simulated."""

    record: Record
    workflow: str
    slo_ms: float
    live_hit: bool
    live_ms: float | None
    live_refused: bool
    sim_hit: bool
    sim_ms: float | None
    sim_refused: bool


def quantile_range_ms(values_ms: list[float], q: float) -> tuple[float, float]:
    """The live q-quantile as an interval: the order statistics that any usual definition picks (nearest
    rank, as the simulator's histogram did; linear interpolation, numpy's default) lie inside it."""
    x = np.asarray(values_ms)
    got = [float(np.quantile(x, q, method=m)) for m in ("inverted_cdf", "lower", "higher", "linear")]
    return min(got), max(got)


async def live_run(tmp_path: Path, sc, source: Path) -> LiveRun:
    """The scenario's workload, replayed by the driver against an inproc gateway (emulated, `POLICY`)."""
    from aiohttp.test_utils import TestServer

    from gpufaas.gateway.app import create_app
    from gpufaas.gateway.client import Client, deploy_stack, load_stack
    from gpufaas.gateway.config import GatewayConfig
    from gpufaas.loadgen.driver import Driver

    cfg = GatewayConfig(backend="inproc", data_dir=tmp_path / "gw", port=0, policy=POLICY, admin_key=TEST_ADMIN_KEY)
    async with TestServer(create_app(cfg)) as srv:
        url = str(srv.make_url("")).rstrip("/")
        stack = tmp_path / "stack.yaml"
        stack.write_text("version: \"1\"\nfunctions: [" + ", ".join(f"{ROOT}/functions/{f}" for f in
                         ("preprocess", "resnet50", "distilbert", "bert-base", "aggregator")) +
                         f"]\nworkflows: [{ROOT}/functions/workflows/image-classify.yaml, {ROOT}/functions/workflows/text-pipeline.yaml]\n")
        await asyncio.get_running_loop().run_in_executor(None, lambda: deploy_stack(Client(url, api_key=TEST_ADMIN_KEY), load_stack(stack)))
        return await Driver(url, sc.workload, seed=sc.seed, duration_s=sc.duration_s, timeout_s=30, source=str(source), api_key=TEST_ADMIN_KEY).run()


async def test_live_and_sim_agree_on_counts_hit_rate_and_latency(tmp_path):
    from gpufaas.loadgen import live_report
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.simdriver import run_scenario

    # the fixture's workflow column names wf-a / wf-b: give the trace a copy naming the real workflows
    ts = (ROOT / "tests" / "fixtures" / "timestamps_small.csv").read_text().replace("wf-a", "image-classify").replace("wf-b", "text-pipeline")
    (tmp_path / "ts.csv").write_text(ts)
    (tmp_path / "sc.yaml").write_text(SCENARIO.format(duration=DURATION_S, warmup=WARMUP_S, root=ROOT, fn=ROOT / "functions"))
    sc = load_scenario(tmp_path / "sc.yaml")
    stages = {w.name: len(w.stages) for w in sc.workflows}
    wf_slo_ms = {w.name: w.slo_ms for w in sc.workflows}
    # per target (a record's `target`): its SLO, the stream's override or the workflow's
    slo_ms = [t.slo_ms or wf_slo_ms[t.workflow] for t in sc.workload.targets()]

    # the gateway's admission (the workflow queue bound) on the simulated side too, as `gpufaas fidelity` does;
    # each simulated invocation's outcome by (workflow, scheduled time), to pair with its live record
    sim_out: dict[tuple[str, int], list[tuple[bool, float | None, bool]]] = {}  # (hit, latency ms if completed, refused)

    def ended(inv: Invocation, refused: bool = False) -> None:
        done_ms = (inv.finish_ns - inv.arrival_ns) / 1e6 if inv.status == InvocationStatus.COMPLETED else None
        sim_out.setdefault((inv.workflow.name, inv.arrival_ns), []).append((inv.slo_met, done_ms, refused))

    sim_all = run_scenario(sc.model_copy(update={"warmup_s": 0.0}), POLICY, queue_bounds=True,  # counts: every arrival
                           on_end=ended, on_refused=lambda inv, _limit: ended(inv, True))
    sim = run_scenario(sc, POLICY, queue_bounds=True)                            # the comparison window
    run = await live_run(tmp_path, sc, tmp_path / "sc.yaml")
    live_all = live_report.summarize(run)

    # 1. the same invocations, each ended exactly once
    live_counts = {w: d["sent"] for w, d in live_all["per_workflow"].items()}
    assert live_counts == {w: d["invocations"] for w, d in sim_all["per_workflow"].items()}
    assert sum(live_counts.values()) == sim_all["invocations"] > 300
    assert live_all["sent"] == live_all["completed"] + live_all["error_count"]
    assert "unfinished" not in live_all["errors"]

    # 2. the tolerances, from this run's measurements (module docstring)
    lag_ms = np.asarray([r.lag_ns for r in run.records]) / 1e6
    decision_ms = run.usage_after["decision_us"]["p99"] / 1000 if run.usage_after else 0.0

    def dev_ms(w: str, hop_q: float) -> float:
        """D for workflow `w` with each timer as late as the loop's `hop_q` lateness quantile (at least 1 ms)."""
        return 2 * stages[w] * (max(EPOLL_GRANULARITY_MS, float(np.quantile(lag_ms, hop_q))) + decision_ms)

    noise = (f"(loop lateness p50/p99/max {np.quantile(lag_ms, 0.5):.2f}/{np.quantile(lag_ms, 0.99):.2f}/{lag_ms.max():.2f} ms, "
             f"decision p99 {decision_ms:.3f} ms)")
    names = run.workflows

    # 3. SLO outcomes, invocation by invocation, over the whole run (cold starts included: the regime where the
    # hit rate is neither 0 nor 1). An outcome may differ only where lateness can move it: a completion within
    # D of its SLO on either side; in the warm-up, within D plus the backlog's accumulated lateness (module
    # docstring), measured as the largest live-minus-simulated latency among the warm-up's invocations whose
    # outcomes agree; and in the warm-up an admission refusal on one side only (the queue bound counts the
    # invocations in flight, which that lateness moves)
    pairs: list[Pair] = []
    for r in sorted(run.records, key=lambda r: (r.sched_ns, r.target)):
        sim_hit, sim_ms, sim_refused = sim_out[(names[r.target], r.sched_ns)].pop(0)
        pairs.append(Pair(r, names[r.target], slo_ms[r.target], r.slo_met, r.server_ms if r.kind == COMPLETED else None,
                          r.kind.startswith(REFUSED_KIND_PREFIX), sim_hit, sim_ms, sim_refused))
    assert not any(sim_out.values()), "every simulated invocation pairs with one live record"
    warm_ns = WARMUP_S * 1e9
    backlog_ms = max([p.live_ms - p.sim_ms for p in pairs if p.record.sched_ns < warm_ns and p.live_hit == p.sim_hit
                      and p.live_ms is not None and p.sim_ms is not None] + [0.0])
    parted, flips_total = [], 0
    for p in pairs:
        warm_up = p.record.sched_ns < warm_ns
        band = dev_ms(p.workflow, 1.0) + (backlog_ms if warm_up else 0.0)
        movable = any(x is not None and abs(x - p.slo_ms) <= band for x in (p.live_ms, p.sim_ms)) or \
            (warm_up and p.live_refused != p.sim_refused)
        flips_total += movable
        if p.live_hit != p.sim_hit and not movable:
            parted.append(f"{p.workflow} at {p.record.sched_ns / 1e9:.3f} s: live {p.record.kind} {p.live_ms} ms, "
                          f"sim {p.sim_ms} ms refused {p.sim_refused}")
    assert not parted, f"{len(parted)} outcomes parted beyond D (+{backlog_ms:.1f} ms of backlog in the warm-up): {parted[:5]} {noise}"
    for w, d in sim_all["per_workflow"].items():  # the pairing read the simulated outcomes the report counts
        assert sum(p.sim_hit for p in pairs if p.workflow == w) == round(d["slo_hit_rate"] * d["invocations"])
    live_hits = sum(r.slo_met for r in run.records)
    assert abs(live_hits - round(sim_all["slo_hit_rate"] * sim_all["invocations"])) <= flips_total
    assert 0.2 < sim_all["slo_hit_rate"] < 0.9  # (the fixture) neither all hits nor all misses: the comparison bites

    # 4. latency quantiles over the completed invocations after the warm-up: server side within D, client side
    # within D + the HTTP path
    window = [r for r in run.records if r.sched_ns >= WARMUP_S * 1e9]
    assert len(window) == sim["invocations"]
    done = [r for r in window if r.kind == COMPLETED]
    # a rejection is esg's prediction that the invocation would miss: it too can change only near the SLO
    assert abs(len(done) - sim["completed"]) <= flips_total
    server = [r.server_ms for r in done]
    client = [r.latency_ns / 1e6 for r in done]
    http_ms = max(c - s for c, s in zip(client, server))
    for q, key, hop_q in ((0.5, "p50", 0.99), (0.99, "p99", 1.0)):
        want = sim["latency_ms"][key]
        slack = max(dev_ms(w, hop_q) for w in stages) + HIST_REL_ERR * want
        lo, hi = quantile_range_ms(server, q)
        assert want - slack <= hi and lo <= want + slack, f"server {key}: live {lo:.3f}..{hi:.3f} ms, sim {want} ms, +-{slack:.3f} {noise}"
        lo, hi = quantile_range_ms(client, q)
        assert want - slack <= hi and lo <= want + slack + http_ms, \
            f"client {key}: live {lo:.3f}..{hi:.3f} ms, sim {want} ms, -{slack:.3f}/+{slack + http_ms:.3f} (HTTP path up to {http_ms:.3f} ms) {noise}"
