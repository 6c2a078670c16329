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
    return parse_loads(rest, "--sweep", "load=0.5,1,2")


def parse_loads(values: str, flag: str, example: str) -> list[float]:
    """`0.5,1,2` -> [0.5, 1.0, 2.0]: load multipliers, each a positive finite number; UserError naming `flag`
    and showing `example` otherwise. Who calls it: `parse_sweep` and `gpufaas fidelity --load`."""
    loads = []
    for v in values.split(","):
        v = v.strip()
        try:
            x = float(v)
        except ValueError:
            x = float("nan")
        if not (x > 0 and x != float("inf")):
            raise UserError(f"{flag}: load '{v}' is not a positive number; give positive multipliers such as {example}")
        loads.append(x)
    return loads


def parse_seeds(value: str | None, seed: int | None) -> list[int | None]:
    """`--seeds 1,2,3`: the distinct integer seeds, in order; [seed] (the --seed override, or None for the
    scenario's) when absent. UserError when both --seed and --seeds are given or a value is no integer."""
    if value is None:
        return [seed]
    if seed is not None:
        raise UserError("--seeds: give either --seed or --seeds, not both")
    out: list[int | None] = []
    for v in (v.strip() for v in value.split(",")):
        try:
            x = int(v)
        except ValueError:
            raise UserError(f"--seeds: '{v}' is not an integer; give seeds such as --seeds 1,2,3") from None
        if x in out:
            raise UserError(f"--seeds: seed {x} is given twice")
        out.append(x)
    return out


def _split_names(value: str | None, flag: str) -> tuple[str, ...]:
    """`A,B` as ('A', 'B'); () when the flag is absent. UserError naming `flag` when it lists nothing."""
    if value is None:
        return ()
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise UserError(f"{flag}: give at least one name, comma-separated")
    return names


# NOTE: the narrow table is what a reader compares first (fits 100 columns); --wide adds the counts, p50,
# GPU-seconds, batch, decision time and wall time (about 200 columns; residency and evictions shown narrow only when residency policies are compared). --json always carries everything.
# "cold st/req": instances started (cold_starts) / invocations that waited on a cold start (cold_requests)
NARROW_COLUMNS = ("policy", "residency", "load", "SLO hit", "p99 ms", "alloc $", "busy $", "cold st/req", "evict", "invocations")
# shown in the narrow table only when a run compares residency policies (`--residency a,b`)
RESIDENCY_COLUMNS = ("residency", "evict")
WIDE_COLUMNS = ("policy", "residency", "load", "invocations", "SLO hit", "alloc $", "busy $", "GPU-s alloc", "p50 ms", "p99 ms",
                "cold st/req", "evict", "prewarm used/wasted", "mem GB-s", "batch", "decide p99 us", "wall s")
NARROW_WIDTH = 100
WIDE_WIDTH = 210  # every column of WIDE_COLUMNS unabridged


def _cells(r: dict) -> dict[str, str]:
    """Every table column's text for one result."""
    return {"policy": r["policy"], "load": f"{r['load']:g}", "invocations": str(r["invocations"]),
            "SLO hit": f"{r['slo_hit_rate']:.3f}", "alloc $": f"{r['cost']['allocated_usd']:.3f}",
            "busy $": f"{r['cost']['busy_usd']:.3f}", "GPU-s alloc": f"{r['cost']['gpu_seconds_allocated']:.0f}",
            "p50 ms": f"{r['latency_ms']['p50']:.1f}", "p99 ms": f"{r['latency_ms']['p99']:.1f}", "cold st/req": f"{r['cold_starts']}/{r['cold_requests']}",
            "batch": f"{r['mean_batch']:.2f}", "decide p99 us": f"{r['decision_us']['p99']:.0f}", "wall s": f"{r['sim_wall_s']:.2f}",
            "residency": r["residency"], "evict": str(r["evictions"]),
            "prewarm used/wasted": f"{r['prewarms']['used']}/{r['prewarms']['wasted']}",
            "mem GB-s": f"{r['gpu_memory_gb_seconds']:.0f}"}


def _breakdown(r: dict) -> list[tuple[str, dict[str, str]]]:
    """Rows under a result, one per tenant and per class, when it has more than one (or any batch work)."""
    rows = []
    pt, pc = r.get("per_tenant", {}), r.get("per_class", {})
    if len(pt) > 1:
        rows += [(f"  tenant {name}", {"invocations": str(v["invocations"]), "SLO hit": f"{v['slo_hit_rate']:.3f}",
                                       "alloc $": f"{v['cost']['allocated_usd']:.3f}", "busy $": f"{v['cost']['busy_usd']:.3f}",
                                       "GPU-s alloc": f"{v['gpu_seconds_allocated']:.0f}"}) for name, v in pt.items()]
    if "batch" in pc:
        rows += [(f"  class {name}", {"invocations": str(v["invocations"]), "SLO hit": f"{v['slo_hit_rate']:.3f}"})
                 for name, v in pc.items()]
    return rows


