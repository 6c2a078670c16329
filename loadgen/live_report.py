"""The live run's report: summary dict (JSON), a rich table, a per-request CSV and a PNG.

Definitions (DESIGN section 2): SLO hit rate = requests whose response said `slo_met` / requests sent;
every error (failed, rejected, timed out, HTTP errors, connection errors, unfinished) counts as a miss.
Latency percentiles are over completed requests, measured from each request's scheduled send time.
Cost is the difference of the gateway's `/v1/usage` cost before and after the run (it includes whatever
else the gateway served meanwhile).

Who calls it: `gpufaas loadgen`, `gpufaas bench loadgen`, the tests. It writes only the files it is given.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from gpufaas.loadgen.driver import COMPLETED, LiveRun
from gpufaas.platform.clock import NS_PER_MS, NS_PER_S
from gpufaas.platform.errors import UserError
from gpufaas.platform.stats import quantiles


def _pct(values_ms: np.ndarray) -> dict:
    if len(values_ms) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = quantiles(values_ms, (0.5, 0.95, 0.99))
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3), "max": round(float(values_ms.max()), 3)}


def _cost(before: dict | None, after: dict | None) -> dict | None:
    if not after or "cost" not in after:
        return None
    out = {"total": after["cost"]}
    if before and "cost" in before:
        out["run"] = {k: round(after["cost"][k] - before["cost"].get(k, 0.0), 6)
                      for k in after["cost"] if isinstance(after["cost"][k], (int, float))}
    return out


def summarize(run: LiveRun, bin_s: float = 1.0) -> dict:
    """The report as one JSON-able dict (what `gpufaas loadgen --json` prints)."""
    recs = run.records
    n = len(recs)
    kinds = Counter(r.kind for r in recs)
    lat_ms = np.fromiter((r.latency_ns / NS_PER_MS for r in recs if r.kind == COMPLETED), dtype=float)
    lag_ms = np.fromiter((r.lag_ns / NS_PER_MS for r in recs if r.kind != "unfinished"), dtype=float)
    hits = sum(1 for r in recs if r.slo_met)
    per: dict[str, dict] = {}
    for w in dict.fromkeys(run.workflows):
        idx = {i for i, x in enumerate(run.workflows) if x == w}
        rs = [r for r in recs if r.target in idx]
        wl = np.fromiter((r.latency_ns / NS_PER_MS for r in rs if r.kind == COMPLETED), dtype=float)
        per[w] = {"sent": len(rs), "completed": sum(1 for r in rs if r.kind == COMPLETED),
                  "slo_hit_rate": round(sum(1 for r in rs if r.slo_met) / len(rs), 6) if rs else 0.0,
                  "latency_ms": _pct(wl)}
    errors = {k: v for k, v in sorted(kinds.items()) if k != COMPLETED}
    span = run.send_span_s or run.duration_s
    return {
        "gateway": run.gateway,
        "duration_s": run.duration_s,
        "sent": n,
        "completed": kinds.get(COMPLETED, 0),
        "errors": errors,
        "error_count": sum(errors.values()),
        "offered_rps": round(n / run.duration_s, 3) if run.duration_s else 0.0,
        "achieved_rps": round(n / span, 3) if span else 0.0,
        "completed_rps": round(kinds.get(COMPLETED, 0) / run.wall_s, 3) if run.wall_s else 0.0,
        "schedule_lag_ms": _pct(lag_ms),
        "slo_hit_rate": round(hits / n, 6) if n else 0.0,
        "latency_ms": _pct(lat_ms),
        "per_workflow": per,
        "cost_usd": _cost(run.usage_before, run.usage_after),
        "timeline": timeline(run, bin_s),
    }


def timeline(run: LiveRun, bin_s: float = 1.0) -> dict:
    """Per bin of scheduled time: requests sent and SLO hit rate (the PNG's lower panel)."""
    nbins = max(1, int(np.ceil(run.duration_s / bin_s)))
    sent = np.zeros(nbins, dtype=np.int64)
    hit = np.zeros(nbins, dtype=np.int64)
    for r in run.records:
        b = min(nbins - 1, int(r.sched_ns / NS_PER_S / bin_s))
        sent[b] += 1
        hit[b] += r.slo_met
    rate = np.where(sent > 0, hit / np.maximum(sent, 1), np.nan)
    return {"bin_s": bin_s, "sent": sent.tolist(), "slo_hit_rate": [None if np.isnan(x) else round(float(x), 4) for x in rate]}


def write_csv(run: LiveRun, path: str | Path) -> None:
    """One row per request, in scheduled order: sched_s, workflow, kind, slo_met, latency_ms, lag_ms, server_latency_ms."""
    try:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sched_s", "workflow", "kind", "slo_met", "latency_ms", "lag_ms", "server_latency_ms"])
            for r in sorted(run.records, key=lambda r: r.sched_ns):
                w.writerow([f"{r.sched_ns / NS_PER_S:.6f}", run.workflows[r.target], r.kind, int(r.slo_met),
                            f"{r.latency_ns / NS_PER_MS:.3f}", f"{r.lag_ns / NS_PER_MS:.3f}",
                            "" if r.server_ms is None else f"{r.server_ms:.3f}"])
    except OSError as e:
        raise UserError(f"--csv {path}: cannot write: {e.strerror}") from None


def write_png(run: LiveRun, summary: dict, path: str | Path) -> None:
    """Latency CDF per workflow (completed requests) and SLO hit rate over time, as one PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 7))
    for w in dict.fromkeys(run.workflows):
        idx = {i for i, x in enumerate(run.workflows) if x == w}
        lat = np.sort([r.latency_ns / NS_PER_MS for r in run.records if r.target in idx and r.kind == COMPLETED])
        if len(lat):
            a1.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=w)
    a1.set_xscale("log")
    a1.set_xlabel("latency from scheduled send time (ms)")
    a1.set_ylabel("CDF")
    a1.set_title(f"{summary['sent']} requests, {summary['achieved_rps']:.0f} rps, SLO hit {summary['slo_hit_rate']:.3f}")
    a1.grid(True, which="both", alpha=0.3)
    if a1.get_legend_handles_labels()[0]:
        a1.legend()
    tl = summary["timeline"]
    xs = np.arange(len(tl["sent"])) * tl["bin_s"]
    ys = [np.nan if v is None else v for v in tl["slo_hit_rate"]]
    a2.plot(xs, ys, drawstyle="steps-post")
    a2.set_ylim(-0.02, 1.02)
    a2.set_xlabel("scheduled time (s)")
    a2.set_ylabel("SLO hit rate")
    a2.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise UserError(f"--plot {path}: cannot write: {e.strerror}") from None
    finally:
        plt.close(fig)


def print_table(summary: dict) -> None:
    """The summary for people (rich): totals, errors by kind, per-workflow rows."""
    from rich.console import Console
    from rich.table import Table

    c = Console(width=max(120, Console().width))
    lat, lag = summary["latency_ms"], summary["schedule_lag_ms"]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    t = Table(title=f"loadgen against {summary['gateway']} ({summary['duration_s']:g} s)")
    for col in ("sent", "completed", "errors", "achieved rps", "lag p99 ms", "SLO hit", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        t.add_column(col, justify="right")
    t.add_row(str(summary["sent"]), str(summary["completed"]), str(summary["error_count"]), f"{summary['achieved_rps']:.1f}",
              f(lag["p99"]), f"{summary['slo_hit_rate']:.3f}", f(lat["p50"]), f(lat["p95"]), f(lat["p99"]), f(lat["max"]))
    c.print(t)
    w = Table(title="per workflow")
    for col in ("workflow", "sent", "completed", "SLO hit", "p50 ms", "p99 ms"):
        w.add_column(col, justify="left" if col == "workflow" else "right")
    for name, d in summary["per_workflow"].items():
        w.add_row(name, str(d["sent"]), str(d["completed"]), f"{d['slo_hit_rate']:.3f}", f(d["latency_ms"]["p50"]), f(d["latency_ms"]["p99"]))
    c.print(w)
    if summary["errors"]:
        c.print("errors by kind: " + ", ".join(f"{k}={v}" for k, v in summary["errors"].items()))
    cost = summary["cost_usd"]
    if cost is None:
        c.print("cost: unknown (the gateway did not answer /v1/usage)")
    else:
        run = cost.get("run", cost["total"])
        c.print(f"cost of this run: allocated ${run.get('allocated_usd', 0):.4f}, busy ${run.get('busy_usd', 0):.4f} "
                f"(gateway totals: allocated ${cost['total'].get('allocated_usd', 0):.4f}, busy ${cost['total'].get('busy_usd', 0):.4f})")
