"""Reports of policy comparisons: CSV rows, a PNG of SLO hit rate and allocated cost vs load beside the
trade-off (hit against cost, Pareto front marked), and a self-contained HTML page; for `gpufaas results`,
the README results block and the Pareto plot.

Who calls it: `gpufaas sim --csv/--plot/--report` and `gpufaas results` (after every run is done), and the tests.
What it changes: only the output files it is given. matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import BinaryIO

CSV_COLUMNS = ["scenario", "policy", "load", "seed", "invocations", "completed", "rejected", "failed", "timed_out",
               "slo_hit_rate", "allocated_usd", "busy_usd", "gpu_seconds_allocated", "gpu_seconds_busy",
               "p50_ms", "p95_ms", "p99_ms", "cold_starts", "cold_requests", "mean_batch", "decision_p99_us", "sim_wall_s",
               "residency", "evictions", "prewarms_used", "prewarms_wasted", "gpu_memory_gb_seconds"]


def csv_row(scenario: str, r: dict) -> dict:
    """One CSV row from one `run_scenario` report."""
    return {
        "scenario": scenario, "policy": r["policy"], "load": r["load"], "seed": r["seed"],
        "invocations": r["invocations"], "completed": r["completed"], "rejected": r["rejected"],
        "failed": r["failed"], "timed_out": r["timed_out"], "slo_hit_rate": r["slo_hit_rate"],
        "allocated_usd": r["cost"]["allocated_usd"], "busy_usd": r["cost"]["busy_usd"],
        "gpu_seconds_allocated": r["cost"]["gpu_seconds_allocated"], "gpu_seconds_busy": r["cost"]["gpu_seconds_busy"],
        "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"], "p99_ms": r["latency_ms"]["p99"],
        "cold_starts": r["cold_starts"], "cold_requests": r["cold_requests"], "mean_batch": r["mean_batch"], "decision_p99_us": r["decision_us"]["p99"],
        "sim_wall_s": r["sim_wall_s"], "residency": r["residency"], "evictions": r["evictions"],
        "prewarms_used": r["prewarms"]["used"], "prewarms_wasted": r["prewarms"]["wasted"],
        "gpu_memory_gb_seconds": r["gpu_memory_gb_seconds"],
    }


def write_csv(path: str | Path, scenario: str, results: list[dict]) -> None:
    """One row per (policy, load), in run order."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in results:
            w.writerow(csv_row(scenario, r))


def _means(results: list[dict]) -> list[dict]:
    """Per (policy, load), in first-seen order: the mean over seeds of SLO hit, allocated USD and p99, and the
    half-width of the hit rate's 95 % interval (None for one seed), for the plot."""
    from gpufaas.loadgen.results import summarize_seeds

    return [{"policy": s["policy"], "load": s["load"], "hit": s["slo_hit_rate"]["mean"],
             "hit_hw": s["slo_hit_rate"]["half_width"], "alloc": s["allocated_usd"]["mean"]}
            for s in summarize_seeds({"scenario": "", **r} for r in results)]


