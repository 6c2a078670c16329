"""`gpufaas bench`: the project's benchmarks, each a subcommand with `--json`; `all` runs every one.

On a terminal each benchmark shows its progress on stderr (off with --json and off a terminal); the
figures go to stdout."""

from __future__ import annotations

import json
import resource
import sys

import click

from gpufaas.platform.shipped import scenarios_dir

SCENARIOS = scenarios_dir()


def emit(name: str, result: dict, as_json: bool) -> None:
    """Print one benchmark's figures: a JSON object, or `name: key=value ...` for people."""
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        click.echo(f"{name}: " + json.dumps(result))
    sys.stdout.flush()


@click.group()
def bench() -> None:
    """Benchmarks (figures, never pass/fail). `gpufaas bench all` runs them all."""


def sim_speed(policy: str = "batch1-wholegpu", duration_s: float | None = None) -> dict:
    """Invocations simulated per second of wall time on mixed.yaml, and peak RSS."""
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.simdriver import run_scenario

    sc = load_scenario(SCENARIOS / "mixed.yaml")
    if duration_s is not None:
        sc = sc.model_copy(update={"duration_s": duration_s})
    # warm-up: the first run also pays for importing the policy registry and filling the profile memos
    run_scenario(sc.model_copy(update={"duration_s": 0.5}), policy)
    r = run_scenario(sc, policy)
    return {"policy": policy, "scenario": "mixed", "invocations": r["invocations"], "sim_wall_s": r["sim_wall_s"],
            "invocations_per_s": round(r["invocations"] / r["sim_wall_s"], 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def per_request_speed(requests: int = 20_000, repeat: int = 5) -> dict:
    """Wall time per simulated request of gpufaas (`per-request` policy) and of SimFaaS (Mahmoudi & Khazaei,
    CLOSER 2021) on the one-function workload of `loadgen.simfaas_peer` (resnet50 at batch 1, Poisson 0.5, 5
    and 50 rps x keep-alive 10 and 60 s), about `requests` per cell, both measured here, `repeat` times each,
    taking turns. Per cell: each simulator's least time (`gpufaas_us`, `simfaas_us`, their `ratio`) and its
    median (`*_median_us`). Each simulator draws its own arrivals; gpufaas's time includes generating them
    and building its controller. Without simfaas installed, gpufaas's figures alone and `simfaas: "not
    installed"`.

    NOTE: the least of several runs, as `timeit` reports: a cell takes a tenth of a second, and on a shared
    machine one run of either simulator can be slowed by a fifth by whatever else holds the core (single
    runs of this head gave the 0.5 rps / 10 s cell 0.96-1.13 and the 5 rps / 10 s cell 0.99-1.21); the
    least is the run least disturbed, the same rule for both, and the turns spread a slow spell over both."""
    from gpufaas.loadgen import simfaas_peer as peer
    from gpufaas.platform.errors import UserError
    from gpufaas.platform.stats import quantiles

    peer.run_gpufaas(peer.scenario(5.0, 10.0, 10.0))  # warm-up: imports, the policy registry, profile memos
    cells = []
    simfaas_ok = True
    for rate in peer.RATES_RPS:
        for keep_alive_s in peer.KEEP_ALIVES_S:
            duration_s = requests / rate
            g_us: list[float] = []
            s_us: list[float] = []
            for _ in range(repeat):
                g = peer.run_gpufaas(peer.scenario(rate, keep_alive_s, duration_s))
                g_us.append(g.us_per_request)
                if simfaas_ok:
                    try:
                        s_us.append(peer.run_simfaas(rate, keep_alive_s, duration_s).us_per_request)
                    except UserError:
                        simfaas_ok = False
            cell = {"rate_rps": rate, "keep_alive_s": keep_alive_s, "requests": g.requests,
                    "gpufaas_us": round(min(g_us), 2), "gpufaas_median_us": round(float(quantiles(g_us, (0.5,))[0]), 2)}
            if simfaas_ok:
                cell["simfaas_us"] = round(min(s_us), 2)
                cell["simfaas_median_us"] = round(float(quantiles(s_us, (0.5,))[0]), 2)
                cell["ratio"] = round(min(g_us) / min(s_us), 3)
            cells.append(cell)
    out: dict = {"workload": "resnet50 batch 1, Poisson, per-request", "repeat": repeat, "cells": cells,
                 "gpufaas_us": [min(c["gpufaas_us"] for c in cells), max(c["gpufaas_us"] for c in cells)]}
    if simfaas_ok:
        out["simfaas_us"] = [min(c["simfaas_us"] for c in cells), max(c["simfaas_us"] for c in cells)]
    else:
        out["simfaas"] = "not installed (pip install simfaas): gpufaas's figures only"
    return out


@bench.command("sim")
@click.option("--policy", default="batch1-wholegpu", show_default=True, help="policy to simulate")
@click.option("--duration", "duration_s", type=float, default=None, help="override the scenario duration (s)")
@click.option("--requests", type=click.IntRange(min=100), default=20_000, show_default=True,
              help="simulated requests per cell of the one-function SimFaaS comparison")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="runs of each simulator per cell, taking turns (the least time counts)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench_sim(policy: str, duration_s: float | None, requests: int, repeat: int, as_json: bool) -> None:
    """Simulator speed: invocations per wall second on mixed.yaml, one core; and wall time per simulated
    request on the one-function workload, gpufaas against SimFaaS (`per_request`)."""
    from gpufaas.gateway.cli import progress

    with progress.make(as_json, counts=False, transient=True) as bar:  # a spinner on stderr on a terminal
        bar.add_task("bench sim", total=None, info=f"{policy} on mixed.yaml, then per-request vs SimFaaS")
        result = sim_speed(policy, duration_s)
        result["per_request"] = per_request_speed(requests, repeat)
    emit("sim", result, as_json)


# NOTE: other benchmarks live beside the code they measure, each module exporting COMMAND (a click
# command named after the benchmark); `all` runs whatever is registered, in order.
def register_all() -> None:
    """Add the benchmark commands of the other bench_* modules (called by the CLI at start-up)."""
    from gpufaas.gateway.cli import bench_dispatch, bench_gateway, bench_loadgen, bench_scheduler, bench_soak

    for mod in (bench_scheduler, bench_dispatch, bench_gateway, bench_loadgen, bench_soak):
        if mod.COMMAND.name not in bench.commands:
            bench.add_command(mod.COMMAND)


@bench.command("all")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per benchmark, one per line")
@click.pass_context
def bench_all(ctx: click.Context, as_json: bool) -> None:
    """Run every benchmark in turn."""
    for name, cmd in bench.commands.items():
        if name == "all":
            continue
        ctx.invoke(cmd, as_json=as_json)
