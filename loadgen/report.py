"""Reports of policy comparisons: CSV rows and a PNG plot of SLO hit rate and allocated cost vs load;
for `gpufaas results`, the README results block and the Pareto plot.

Who calls it: `gpufaas sim --csv/--plot` and `gpufaas results` (after every run is done), and the tests.
What it changes: only the output files it is given. matplotlib runs on the Agg backend (no display needed).
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


# ---------------------------------------------------------------- `gpufaas results`: README block and Pareto plot


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, hit) points that no other point dominates (no costlier and no worse hit, and
    strictly better in one), sorted by cost. Lower cost and higher hit are better."""
    front = []
    for i, (c, h) in enumerate(points):
        if not any((c2 <= c and h2 >= h) and (c2 < c or h2 > h) for j, (c2, h2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def write_pareto_plot(path: str | Path, agg: list[dict], scenarios: list[str]) -> None:
    """One panel per scenario: SLO hit rate against allocated USD, one point per (policy, load) as the mean
    over seeds, each labelled with its load; the Pareto front among the policies at each load is ringed
    and joined. `agg` holds `loadgen.results.aggregate` values. Called by `gpufaas results`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    policies = list(dict.fromkeys(a["policy"] for a in agg))
    markers = "osD^vP*X"
    n = max(1, len(scenarios))
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows + 0.5), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, sc in zip(axes.flat, scenarios):
        pts = [a for a in agg if a["scenario"] == sc]
        for k, pol in enumerate(policies):
            ps = sorted((a for a in pts if a["policy"] == pol), key=lambda a: a["load"])
            xs = [a["allocated_usd"]["mean"] for a in ps]
            ys = [a["slo_hit_rate"]["mean"] for a in ps]
            ax.plot(xs, ys, marker=markers[k % len(markers)], color=f"C{k}", lw=0.8, alpha=0.85, label=pol)
            for a, x, y in zip(ps, xs, ys):
                ax.annotate(f"{a['load']:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=f"C{k}")
        for j, load in enumerate(sorted({a["load"] for a in pts})):
            at = [a for a in pts if a["load"] == load]
            xy = [(a["allocated_usd"]["mean"], a["slo_hit_rate"]["mean"]) for a in at]
            front = [xy[i] for i in pareto_front(xy)]
            ax.plot([x for x, _ in front], [y for _, y in front], ls="--", color="0.35", lw=0.9, drawstyle="steps-post",
                    label="Pareto front at each load" if j == 0 else None, zorder=1)
            ax.scatter([x for x, _ in front], [y for _, y in front], s=130, facecolors="none", edgecolors="k",
                       linewidths=1.1, zorder=3)
        ax.set_title(f"{sc} (labels: load, x the scenario's arrival rates)", fontsize=9)
        # NOTE: costs span 20x and more (batch1-wholegpu against the sharing policies): a log x axis keeps
        # the sharing policies apart; its ticks stay plain USD figures (0.05, 0.1, 0.2), not powers of ten.
        if pts and min(a["allocated_usd"]["mean"] for a in pts) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
            ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("allocated cost (USD per run, mean over seeds; log scale)")
        ax.set_ylabel("SLO hit rate (fraction, mean over seeds)")
        ax.set_ylim(-0.02, 1.04)
        ax.grid(True, which="both", alpha=0.25)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mm(s: dict, fmt: str) -> str:
    lo, hi = f"{s['min']:{fmt}}", f"{s['max']:{fmt}}"
    return f"{s['mean']:{fmt}} ({lo}-{hi})" if lo != hi else f"{s['mean']:{fmt}}"


def _verdict(check: dict) -> str:
    return ("**MET** " if check["met"] else "**MISSED** ") + check["summary"]


def results_block(agg: list[dict], checks: list[dict], meta: dict, plot_rel: str, policy: str) -> str:
    """The README's results block (Markdown, without the markers): how to regenerate, one table per
    scenario, the targets for `policy` and the plot. Pure; called by `gpufaas results`."""
    import textwrap

    seeds = ", ".join(str(s) for s in meta["seeds"])
    wall = f"{meta['wall_s'] / 60:.0f} min" if meta["wall_s"] >= 60 else f"{meta['wall_s']:.0f} s"
    intro = (f"Generated by `make results` (`gpufaas results`, options in `gpufaas results --help`) on "
             f"{meta.get('generated_on', '?')} in {wall} of wall time: every scenario under "
             f"{', '.join('`' + p + '`' for p in meta['policies'])}, at loads {', '.join(f'{x:g}' for x in meta['loads'])} "
             f"(x every arrival rate), seeds {seeds}, simulated. Figures are means over the seeds, with min-max in "
             "brackets where the seeds differ. Allocated cost = instance lifetime x share x price; busy cost counts "
             "execution only. Decision p99 is the policy's time per controller pass (mean over seeds of each run's "
             "p99) on the machine that ran it, which shared its cores among the runs.")
    lines = [f"### Measured: {policy.upper()} against the baselines", "", textwrap.fill(intro, 104), ""]
    for sc in meta["scenarios"]:
        warm = f", the first {sc['warmup_s']:g} s left out as warm-up" if sc.get("warmup_s") else ""
        lines += [f"### {sc['name']}: {sc['description']} ({sc['duration_s']:g} s of arrivals{warm})", "",
                  "| policy | load | SLO hit rate | allocated $ | busy $ | alloc / busy | decision p99 us |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        rows = sorted((a for a in agg if a["scenario"] == sc["name"]),
                      key=lambda a: (meta["policies"].index(a["policy"]) if a["policy"] in meta["policies"] else 99, a["load"]))
        for a in rows:
            ratio = f"{a['alloc_over_busy']:.1f}" if a["alloc_over_busy"] is not None else "-"
            lines.append(f"| {a['policy']} | {a['load']:g} | {_mm(a['slo_hit_rate'], '.3f')} | {_mm(a['allocated_usd'], '.3f')} "
                         f"| {a['busy_usd']['mean']:.3f} | {ratio} | {a['decision_p99_us']['mean']:.0f} |")
        lines.append("")
    if checks:
        rule = ("(i) SLO hit rate >= the best policy's - 0.01 (means over seeds; each seed's verdict in brackets); "
                f"(ii) no baseline with a hit rate within 0.02 of {policy}'s (or above it) allocates less than "
                f"{policy}'s cost / 1.05; (iii) allocated <= 3x busy cost, at load 1; (iv) decision p99 per pass "
                "<= 1 ms at load 1 (worst seed).")
        lines += [f"### Targets for {policy}", "", textwrap.fill(rule, 104), "",
                  "| scenario | load | (i) SLO hit | (ii) cost | (iii) alloc / busy | (iv) decision p99 |",
                  "| --- | ---: | --- | --- | --- | --- |"]
        by: dict[tuple[str, float], dict] = {}
        for c in checks:
            by.setdefault((c["scenario"], c["load"]), {})[c["target"]] = c
        for (sc_name, load), cs in by.items():
            cells = [_verdict(cs[k]) if k in cs else "" for k in ("i", "ii", "iii", "iv")]
            lines.append(f"| {sc_name} | {load:g} | " + " | ".join(cells) + " |")
        met = sum(c["met"] for c in checks)
        lines += ["", f"{met} of {len(checks)} checks met.", ""]
    lines += [f"![SLO hit rate against allocated cost per policy and load, Pareto fronts marked]({plot_rel})"]
    return "\n".join(lines)
