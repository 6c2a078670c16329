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


def parse_sweep(value: str | None) -> list[float]:
    """`--sweep load=0.5,1,2,4`: the load multipliers, each a positive number. [1.0] when absent."""
    if value is None:
        return [1.0]
    key, sep, rest = value.partition("=")
    if not sep or key.strip() != "load":
        raise UserError(f"--sweep: expected 'load=V1,V2,...' (e.g. load=0.5,1,2,4), got '{value}'")
    loads = []
    for v in rest.split(","):
        v = v.strip()
        try:
            x = float(v)
        except ValueError:
            x = float("nan")
        if not (x > 0 and x != float("inf")):
            raise UserError(f"--sweep: load '{v}' is not a positive number; give positive multipliers such as load=0.5,1,2")
        loads.append(x)
    return loads


def progress_printer(total: int):
    """An `on_done` for `run_grid` that prints one line per finished cell on stderr when it is a
    terminal and the sweep has more than one cell (quiet otherwise: pipes and scripts get the report only)."""
    if total <= 1 or not sys.stderr.isatty():
        return None

    def on_done(done: int, _total: int, cell, r: dict) -> None:
        click.echo(f"[{done}/{total}] {cell.policy} load {cell.load:g}: hit {r['slo_hit_rate']:.3f}, "
                   f"{r['sim_wall_s']:.1f} s", err=True)

    return on_done


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
@click.option("--scenario", "scenario_path", required=True, metavar="NAME|FILE",
              help="a shipped scenario (chain, video, mixed, scale128, azure-busiest, azure-hash) or a scenario YAML file")
@click.option("--policy", "policy", default="esg", show_default=True, help="policy name(s), comma-separated, or 'package.module:Class'")
@click.option("--seed", type=int, default=None, help="override the scenario's seed (same seed, same numbers)")
@click.option("--sweep", "sweep", default=None, metavar="load=V1,V2,...",
              help="run every policy at each load multiplier (scales every arrival rate), e.g. load=0.5,1,2,4")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="write a PNG of SLO hit rate and allocated cost per policy against load")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False),
              help="write a CSV with one row per (policy, load)")
@click.option("--profiles", "profiles_dirs", multiple=True, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="folder of profile YAML files, searched before the scenario's `profiles:` folder and the shipped "
                   "profiles (repeatable; the first wins)")
@click.option("--set", "sets", multiple=True, metavar="POLICY.KEY=VALUE",
              help="a policy parameter, over the scenario's `params:` (repeatable), e.g. --set esg.epsilon=0.01; "
                   "`gpufaas policies` lists every policy's parameters")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="run the (policy, load) cells in this many processes; the same numbers as -j 1 (only the "
                   "wall-clock fields move)")
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON object on stdout")
def sim(scenario_path: str, policy: str, seed: int | None, sweep: str | None, plot_path: str | None,
        csv_path: str | None, profiles_dirs: tuple[str, ...], sets: tuple[str, ...], jobs: int, as_json: bool) -> None:
    """Simulate SCENARIO under each POLICY (at each load of --sweep) and report SLO hit rate, cost and latency.

    \b
    Compare ESG with the baselines on a scenario, with a plot and a CSV:
      gpufaas sim --scenario video --policy esg,infless,fastgshare,static,batch1-wholegpu \\
                  --sweep load=0.5,1,2,4 --plot video.png --csv video.csv -j 2

    The report leaves out the scenario's warm-up (warmup_s, default 10% of duration_s). Profiles are
    searched in --profiles folders, then the scenario's `profiles:` folder, then the shipped ones.
    """
    from gpufaas.loadgen import report
    from gpufaas.loadgen.results import Cell, cached_profiles, cached_scenario, run_grid
    from gpufaas.loadgen.scenario import resolve_scenario
    from gpufaas.platform.policy.params import parse_set
    from gpufaas.platform.policy.registry import builtin_registry

    # NOTE: every flag is checked before the first run: a typo must not cost a sweep of minutes.
    names = parse_policies(policy)
    loads = parse_sweep(sweep)
    overrides = parse_set(sets)
    for name in overrides:
        if name not in names:
            raise UserError(f"--set: policy '{name}' is not in this run (--policy {policy}); add it to --policy or drop its --set")
    if plot_path is not None:
        report.check_writable(plot_path, "--plot")
    if csv_path is not None:
        report.check_writable(csv_path, "--csv")
    path = str(resolve_scenario(scenario_path, "--scenario"))
    sc = cached_scenario(path, None)  # the same cache key the cells read when they run in this process (-j 1)
    for load in loads:
        sc.workload.check_load(load, "--sweep")
    reg = builtin_registry()
    for name in names:  # the scenario's params with --set on top, for every policy, before any run
        try:
            reg.check(name, {**sc.params.get(name, {}), **overrides.get(name, {})})
        except UserError as e:
            raise UserError(f"--set: {e}" if name in overrides else str(e)) from None
    cached_profiles(path, None, profiles_dirs)  # a profile file that does not validate fails here, before any run
    cells = [Cell(path, name, load, seed, tuple(sorted(overrides.get(name, {}).items())), profiles_dirs)
             for load in loads for name in names]
    results = run_grid(cells, jobs, on_done=None if as_json else progress_printer(len(cells)))
    if csv_path is not None:
        report.write_csv(csv_path, sc.name, results)
    if plot_path is not None:
        report.write_plot(plot_path, sc.name, results)
    if as_json:
        json.dump({"scenario": sc.name, "results": results}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_table(results, f"scenario {sc.name} (seed {seed if seed is not None else sc.seed}, {sc.duration_s:g} s)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON object on stdout")
def policies(as_json: bool) -> None:
    """List the registered policies and their parameters (set them with --set POLICY.KEY=VALUE on
    `sim` and `up`, or under `params:` in a scenario).

    \b
      gpufaas policies
      gpufaas sim --scenario chain --policy esg --set esg.epsilon=0 --set esg.target_hit=0.999
    """
    from gpufaas.platform.policy.params import allowed
    from gpufaas.platform.policy.registry import builtin_registry

    reg = builtin_registry()
    out = {}
    for name in reg.names():
        model = reg.policy_class(name).Params
        out[name] = {k: {"default": f.default, "allowed": allowed(model, k), "description": f.description or ""}
                     for k, f in model.model_fields.items()}
    if as_json:
        json.dump(out, sys.stdout, default=str)
        sys.stdout.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="policies and their parameters")
    for col in ("policy", "parameter", "default", "allowed", "what it sets"):
        t.add_column(col)
    for name, fields in out.items():
        if not fields:
            t.add_row(name, "-", "", "", "no parameters")
        for i, (k, f) in enumerate(fields.items()):
            t.add_row(name if i == 0 else "", k, str(f["default"]), f["allowed"], f["description"])
    Console(width=max(120, Console().width)).print(t)
