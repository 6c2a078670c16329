"""`gpufaas loadgen`: drive a live gateway with a workload (open loop) and report SLO hit rate, latency, cost.

The workload comes from exactly one of: `--workload FILE` (a workload YAML with `streams`/`traces`, or a
whole scenario file, the same one `gpufaas sim --scenario` runs), `--workflow NAME --rate R` (synthetic),
or `--trace FILE` (replay; its functions or rows map onto the `--workflow`s). Every bad input is a
one-line error (exit 2) before any load is sent: flags, files, an unreachable gateway, unknown workflows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gpufaas.platform.errors import UserError


def build_workload(workload_file: str | None, workflows: tuple[str, ...], rate: float | None, arrival: str, cv: float,
                   trace: str | None, trace_format: str, mapping: str, top_n: int | None, spread: str, time_scale: float,
                   rate_scale: float, slo_ms: float | None, duration_s: float | None, seed: int | None):
    """(WorkloadSpec, duration_s, seed, source) from the flags; UserError naming the flag on bad input.
    Who calls it: the `loadgen` command and the tests (no side effects)."""
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.trace import TraceSpec
    from gpufaas.loadgen.workload import StreamSpec, WorkloadSpec
    from gpufaas.platform.specs import parse, read_yaml

    given = [n for n, v in (("--workload", workload_file), ("--trace", trace), ("--rate", rate)) if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --workload FILE, --workflow NAME --rate R, or --trace FILE --workflow NAME"
                        + (f" (got {' and '.join(given)})" if given else ""))
    if workload_file is not None:
        p = Path(workload_file)
        data = read_yaml(p)
        if isinstance(data, dict) and "workload" in data:  # a scenario: same workload, duration and seed as `gpufaas sim`
            sc = load_scenario(p)
            return sc.workload, duration_s or sc.duration_s, sc.seed if seed is None else seed, str(p)
        wl = parse(WorkloadSpec, data, str(p)).resolved(p.parent, str(p))
        if duration_s is None:
            raise UserError(f"--duration: {p} is a workload without a duration; give --duration SECONDS")
        return wl, duration_s, 1 if seed is None else seed, str(p)
    if not workflows:
        raise UserError("--workflow: name the workflow(s) to invoke")
    if duration_s is None:
        raise UserError("--duration: give the run's length in seconds")
    if rate is not None:
        if not rate > 0:
            raise UserError(f"--rate: must be > 0 requests per second (got {rate:g})")
        streams = [parse(StreamSpec, {"workflow": w, "arrival": arrival, "rate_rps": rate, "cv": cv, "slo_ms": slo_ms,
                                      **({"mmpp_rates_rps": [0, 2]} if arrival == "mmpp" else {})}, "flags") for w in workflows]
        return WorkloadSpec(streams=streams), duration_s, 1 if seed is None else seed, "--workflow"
    tr = parse(TraceSpec, {"format": trace_format, "path": trace, "workflows": list(workflows), "mapping": mapping,
                           "top_n": top_n, "spread": spread, "time_scale": time_scale, "rate_scale": rate_scale,
                           "slo_ms": slo_ms}, "--trace flags")
    tr = tr.resolved(None, f"--trace {trace}")
    return WorkloadSpec(traces=[tr]), duration_s, 1 if seed is None else seed, "--workflow"


@click.command()
@click.option("--gateway", default=None, metavar="URL", help="gateway address [default: $GPUFAAS_GATEWAY or http://127.0.0.1:8080]")
@click.option("--api-key", default=None, metavar="KEY",
              help="API key [default: $GPUFAAS_API_KEY, else <data-dir>/admin.key for a gateway on this machine]")
@click.option("--workload", "workload_file", type=click.Path(dir_okay=False), default=None,
              help="workload YAML (streams/traces) or a scenario file (as for gpufaas sim)")
@click.option("--workflow", "workflows", multiple=True, help="workflow to invoke (repeat for several; with --trace: the mapping targets)")
@click.option("--rate", type=float, default=None, help="requests per second per --workflow (synthetic load)")
@click.option("--duration", "duration_s", type=float, default=None, help="run length, seconds (default: the scenario's)")
@click.option("--arrival", type=click.Choice(["poisson", "constant", "gamma", "mmpp"]), default="poisson", show_default=True,
              help="arrival process of --rate streams (mmpp: on-off, rates 0 and 2x)")
@click.option("--cv", type=float, default=1.0, show_default=True, help="gamma: coefficient of variation of the gaps")
@click.option("--trace", type=click.Path(dir_okay=False), default=None, help="trace file to replay")
@click.option("--trace-format", type=click.Choice(["azure2019", "timestamps"]), default="azure2019", show_default=True,
              help="azure2019: invocations_per_function_md CSV; timestamps: CSV with t_s / t_ms / timestamp")
@click.option("--mapping", type=click.Choice(["busiest", "hash"]), default="busiest", show_default=True,
              help="azure2019: busiest N functions, or every function by hash")
@click.option("--top-n", type=int, default=None, help="busiest: how many functions [default: one per --workflow]")
@click.option("--spread", type=click.Choice(["poisson", "uniform"]), default="poisson", show_default=True,
              help="azure2019: arrivals inside each minute")
@click.option("--time-scale", type=float, default=1.0, show_default=True, help="trace seconds per run second (>1 faster)")
@click.option("--rate-scale", type=float, default=1.0, show_default=True, help="multiply the trace's counts")
@click.option("--slo-ms", type=float, default=None, help="per-request SLO override, ms")
@click.option("--seed", type=int, default=None, help="arrival seed [default: the scenario's, else 1]")
@click.option("--load", type=float, default=1.0, show_default=True, help="multiply every rate")
@click.option("--connections", type=int, default=256, show_default=True, help="most open connections")
@click.option("--timeout-s", type=float, default=60.0, show_default=True, help="per-request client timeout, s")
@click.option("--client", type=click.Choice(["fast", "aiohttp"]), default="fast", show_default=True,
              help="HTTP client of the hot path (fast: lean keep-alive HTTP/1.1; https always uses aiohttp)")
@click.option("--json", "as_json", is_flag=True, help="print exactly one JSON object on stdout")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="write one row per request here")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="write a PNG (latency CDF, SLO hit over time)")
def loadgen(gateway, api_key, workload_file, workflows, rate, duration_s, arrival, cv, trace, trace_format, mapping, top_n, spread,
            time_scale, rate_scale, slo_ms, seed, load, connections, timeout_s, client, as_json, csv_path, plot_path) -> None:
    """Send a workload to a live gateway, open loop, and report SLO hit rate, latency and cost.

    On a terminal, a bar on stderr shows elapsed/planned seconds, requests sent and completed.

    \b
    gpufaas loadgen --workflow image-classify --rate 50 --duration 30
    gpufaas loadgen --workload loadgen/scenarios/azure-busiest.yaml --duration 60 --plot run.png
    gpufaas loadgen --trace ../shared/data/azure_functions_2019_sample/fn500_min480-959/invocations.csv \\
        --workflow image-classify --workflow text-pipeline --mapping hash --duration 60
    """
    from gpufaas.gateway.cli import progress
    from gpufaas.gateway.client import resolve_api_key, resolve_gateway
    from gpufaas.loadgen import live_report
    from gpufaas.loadgen.driver import Driver, run_blocking

    url = resolve_gateway(gateway)
    key = resolve_api_key(api_key, url)
    for flag, v in (("--load", load), ("--time-scale", time_scale), ("--rate-scale", rate_scale), ("--timeout-s", timeout_s), ("--cv", cv)):
        if not v > 0:
            raise UserError(f"{flag}: must be > 0 (got {v:g})")
    if slo_ms is not None and not slo_ms > 0:
        raise UserError(f"--slo-ms: must be > 0 (got {slo_ms:g})")
    if top_n is not None and top_n < 1:
        raise UserError(f"--top-n: must be >= 1 (got {top_n})")
    wl, dur, sd, source = build_workload(workload_file, workflows, rate, arrival, cv, trace, trace_format, mapping, top_n,
                                         spread, time_scale, rate_scale, slo_ms, duration_s, seed)
    with progress.make(as_json, counts=False) as bar:  # a bar on stderr on a terminal; nothing otherwise
        on_progress = progress.live_load(bar, "loadgen", dur)
        run = run_blocking(Driver(url, wl, seed=sd, duration_s=dur, load=load, connections=connections, timeout_s=timeout_s, api_key=key,
                                  source=source, progress=on_progress if progress.shown(as_json) else None, client=client))
    summary = live_report.summarize(run)
    summary["seed"] = sd
    if csv_path:
        live_report.write_csv(run, csv_path)
    if plot_path:
        live_report.write_png(run, summary, plot_path)
    if as_json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        live_report.print_table(summary)


COMMANDS = [loadgen]
