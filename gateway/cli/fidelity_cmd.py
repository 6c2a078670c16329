"""`gpufaas fidelity`: run one workload on the live gateway and in the simulator; report per workflow
SLO hit, p50 and p99 from both and their differences (`loadgen/fidelity.py` says what is compared how).
Given several scenarios, loads or rounds, it runs the study (`loadgen/fidelity_study.py`): every pair,
round after round, each run a child process, and reports each row's rounds met and ranges.

Who calls it: people and the tests. What it changes: nothing that stays (a temporary gateway folder, and
the gateway's instances, stopped at the end).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gpufaas.platform.errors import UserError


def _pct(share: float | None) -> str:
    """A 0-1 share as a whole percentage; "-" when not measured."""
    return "-" if share is None else f"{100 * share:.0f} %"


def print_report(doc: dict) -> None:
    """The comparison as a rich table on stdout, one row per workflow, then the diagnostics."""
    from rich.console import Console
    from rich.table import Table

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else f"{x:{fmt}}"

    t = Table(title=f"fidelity: {doc['scenario']} under {doc['policy']} at load {doc['load']:g}, seed {doc['seed']}, "
                    f"{doc['duration_s']:g} s ({doc['backend']} backend, sim model: {doc['sim_model']}; first {doc['warmup_s']:g} s left out)")
    for col in ("workflow", "n sim/live", "hit sim", "hit live", "Δ hit", "p50 sim", "p50 live", "Δ p50", "p99 sim", "p99 live",
                "Δ p99", "refused", "targets"):
        t.add_column(col, justify="left" if col in ("workflow", "targets") else "right")
    for w, d in doc["per_workflow"].items():
        s, lv, df = d["sim"] or {}, d["live"] or {}, d["diff"]
        t.add_row(w, f"{s.get('invocations', 0)}/{lv.get('invocations', 0)}", f(s.get("slo_hit_rate"), ".3f"),
                  f(lv.get("slo_hit_rate"), ".3f"), f(df.get("slo_hit_rate"), "+.3f"), f(s.get("p50_ms"), ".1f"),
                  f(lv.get("p50_ms"), ".1f"), f(None if df.get("p50_rel") is None else 100 * df["p50_rel"], "+.1f") + " %",
                  f(s.get("p99_ms"), ".1f"), f(lv.get("p99_ms"), ".1f"),
                  f(None if df.get("p99_rel") is None else 100 * df["p99_rel"], "+.1f") + " %",
                  f"{s.get('refused', 0)}/{lv.get('refused', 0)}",
                  "[green]MET[/]" if d["within_targets"] else "[red]MISSED[/]")
    con = Console(width=max(140, Console().width))
    con.print(t)
    dg = doc["diagnostics"]
    lag, http, dec = dg["loop_lateness_ms"] or {}, dg["http_path_ms"] or {}, dg["decision_us"] or {}
    send = dg["driver_lag_ms"] or {}
    con.print(f"latency: the gateway's own (arrival to end), ms; refused (sim/live): by admission at the door (live: HTTP 429; sim: the "
              f"same queue bound), counted as misses and left out of p50/p99. "
              f"Targets: |Δ hit| <= 0.03, p50 within 15 %, p99 within 30 %.\n"
              f"live loop lateness p50/p99 {lag.get('p50', '-')}/{lag.get('p99', '-')} ms; driver send lag p99 {send.get('p99', '-')} ms; "
              f"decision p99 {dec.get('p99', '-')} us "
              f"(sim {doc['sim_decision_us'].get('p99', '-')} us); HTTP path p50 {http.get('p50', '-')} ms"
              + (f"; live errors {dg['live_errors']}" if dg["live_errors"] else ""), highlight=False)
    host = dg["host_cpu"]
    if host is not None:
        con.print(f"host over the live run ({host['wall_s']:.1f} s, {host['cores']} cores): some task waited for a CPU "
                  f"{_pct(host['waiting_share'])} of the time; {_pct(host['busy_share'])} busy; this run's processes "
                  f"{host['own_cpu_s']:.1f} core-s, other processes {host['other_cpu_s']:.1f}, steal {host['steal_s']:.1f} (the simulator models the GPUs, not this machine's CPUs)",
                  highlight=False)
    model = dg["sim_model"]
    if model is not None:
        per = ", ".join(f"{fn} {d['p50']:g}/{d['p99']:g}" for fn, d in model["dispatch_ms"].items())
        con.print(f"sim model, measured live: dispatch extra p50/p99 ms per batch: {per}; cold start {model['cold_start_ms']} ms",
                  highlight=False)
    parted = {fn: d for fn, d in dg["instances_started"].items() if d["live"] is not None and d["sim"] != d["live"]}
    if parted:
        con.print("instances started (share units, sim / live), where the policies parted: "
                  + "; ".join(f"{fn} {d['sim']} / {d['live']}" for fn, d in parted.items()), highlight=False)
        for fn, d in parted.items():
            for side in ("sim", "live"):
                con.print(f"  {fn} {side}: " + ", ".join(f"{t:g} s {u} ({r or '-'})" for t, u, r in d["why"][side]),
                          highlight=False)


def print_study(study: dict) -> None:
    """A study as a rich table on stdout: per (scenario, load, workflow) the rounds it met the targets in and
    the range of each difference over the rounds (live minus sim), then the rows met in all."""
    from rich.console import Console
    from rich.table import Table

    def span(xs: list[float] | None, fmt: str, scale: float = 1.0, unit: str = "") -> str:
        if xs is None:
            return "-"
        lo, hi = (scale * x for x in xs)
        return f"{lo:{fmt}}{unit}" if lo == hi else f"{lo:{fmt}} to {hi:{fmt}}{unit}"

    p = study["study"]
    t = Table(title=f"fidelity study: {p['rounds']} round(s) of {', '.join(p['scenarios'])} x load "
                    f"{', '.join(f'{x:g}' for x in p['loads'])}, {p['duration_s']:g} s each, {p['policy']} "
                    f"({p['backend']} backend, sim model: {p['sim_model']})")
    for col in ("scenario", "load", "workflow", "met", "Δ hit", "Δ p50", "Δ p99"):
        t.add_column(col, justify="right" if col == "load" else "left")
    for r in study["rows"]:
        met = f"{r['met']} of {r['runs']}"
        t.add_row(r["scenario"], f"{r['load']:g}", r["workflow"], f"[green]{met}[/]" if r["met"] == r["runs"] else f"[red]{met}[/]",
                  span(r["d_hit"], "+.3f"), span(r["d_p50_rel"], "+.0f", 100, " %"), span(r["d_p99_rel"], "+.0f", 100, " %"))
    con = Console(width=max(120, Console().width))
    con.print(t)
    con.print(f"rows met: {study['rows_met']} of {study['rows_total']} (a row: one workflow in one run; targets: "
              f"|Δ hit| <= 0.03, p50 within 15 %, p99 within 30 %); each run's own report: --json or --out DIR", highlight=False)
    con.print("per round, rows met and at worst over its runs (how short of CPU the host was): the gateway loop's lateness p99, "
              "the share of the time some task waited for a CPU, the host's busy share, other processes' CPU time")
    for r in study["rounds"]:
        lag = "-" if r["loop_lateness_p99_ms"] is None else f"{r['loop_lateness_p99_ms']:.1f} ms"
        other = "-" if r["other_cpu_s"] is None else f"{r['other_cpu_s']:.1f} core-s"
        con.print(f"  round {r['round']}: {r['rows_met']} of {r['rows_total']}; loop {lag}; waited {_pct(r['host_waiting_share'])}; "
                  f"busy {_pct(r['host_busy_share'])}; others {other}", highlight=False)


@click.command("fidelity")
@click.option("--scenario", "scenario", required=True, metavar="NAME|FILE[,...]",
              help="a shipped scenario (chain, video, mixed) or a scenario YAML file; several, comma-separated, run a study")
@click.option("--duration", "duration_s", type=float, default=30.0, show_default=True, help="seconds of arrivals, live and simulated")
@click.option("--load", "load_arg", default="1", show_default=True, metavar="FLOAT[,...]",
              help="multiplies every arrival rate; several, comma-separated, run a study")
@click.option("--rounds", type=int, default=1, show_default=True,
              help="run every (scenario, load) pair this many times, round after round (a study)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write each run's JSON to this folder (r{round}-{scenario}-{load}.json), as it ends")
@click.option("--seed", type=int, default=None, help="seed of the arrivals [default: the scenario's]")
@click.option("--policy", default="esg", show_default=True, help="the policy, live and simulated")
@click.option("--backend", type=click.Choice(["process", "inproc"]), default="process", show_default=True,
              help="the live gateway's backend (emulated execution either way)")
@click.option("--sim-model", default="measured", show_default=True, metavar="measured|profile",
              help="measured: the simulated run takes the live run's measured dispatch and cold-start costs "
                   "(process backend); profile: the simulator's shipped model alone")
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON object on stdout")
def fidelity(scenario: str, duration_s: float, load_arg: str, rounds: int, out_dir: Path | None, seed: int | None,
             policy: str, backend: str, sim_model: str, as_json: bool) -> None:
    """Serve SCENARIO live (gateway in this process, real port, emulated GPUs) and simulate it at the same seed;
    compare SLO hit, p50 and p99 per workflow. Several scenarios, loads or rounds run a study: every
    (scenario, load) pair back to back, round after round, each run in a process of its own, reported per
    row (scenario, load, workflow) as the rounds it met the targets in and the range of each difference.

    \b
      gpufaas fidelity --scenario chain --duration 30
      gpufaas fidelity --scenario video --load 0.5 --backend inproc --json
      gpufaas fidelity --scenario mixed --sim-model profile   # the simulator's shipped model alone
      gpufaas fidelity --scenario chain,video,mixed --load 0.5,1 --rounds 5 --out runs/   # the README's study
    """
    from gpufaas.gateway.cli.sim import parse_loads
    from gpufaas.loadgen import fidelity_study
    from gpufaas.loadgen.fidelity import SIM_MODELS, load_checked, run_fidelity
    from gpufaas.loadgen.scenario import resolve_scenario
    from gpufaas.platform.policy.registry import builtin_registry

    if not duration_s > 0 or duration_s == float("inf"):
        raise UserError(f"--duration: must be a positive number of seconds, got {duration_s:g}")
    loads = parse_loads(load_arg, "--load", "--load 0.5,1")
    if rounds < 1:
        raise UserError(f"--rounds: must be 1 or more, got {rounds}")
    reg = builtin_registry()
    if policy not in reg:
        raise UserError(f"--policy: unknown policy '{policy}'; registered policies: {', '.join(reg.names())}")
    if sim_model not in SIM_MODELS:
        raise UserError(f"--sim-model: {sim_model!r} is not one of {', '.join(SIM_MODELS)}")
    names = [s.strip() for s in scenario.split(",")]
    if not all(names):
        raise UserError(f"--scenario: {scenario!r} has an empty name; give names or files separated by commas")
    # every scenario checked before the first run: a study is long, and a bad name should not end it half-way
    paths = [resolve_scenario(n, "--scenario") for n in names]
    for p in paths:
        load_checked(p, duration_s)
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out: cannot make the folder {out_dir}: {e.strerror or e}; give a folder you can write") from None
    todo = fidelity_study.cells(names, loads, rounds)
    if len(todo) == 1:
        doc = run_fidelity(paths[0], duration_s=duration_s, policy=policy, load=loads[0], seed=seed, backend=backend,
                           sim_model=sim_model)
        if out_dir is not None:
            (out_dir / todo[0].file_name()).write_text(json.dumps(doc) + "\n")
        if as_json:
            json.dump(doc, sys.stdout)
            sys.stdout.write("\n")
        else:
            print_report(doc)
        return
    from gpufaas.gateway.cli import progress

    with progress.make(as_json) as bar:  # runs done of all on stderr (a terminal, no --json)
        task = bar.add_task("fidelity runs", total=len(todo), info="")

        def on_run(cell: fidelity_study.Cell, doc: dict) -> None:
            rows = doc["per_workflow"].values()
            bar.update(task, advance=1, info=f"round {cell.round}: {cell.scenario} at load {cell.load:g}: "
                                              f"{sum(d['within_targets'] for d in rows)} of {len(rows)} rows met")

        docs = fidelity_study.run_study(todo, duration_s=duration_s, seed=seed, policy=policy, backend=backend,
                                        sim_model=sim_model, out=out_dir, on_run=on_run)
    study = {"study": {"scenarios": names, "loads": loads, "rounds": rounds, "duration_s": duration_s, "seed": seed,
                       "policy": policy, "backend": backend, "sim_model": sim_model},
             **fidelity_study.summarize(docs), "runs": docs}
    if as_json:
        json.dump(study, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_study(study)


COMMANDS = [fidelity]
