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


def per_request_speed(requests: int = 20_000) -> dict:
    """Wall time per simulated request of gpufaas (`per-request` policy) and of SimFaaS (Mahmoudi & Khazaei,
    CLOSER 2021) on the one-function workload of `loadgen.simfaas_peer` (resnet50 at batch 1, Poisson 0.5, 5
    and 50 rps x keep-alive 10 and 60 s), about `requests` per cell, both measured here, one after the other.
    Each simulator draws its own arrivals; gpufaas's time includes generating them and building its
    controller. Without simfaas installed, gpufaas's figures alone and `simfaas: "not installed"`."""
    from gpufaas.loadgen import simfaas_peer as peer
    from gpufaas.platform.errors import UserError

    peer.run_gpufaas(peer.scenario(5.0, 10.0, 10.0))  # warm-up: imports, the policy registry, profile memos
    cells = []
    simfaas_ok = True
    for rate in peer.RATES_RPS:
        for keep_alive_s in peer.KEEP_ALIVES_S:
            duration_s = requests / rate
            g = peer.run_gpufaas(peer.scenario(rate, keep_alive_s, duration_s))
            cell = {"rate_rps": rate, "keep_alive_s": keep_alive_s, "requests": g.requests,
                    "gpufaas_us": round(g.us_per_request, 2)}
            if simfaas_ok:
                try:
                    s = peer.run_simfaas(rate, keep_alive_s, duration_s)
                except UserError:
                    simfaas_ok = False
                else:
                    cell["simfaas_us"] = round(s.us_per_request, 2)
                    cell["ratio"] = round(g.us_per_request / s.us_per_request, 3)
            cells.append(cell)
    out: dict = {"workload": "resnet50 batch 1, Poisson, per-request", "cells": cells,
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
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench_sim(policy: str, duration_s: float | None, requests: int, as_json: bool) -> None:
    """Simulator speed: invocations per wall second on mixed.yaml, one core; and wall time per simulated
    request on the one-function workload, gpufaas against SimFaaS (`per_request`)."""
    from gpufaas.gateway.cli import progress

    with progress.make(as_json, counts=False, transient=True) as bar:  # a spinner on stderr on a terminal
        bar.add_task("bench sim", total=None, info=f"{policy} on mixed.yaml, then per-request vs SimFaaS")
        result = sim_speed(policy, duration_s)
        result["per_request"] = per_request_speed(requests)
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