def print_table(results: list[dict], title: str, wide: bool = False) -> None:
    """A readable table of per-policy results (rich) on stdout: the narrow columns (fits 100 columns),
    or with `wide` every column (about 200). Called by `gpufaas sim`."""
    from rich.console import Console
    from rich.table import Table

    cols: tuple[str, ...] = WIDE_COLUMNS if wide else NARROW_COLUMNS
    if not wide and len({r.get("residency") for r in results}) <= 1:
        cols = tuple(c for c in cols if c not in RESIDENCY_COLUMNS)
    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="right" if col != "policy" else "left")
    for r in results:
        cells = _cells(r)
        t.add_row(*[cells[c] for c in cols])
        for label, row in _breakdown(r):
            t.add_row(*[row.get(c, "") if c != "policy" else label for c in cols])
    con = Console()
    if wide:
        con = Console(width=max(WIDE_WIDTH, con.width))
    elif not con.is_terminal:  # NOTE: rich's width off a terminal is 80; the narrow table is laid out for 100
        con = Console(width=NARROW_WIDTH)
    con.print(t)


def _pm(s: dict | None, fmt: str) -> str:
    """'mean ±half-width' of a `mean_ci95` dict ('mean' alone for one seed, '-' for none)."""
    if s is None:
        return "-"
    hw = s["half_width"]
    return f"{s['mean']:{fmt}}" if hw is None else f"{s['mean']:{fmt}} ±{hw:{fmt}}"


def print_summary(summary: list[dict], title: str, wide: bool = False) -> None:
    """The table over seeds (`results.summarize_seeds`): one row per (policy, load), each figure as mean
    ± the half-width of its 95 % interval. Called by `gpufaas sim --seeds`."""
    from rich.console import Console
    from rich.table import Table

    every = ("policy", "load", "seeds", "SLO hit", "p50 ms", "p99 ms", "alloc $", "busy $", "cold", "invocations")
    cols = every if wide else tuple(c for c in every if c not in ("p50 ms", "busy $"))
    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="right" if col != "policy" else "left")
    for s in summary:
        cells = {"policy": s["policy"], "load": f"{s['load']:g}", "seeds": str(len(s["seeds"])),
                 "SLO hit": _pm(s["slo_hit_rate"], ".3f"), "p50 ms": _pm(s["p50_ms"], ".1f"), "p99 ms": _pm(s["p99_ms"], ".1f"),
                 "alloc $": _pm(s["allocated_usd"], ".3f"), "busy $": _pm(s["busy_usd"], ".3f"),
                 "cold": _pm(s["cold_starts"], ".0f"), "invocations": _pm(s["invocations"], ".0f")}
        t.add_row(*[cells[c] for c in cols])
    con = Console()
    con = Console(width=max(WIDE_WIDTH if wide else NARROW_WIDTH + 20, con.width if con.is_terminal else 0))
    con.print(t)


@click.command()
@click.option("--scenario", "scenario_path", required=True, metavar="NAME|FILE",
              help="a shipped scenario (chain, video, mixed, scale128, azure-busiest, azure-hash, noisy-tenant, hybrid) or a scenario YAML file")
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
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              help="run the cells as Ray tasks on an existing cluster: auto (the default when no address is given) or "
                   "HOST:PORT of its head (`ray start --head`); the same numbers as a local run")
@click.option("--seeds", "seeds", default=None, metavar="S1,S2,...",
              help="run every cell at each seed; the table and --json `summary` give the mean and its 95 % interval "
                   "(Student t)")
@click.option("--report", "report_path", default=None, type=click.Path(dir_okay=False),
              help="write one self-contained HTML page: the table, the plots (inline) and the run's metadata")
@click.option("--tenants", "tenants", default=None, metavar="A,B",
              help="run only these tenants' streams and traces (each with the arrivals it has in the whole run)")
@click.option("--classes", "classes", default=None, metavar="realtime|batch",
              help="run only the streams of workflows of these priority classes, e.g. --classes realtime")
@click.option("--wide", is_flag=True, help="every column in the table (about 200 characters wide): counts, p50, "
              "GPU-seconds, mean batch, decision p99 and wall time; --json always carries them all")
