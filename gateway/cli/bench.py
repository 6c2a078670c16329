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


@bench.command("sim")
@click.option("--policy", default="batch1-wholegpu", show_default=True, help="policy to simulate")
@click.option("--duration", "duration_s", type=float, default=None, help="override the scenario duration (s)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench_sim(policy: str, duration_s: float | None, as_json: bool) -> None:
    """Simulator speed: invocations per wall second on mixed.yaml, one core."""
    from gpufaas.gateway.cli import progress

    with progress.make(as_json, counts=False, transient=True) as bar:  # a spinner on stderr on a terminal
        bar.add_task("bench sim", total=None, info=f"{policy} on mixed.yaml")
        result = sim_speed(policy, duration_s)
    emit("sim", result, as_json)


# NOTE: other benchmarks live beside the code they measure, each module exporting COMMAND (a click
# command named after the benchmark); `all` runs whatever is registered, in order.
def register_all() -> None:
    """Add the benchmark commands of the other bench_* modules (called by the CLI at start-up)."""
    from gpufaas.gateway.cli import bench_dispatch, bench_gateway, bench_loadgen, bench_scheduler

    for mod in (bench_scheduler, bench_dispatch, bench_gateway, bench_loadgen):
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
