"""`gpufaas fidelity`: run one workload on the live gateway and in the simulator; report per workflow
SLO hit, p50 and p99 from both and their differences (`loadgen/fidelity.py` says what is compared how).

Who calls it: people and the tests. What it changes: nothing that stays (a temporary gateway folder, and
the gateway's instances, stopped at the end).
"""

from __future__ import annotations

import json
import sys

import click

from gpufaas.platform.errors import UserError


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


@click.command("fidelity")
@click.option("--scenario", "scenario", required=True, metavar="NAME|FILE", help="a shipped scenario (chain, video, mixed) or a scenario YAML file")
@click.option("--duration", "duration_s", type=float, default=30.0, show_default=True, help="seconds of arrivals, live and simulated")
@click.option("--load", type=float, default=1.0, show_default=True, help="multiplies every arrival rate")
@click.option("--seed", type=int, default=None, help="seed of the arrivals [default: the scenario's]")
@click.option("--policy", default="esg", show_default=True, help="the policy, live and simulated")
@click.option("--backend", type=click.Choice(["process", "inproc"]), default="process", show_default=True,
              help="the live gateway's backend (emulated execution either way)")
@click.option("--sim-model", default="measured", show_default=True, metavar="measured|profile",
              help="measured: the simulated run takes the live run's measured dispatch and cold-start costs "
                   "(process backend); profile: the simulator's shipped model alone")
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON object on stdout")
def fidelity(scenario: str, duration_s: float, load: float, seed: int | None, policy: str, backend: str, sim_model: str,
             as_json: bool) -> None:
    """Serve SCENARIO live (gateway in this process, real port, emulated GPUs) and simulate it at the same seed;
    compare SLO hit, p50 and p99 per workflow.

    \b
      gpufaas fidelity --scenario chain --duration 30
      gpufaas fidelity --scenario video --load 0.5 --backend inproc --json
      gpufaas fidelity --scenario mixed --sim-model profile   # the simulator's shipped model alone
    """
    from gpufaas.loadgen.fidelity import run_fidelity
    from gpufaas.loadgen.scenario import resolve_scenario
    from gpufaas.platform.policy.registry import builtin_registry

    if not duration_s > 0 or duration_s == float("inf"):
        raise UserError(f"--duration: must be a positive number of seconds, got {duration_s:g}")
    if not load > 0 or load == float("inf"):
        raise UserError(f"--load: must be a positive number, got {load:g}")
    reg = builtin_registry()
    if policy not in reg:
        raise UserError(f"--policy: unknown policy '{policy}'; registered policies: {', '.join(reg.names())}")
    path = resolve_scenario(scenario, "--scenario")
    doc = run_fidelity(path, duration_s=duration_s, policy=policy, load=load, seed=seed, backend=backend, sim_model=sim_model)
    if as_json:
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_report(doc)


COMMANDS = [fidelity]