@click.option("--residency", "residency", default=None, metavar="NAME[,NAME...]",
              help="residency policy(ies), comma-separated: fixed, lru, cost-aware, histogram (default: the scenario's "
                   "`residency:`); one result per policy x residency, each naming its residency")
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON object on stdout")
def sim(scenario_path: str, policy: str, seed: int | None, sweep: str | None, plot_path: str | None,
        csv_path: str | None, profiles_dirs: tuple[str, ...], sets: tuple[str, ...], jobs: int, tenants: str | None,
        classes: str | None, wide: bool, as_json: bool, ray_address: str | None, seeds: str | None,
        report_path: str | None, residency: str | None) -> None:
    """Simulate SCENARIO under each POLICY (at each load of --sweep) and report SLO hit rate, cost and latency.

    \b
    Compare ESG with the baselines on a scenario, with a plot and a CSV:
      gpufaas sim --scenario video --policy esg,infless,fastgshare,static,batch1-wholegpu \\
                  --sweep load=0.5,1,2,4 --plot video.png --csv video.csv -j 2

    The report leaves out the scenario's warm-up (warmup_s, default 10% of duration_s). Profiles are
    searched in --profiles folders, then the scenario's `profiles:` folder, then the shipped ones.
    The table shows the columns read first (fits 100 characters); --wide shows every one. On a terminal
    a progress bar on stderr counts the finished (policy, load) cells. A scenario with tenants (or batch
    workflows) adds one row per tenant (and class) under each result; --json carries them as per_tenant
    and per_class.

    \b
    The quiet tenant alone, then beside the noisy one:
      gpufaas sim --scenario noisy-tenant --policy esg,static --tenants quiet
      gpufaas sim --scenario noisy-tenant --policy esg,static

    \b
    Three seeds on a Ray cluster (`ray start --head` here, or deploy/README.md), with a report page:
      gpufaas sim --scenario chain --policy esg,static --sweep load=0.5,1,2 --seeds 1,2,3 --ray auto \\
                  --plot chain.png --report chain.html
    """
    from gpufaas.gateway.cli import progress
    from gpufaas.loadgen import report
    from gpufaas.loadgen.results import (Cell, bar_on_done, cached_profiles, cached_scenario, effective_params, file_sha256,
                                         run_grid, run_grid_ray, run_meta, summarize_seeds)
    from gpufaas.loadgen.scenario import resolve_scenario, target_filter
    from gpufaas.platform.policy.params import parse_set
    from gpufaas.platform.policy.registry import builtin_registry
    from gpufaas.platform.residency.registry import parse_residencies

    # NOTE: every flag is checked before the first run: a typo must not cost a sweep of minutes.
    names = parse_policies(policy)
    residencies = parse_residencies(residency) if residency is not None else [None]
    loads = parse_sweep(sweep)
    overrides = parse_set(sets)
    for name in overrides:
        if name not in names:
            raise UserError(f"--set: policy '{name}' is not in this run (--policy {policy}); add it to --policy or drop its --set")
    if plot_path is not None:
        report.check_writable(plot_path, "--plot")
    if csv_path is not None:
        report.check_writable(csv_path, "--csv")
    if report_path is not None:
        report.check_writable(report_path, "--report")
    seed_list = parse_seeds(seeds, seed)
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
    only_tenants = _split_names(tenants, "--tenants")
    only_classes = _split_names(classes, "--classes")
    target_filter(sc, only_tenants, only_classes)  # an unknown tenant or class fails here, before any run
    cells = [Cell(path, name, load, sd, tuple(sorted(overrides.get(name, {}).items())), profiles_dirs, only_tenants,
                  only_classes, res) for load in loads for name in names for res in residencies for sd in seed_list]
    meta = run_meta(file_sha256(path), [int(x) for x in seed_list if x is not None] if seeds is not None else
                    (seed if seed is not None else sc.seed), effective_params(sc, names, overrides))
    with progress.make(as_json) as bar:  # a bar on stderr on a terminal; nothing otherwise
        on_done = bar_on_done(bar, len(cells), f"sim {sc.name}")
        if ray_address is not None:
            results = run_grid_ray(cells, ray_address, on_done=on_done)
        else:
            results = run_grid(cells, jobs, on_done=on_done)
    summary = summarize_seeds(results) if seeds is not None else None
    if csv_path is not None:
        report.write_csv(csv_path, sc.name, results)
    if plot_path is not None:
        report.write_plot(plot_path, sc.name, results)
    seeds_text = f"seeds {', '.join(map(str, seed_list))}" if seeds is not None else f"seed {seed if seed is not None else sc.seed}"
    title = f"scenario {sc.name} ({seeds_text}, {sc.duration_s:g} s)"
    if report_path is not None:
        report.write_html(report_path, title, results, summary, meta)
    if as_json:
        doc = {"scenario": sc.name, "meta": meta, "results": results}
        if summary is not None:
            doc["summary"] = summary
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
    elif summary is not None:
        print_summary(summary, title + ": mean ± 95 % interval (Student t)", wide)
    else:
        print_table(results, title, wide)


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
