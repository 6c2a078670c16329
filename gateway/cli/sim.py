"""`gpufaas sim`: run a scenario under one or more policies on the virtual clock and report."""

from __future__ import annotations

import json
import sys

import click

from gpufaas.platform.errors import UserError


def parse_policies(value: str) -> list[str]:
    """Comma-separated policy names, each checked against the registry before any run starts."""
    from gpufaas.platform.policy.registry import builtin_registry

    reg = builtin_registry()
    names = [p.strip() for p in value.split(",") if p.strip()]
    if not names:
        raise UserError("--policy: give at least one policy name")
    for n in names:
        if n not in reg and ":" not in n:
            raise UserError(f"--policy: unknown policy '{n}'; registered policies: {', '.join(reg.names())}")
    return names


def print_table(results: list[dict], title: str) -> None:
    """A readable table of per-policy results (rich)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("policy", "load", "invocations", "SLO hit", "alloc $", "busy $", "GPU-s alloc", "p50 ms", "p99 ms", "cold", "batch", "decide p99 us", "wall s"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    for r in results:
        t.add_row(r["policy"], f"{r['load']:g}", str(r["invocations"]), f"{r['slo_hit_rate']:.3f}",
                  f"{r['cost']['allocated_usd']:.3f}", f"{r['cost']['busy_usd']:.3f}", f"{r['cost']['gpu_seconds_allocated']:.0f}",
                  f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}", str(r["cold_starts"]), f"{r['mean_batch']:.2f}",
                  f"{r['decision_us']['p99']:.0f}", f"{r['sim_wall_s']:.2f}")
    Console(width=max(160, Console().width)).print(t)


@click.command()
@click.option("--scenario", "scenario_path", required=True, type=click.Path(dir_okay=False), help="scenario YAML file (see loadgen/scenarios/)")
@click.option("--policy", "policy", default="esg", show_default=True, help="policy name(s), comma-separated, or 'package.module:Class'")
@click.option("--seed", type=int, default=None, help="override the scenario's seed (same seed, same numbers)")
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON object on stdout")
def sim(scenario_path: str, policy: str, seed: int | None, as_json: bool) -> None:
    """Simulate SCENARIO under each POLICY and report SLO hit rate, cost and latency."""
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.simdriver import run_scenario

    names = parse_policies(policy)
    sc = load_scenario(scenario_path)
    results = []
    for name in names:
        results.append(run_scenario(sc, name, seed=seed))
    if as_json:
        json.dump({"scenario": sc.name, "results": results}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_table(results, f"scenario {sc.name} (seed {seed if seed is not None else sc.seed}, {sc.duration_s:g} s)")