def plain_load_axis(ax, loads: list[float]) -> None:
    """A log-2 x axis ticked at the loads themselves, written as plain numbers (0.5, 1, 2, 4; not 2^-1)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if len(loads) > 1 and min(loads) > 0:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(loads))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def plain_cost_axis(ax, costs: list[float]) -> None:
    """A log x axis for costs that span more than 4x (20x and more between batch1-wholegpu and the sharing
    policies), its ticks plain USD figures (0.05, 0.1, 0.2), not powers of ten; linear otherwise (a log axis
    over a narrow span shows no tick label at all)."""
    from matplotlib.ticker import FuncFormatter

    if costs and min(costs) > 0 and max(costs) > 4 * min(costs):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.tick_params(axis="x", which="minor", labelsize=7)


def write_plot(path: str | Path | BinaryIO, scenario: str, results: list[dict]) -> None:
    """Three panels, one line or point set per policy: SLO hit rate and allocated cost (USD) against load,
    and the trade-off itself: SLO hit against allocated cost, one point per (policy, load) labelled with its
    load, the Pareto front over all of them ringed and joined. Several seeds of a cell are drawn as their mean
    (hit rate with its 95 % interval as an error bar). `path` may be a binary file object (the HTML report).
    Who calls it: `gpufaas sim --plot/--report`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = _means(results)
    by_policy: dict[str, list[dict]] = {}
    for m in pts:
        by_policy.setdefault(m["policy"], []).append(m)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    for k, (name, ms) in enumerate(by_policy.items()):
        ms = sorted(ms, key=lambda m: m["load"])
        loads = [m["load"] for m in ms]
        yerr = [m["hit_hw"] or 0.0 for m in ms]
        ax1.errorbar(loads, [m["hit"] for m in ms], yerr=yerr if any(yerr) else None, marker="o", color=f"C{k}", label=name, capsize=3)
        ax2.plot(loads, [m["alloc"] for m in ms], marker="o", color=f"C{k}", label=name)
        ax3.plot([m["alloc"] for m in ms], [m["hit"] for m in ms], marker="o", lw=0.8, alpha=0.85, color=f"C{k}", label=name)
        for m in ms:
            ax3.annotate(f"{m['load']:g}", (m["alloc"], m["hit"]), textcoords="offset points", xytext=(4, 3), fontsize=7, color=f"C{k}")
    xy = [(m["alloc"], m["hit"]) for m in pts]
    front = [xy[i] for i in pareto_front(xy)]
    ax3.plot([x for x, _ in front], [y for _, y in front], ls="--", color="0.35", lw=0.9, drawstyle="steps-post",
             label="Pareto front", zorder=1)
    ax3.scatter([x for x, _ in front], [y for _, y in front], s=130, facecolors="none", edgecolors="k", linewidths=1.1, zorder=3)
    all_loads = [m["load"] for m in pts]
    for ax in (ax1, ax2):
        ax.set_xlabel("load (x the scenario's arrival rates)")
        plain_load_axis(ax, all_loads)
    plain_cost_axis(ax3, [m["alloc"] for m in pts])
    ax1.set_ylabel("SLO hit rate (fraction of invocations)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_title("SLO attainment")
    ax2.set_ylabel("allocated cost (USD per run)")
    ax2.set_title("allocated GPU cost")
    ax3.set_xlabel("allocated cost (USD per run)")
    ax3.set_ylabel("SLO hit rate (fraction of invocations)")
    ax3.set_ylim(-0.02, 1.04)
    ax3.set_title("trade-off (point labels: load)")
    for ax in (ax1, ax2, ax3):
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax3.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"scenario {scenario}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_html(path: str | Path, title: str, results: list[dict], summary: list[dict] | None, meta: dict) -> None:
    """One self-contained HTML page (no file or network reference): the run's metadata, the results table
    (over seeds when `summary` is given: mean ± 95 % interval) and the plot of `write_plot`, inlined as a
    base64 PNG. Who calls it: `gpufaas sim --report`. What it changes: writes `path` only."""
    import base64
    import html
    import io

    buf = io.BytesIO()
    scenario = results[0]["scenario"] if results and "scenario" in results[0] else ""
    write_plot(buf, scenario, results)
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    e = html.escape

    def pm(s: dict | None, fmt: str) -> str:
        if s is None:
            return "-"
        return f"{s['mean']:{fmt}}" + ("" if s["half_width"] is None else f" ± {s['half_width']:{fmt}}")

    if summary is not None:
        head = ["policy", "load", "seeds", "SLO hit", "p50 ms", "p99 ms", "allocated $", "busy $", "cold starts", "invocations"]
        rows = [[s["policy"], f"{s['load']:g}", ", ".join(map(str, s["seeds"])), pm(s["slo_hit_rate"], ".3f"), pm(s["p50_ms"], ".1f"),
                 pm(s["p99_ms"], ".1f"), pm(s["allocated_usd"], ".3f"), pm(s["busy_usd"], ".3f"), pm(s["cold_starts"], ".0f"),
                 pm(s["invocations"], ".0f")] for s in summary]
    else:
        head = ["policy", "load", "seed", "SLO hit", "p50 ms", "p99 ms", "allocated $", "busy $", "cold starts", "cold requests",
                "invocations"]
        rows = [[r["policy"], f"{r['load']:g}", str(r["seed"]), f"{r['slo_hit_rate']:.3f}", f"{r['latency_ms']['p50']:.1f}",
                 f"{r['latency_ms']['p99']:.1f}", f"{r['cost']['allocated_usd']:.3f}", f"{r['cost']['busy_usd']:.3f}",
                 str(r["cold_starts"]), str(r["cold_requests"]), str(r["invocations"])] for r in results]
    table = ("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>" +
             "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>")
    meta_rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(json.dumps(v, sort_keys=True))}</code></td></tr>" for k, v in meta.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }} code {{ font-size: 0.85em; white-space: pre-wrap; }}
</style></head><body>
<h1>{e(title)}</h1>
<h2>Results</h2>
{table}
<p>SLO hit: fraction of invocations that finished by their deadline. Allocated cost: instance lifetime x share x price;
busy cost: execution only.{" Figures over seeds: mean ± half-width of the 95 % confidence interval (Student t)." if summary is not None else ""}</p>
<h2>Plots</h2>
<img alt="SLO hit rate and allocated cost against load, and SLO hit against allocated cost with the Pareto front" src="data:image/png;base64,{png}">
<h2>Run metadata (what reproduces it)</h2>
<table class="meta">{meta_rows}</table>
</body></html>
"""
    Path(path).write_text(page)


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
        plain_cost_axis(ax, [a["allocated_usd"]["mean"] for a in pts])
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
