"""Reports of policy comparisons: CSV rows and a PNG plot of SLO hit rate and allocated cost vs load.

Who calls it: `gpufaas sim --csv/--plot` (after every run is done) and the tests. What it changes:
only the output files it is given. matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
from pathlib import Path

CSV_COLUMNS = ["scenario", "policy", "load", "seed", "invocations", "completed", "rejected", "failed", "timed_out",
               "slo_hit_rate", "allocated_usd", "busy_usd", "gpu_seconds_allocated", "gpu_seconds_busy",
               "p50_ms", "p95_ms", "p99_ms", "cold_starts", "mean_batch", "decision_p99_us", "sim_wall_s"]


def csv_row(scenario: str, r: dict) -> dict:
    """One CSV row from one `run_scenario` report."""
    return {
        "scenario": scenario, "policy": r["policy"], "load": r["load"], "seed": r["seed"],
        "invocations": r["invocations"], "completed": r["completed"], "rejected": r["rejected"],
        "failed": r["failed"], "timed_out": r["timed_out"], "slo_hit_rate": r["slo_hit_rate"],
        "allocated_usd": r["cost"]["allocated_usd"], "busy_usd": r["cost"]["busy_usd"],
        "gpu_seconds_allocated": r["cost"]["gpu_seconds_allocated"], "gpu_seconds_busy": r["cost"]["gpu_seconds_busy"],
        "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"], "p99_ms": r["latency_ms"]["p99"],
        "cold_starts": r["cold_starts"], "mean_batch": r["mean_batch"], "decision_p99_us": r["decision_us"]["p99"],
        "sim_wall_s": r["sim_wall_s"],
    }


def write_csv(path: str | Path, scenario: str, results: list[dict]) -> None:
    """One row per (policy, load), in run order."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in results:
            w.writerow(csv_row(scenario, r))


def write_plot(path: str | Path, scenario: str, results: list[dict]) -> None:
    """Two panels against load: SLO hit rate and allocated cost (USD), one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_policy: dict[str, list[dict]] = {}
    for r in results:
        by_policy.setdefault(r["policy"], []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rs in by_policy.items():
        rs = sorted(rs, key=lambda r: r["load"])
        loads = [r["load"] for r in rs]
        ax1.plot(loads, [r["slo_hit_rate"] for r in rs], marker="o", label=name)
        ax2.plot(loads, [r["cost"]["allocated_usd"] for r in rs], marker="o", label=name)
    ax1.set_xlabel("load (x the scenario's arrival rates)")
    ax1.set_ylabel("SLO hit rate (fraction of invocations)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_title("SLO attainment")
    ax2.set_xlabel("load (x the scenario's arrival rates)")
    ax2.set_ylabel("allocated cost (USD per run)")
    ax2.set_title("allocated GPU cost")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        if len({r["load"] for r in results}) > 1 and min(r["load"] for r in results) > 0:
            ax.set_xscale("log", base=2)
    ax1.legend(fontsize=8)
    fig.suptitle(f"scenario {scenario}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_writable(path: str | Path, flag: str) -> None:
    """UserError (one line, naming `flag`) if `path` cannot be written; creates nothing that stays."""
    from gpufaas.platform.errors import UserError

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag}: '{path}' is a directory; give a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{flag}: folder '{parent}' does not exist; create it or choose another path")
    existed = p.exists()
    try:
        with open(p, "a"):
            pass
    except OSError as e:
        raise UserError(f"{flag}: cannot write '{path}' ({e.strerror}); choose a writable path") from None
    if not existed:
        p.unlink()
