"""`gpufaas results`: regenerate the README's results from a fresh clone, in one command.

It runs every cell of scenarios x policies x loads x seeds through `loadgen.simdriver.run_scenario` in a
process pool (`-j` workers), then aggregates over seeds, checks the issue's targets for `esg`, and
writes the README block between `<!-- results:begin -->` and `<!-- results:end -->`, a Pareto plot PNG
and the raw results as JSON. The simulated figures of a cell depend only on its (scenario, policy,
load, seed), so they are identical whatever `-j` is; only the wall-clock fields (`sim_wall_s`,
`decision_us`) move with the machine.

Who calls it: `gpufaas results` (registered in `gateway/cli`), `python -m gpufaas.loadgen.results`,
`make results`, and the tests (the pure functions `aggregate`, `evaluate_targets`, `replace_block`).
What it changes: only the files it is given (README, plot, JSON); everything else is pure.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import click

if TYPE_CHECKING:
    from rich.progress import Progress

    from gpufaas.loadgen.scenario import Scenario
    from gpufaas.platform.profiles import Profiles

from gpufaas.platform.errors import UserError

DEFAULT_SCENARIOS = ("chain", "video", "mixed", "scale128")
DEFAULT_POLICIES = ("esg", "infless", "fastgshare", "static", "batch1-wholegpu")
DEFAULT_LOADS = (0.5, 1.0, 2.0, 4.0)
DEFAULT_SEEDS = (1, 2, 3)
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# The targets for the policy under test (ESG) against the baselines.
TARGET_POLICY = "esg"
HIT_SLACK = 0.01              # (i) hit >= best policy's hit - 0.01
NEAR_HIT = 0.02               # (ii) baselines whose hit is within 0.02 of esg's (or above it) ...
COST_MARGIN = 1.05            # ... may not allocate less than esg's cost / 1.05
MAX_ALLOC_OVER_BUSY = 3.0     # (iii) allocated <= 3x busy, at load 1
MAX_DECISION_P99_US = 1000.0  # (iv) decision p99 per pass <= 1 ms, at load 1
EPS = 1e-9                    # float slack for the comparisons (hits are means of 6-decimal figures)
TARGET_NAMES = {"i": "SLO hit", "ii": "cost", "iii": "alloc/busy", "iv": "decision p99"}


@dataclass(frozen=True)
class Cell:
    """One simulation of the grid: a scenario file under a policy at a load and a seed (None: the
    scenario's), with parameters over the scenario's `params:` for that policy and extra profile
    folders (`gpufaas sim --set` and `--profiles`), and the tenants and classes whose streams run (empty:
    all; `gpufaas sim --tenants --classes`)."""

    scenario_path: str
    policy: str
    load: float
    seed: int | None
    params: tuple[tuple[str, Any], ...] = ()
    profiles: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    residency: str | None = None  # the residency policy (`gpufaas sim --residency`); None: the scenario's


# ---------------------------------------------------------------- running


@functools.lru_cache(maxsize=16)
def cached_scenario(path: str, duration_s: float | None = None):
    """The scenario at `path` (its duration replaced when given), loaded once per process."""
    from gpufaas.loadgen.scenario import load_scenario

    sc = load_scenario(path)
    if duration_s is not None:
        sc = sc.model_copy(update={"duration_s": duration_s})
    return sc


@functools.lru_cache(maxsize=16)
def cached_profiles(path: str, duration_s: float | None, dirs: tuple[str, ...]):
    """The profiles the scenario at `path` runs with, `dirs` first, loaded once per process."""
    from gpufaas.loadgen.simdriver import scenario_profiles

    return scenario_profiles(cached_scenario(path, duration_s), dirs)


def run_cell(cell: Cell, duration_s: float | None = None) -> dict:
    """One `run_scenario` report with the scenario's name added. Runs in a pool worker (or inline);
    profiles are loaded once per worker and scenario."""
    return _run_loaded(cell, cached_scenario(cell.scenario_path, duration_s),
                       cached_profiles(cell.scenario_path, duration_s, cell.profiles))


def _weight(cell: Cell, duration_s: float | None) -> float:
    """Rough cost of a cell (arrivals x a policy factor), to start the longest cells first."""
    sc = cached_scenario(cell.scenario_path, duration_s)
    rate_rps = sum(s.rate_rps for s in sc.workload.streams) or 1.0
    return rate_rps * sc.duration_s * cell.load * (20.0 if cell.policy == TARGET_POLICY else 1.0)


def run_grid(cells: list[Cell], jobs: int, duration_s: float | None = None,
             on_done: Callable[[int, int, Cell, dict], None] | None = None) -> list[dict]:
    """Every cell's report, in the order of `cells`. `jobs` > 1 uses a process pool; the longest cells
    start first so the pool's tail is short. `on_done(done, total, cell, report)` after each cell."""
    order = sorted(range(len(cells)), key=lambda i: -_weight(cells[i], duration_s))
    out: list[dict | None] = [None] * len(cells)
    done = 0
    if jobs <= 1:
        for i in order:
            out[i] = r = run_cell(cells[i], duration_s)
            done += 1
            if on_done:
                on_done(done, len(cells), cells[i], r)
        return out  # type: ignore[return-value]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_cell, cells[i], duration_s): i for i in order}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                out[i] = r = fut.result()
                done += 1
                if on_done:
                    on_done(done, len(cells), cells[i], r)
        except BaseException:
            # NOTE: one failed cell (or Ctrl-C) ends the run now, not after the minutes the queued cells take
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------- running on a Ray cluster


def _run_loaded(cell: Cell, scenario: "Scenario", profiles: "Profiles") -> dict:
    """One `run_scenario` report with the scenario's name added, on a scenario and profiles the caller loaded:
    `run_cell` (from this process's caches) and a Ray task (from the object store, so a node needs gpufaas
    installed but not the scenario's files)."""
    from gpufaas.loadgen.simdriver import run_scenario

    r = run_scenario(scenario, cell.policy, seed=cell.seed, load=cell.load, policy_params=dict(cell.params) or None,
                     profiles=profiles, tenants=cell.tenants, classes=cell.classes, residency=cell.residency)
    return {"scenario": scenario.name, **r}


RAY_CONNECT_TIMEOUT_S = 3.0


def connect_ray(address: str) -> bool:
    """Connect this process to the Ray cluster at `address` ('auto', 'HOST:PORT' or 'ray://HOST:PORT');
    True when this call connected (the caller disconnects), False when it already was. UserError (one line,
    exit 2) naming --ray when nothing answers there. Who calls it: `run_grid_ray`."""
    import logging
    from urllib.parse import urlsplit

    import ray

    if ray.is_initialized():
        return False
    if address != "auto":
        import socket

        u = urlsplit(address if "://" in address else f"tcp://{address}")
        try:
            host, port = u.hostname, u.port
        except ValueError:
            host = port = None
        if not host or not port:
            raise UserError(f"--ray: '{address}' is not an address; give auto, HOST:PORT or ray://HOST:PORT")
        # NOTE: Ray itself retries an unreachable GCS for about a minute before it gives up; a TCP connect
        # with a short timeout answers at once and says what was wrong.
        try:
            socket.create_connection((host, port), timeout=RAY_CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise UserError(f"--ray: no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                            "`ray start --head` or give the head's address") from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        raise UserError(f"--ray: cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return True


def run_grid_ray(cells: list[Cell], address: str, duration_s: float | None = None,
                 on_done: Callable[[int, int, Cell, dict], None] | None = None) -> list[dict]:
    """Every cell's report, in the order of `cells`, each cell one Ray task (one CPU) on the cluster at
    `address`: the same numbers as `run_grid` at the same seeds (a cell depends only on its scenario,
    policy, load, seed and parameters). Scenarios and profiles are loaded here once and shipped through
    the object store. `on_done` as in `run_grid`, as each task finishes. Who calls it: `gpufaas sim --ray`.
    What it changes: connects to the cluster (and disconnects if it connected)."""
    import ray

    connected = connect_ray(address)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_run_loaded)
        loaded: dict[tuple, tuple] = {}
        order = sorted(range(len(cells)), key=lambda i: -_weight(cells[i], duration_s))
        refs = {}
        for i in order:
            c = cells[i]
            key = (c.scenario_path, c.profiles)
            if key not in loaded:
                loaded[key] = (ray.put(cached_scenario(c.scenario_path, duration_s)),
                               ray.put(cached_profiles(c.scenario_path, duration_s, c.profiles)))
            refs[task.remote(c, *loaded[key])] = i
        out: list[dict | None] = [None] * len(cells)
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    i = refs[ref]
                    out[i] = r = ray.get(ref)
                    if on_done:
                        on_done(len(cells) - len(pending), len(cells), cells[i], r)
        except BaseException:
            # NOTE: as with the process pool: one failed cell (or Ctrl-C) ends the run now
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return out  # type: ignore[return-value]
    finally:
        if connected:
            ray.shutdown()


# ---------------------------------------------------------------- seeds: mean and 95 % interval

# NOTE: two-sided 95 % critical values of Student's t distribution by degrees of freedom, from the
# NIST/SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.2 (Critical Values of the Student's t
# Distribution), 0.975 column. Between tabulated df the next lower one is used (a slightly wider,
# conservative interval). A table, not scipy: scipy is not a dependency, and these are 34 numbers.
# tests/test_eval_seeds.py checks them against a numerical integration of the t density.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
Z975 = 1.960  # df -> infinity


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` (>= 1) degrees of freedom (table `T975`)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return Z975
    return T975[max(k for k in T975 if k <= df)]


def mean_ci95(xs: list[float]) -> dict:
    """Mean, sample standard deviation and the 95 % confidence interval of the mean over `xs` (the runs at
    several seeds): mean +- t(0.975, n-1) * sd / sqrt(n) (Student 1908). With one value the interval is
    None (there is no spread to estimate). Pure; `summarize_seeds` and the tests call it."""
    import math

    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci95: no values")
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "n": 1, "sd": None, "half_width": None, "ci95": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    hw = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "n": n, "sd": sd, "half_width": hw, "ci95": [mean - hw, mean + hw]}


SEED_FIELDS = {"slo_hit_rate": lambda r: r["slo_hit_rate"], "allocated_usd": lambda r: r["cost"]["allocated_usd"],
               "busy_usd": lambda r: r["cost"]["busy_usd"], "p50_ms": lambda r: r["latency_ms"]["p50"],
               "p99_ms": lambda r: r["latency_ms"]["p99"], "cold_starts": lambda r: r["cold_starts"],
               "invocations": lambda r: r["invocations"]}


def summarize_seeds(results: Iterable[dict]) -> list[dict]:
    """Per (scenario, policy, load), in first-seen order: the seeds and `mean_ci95` of each of
    `SEED_FIELDS` over them. Pure; called by `gpufaas sim --seeds` (table, JSON `summary`, plot)."""
    groups: dict[tuple[str, str, float, str | None], list[dict]] = {}
    for r in results:  # NOTE: per residency policy too (`gpufaas sim --residency`): each is its own row
        groups.setdefault((r["scenario"], r["policy"], float(r["load"]), r.get("residency")), []).append(r)
    out = []
    for (scenario, policy, load, residency), rs in groups.items():
        s: dict[str, Any] = {"scenario": scenario, "policy": policy, "residency": residency, "load": load, "seeds": [r["seed"] for r in rs]}
        for name, get in SEED_FIELDS.items():
            vals = [get(r) for r in rs]
            s[name] = mean_ci95([float(v) for v in vals if v is not None]) if any(v is not None for v in vals) else None
        out.append(s)
    return out


# ---------------------------------------------------------------- what reproduces a result


def git_revision(folder: str | Path | None = None) -> str | None:
    """HEAD of the checkout holding `folder` (default: this module's folder, i.e. the checkout gpufaas runs
    from); None outside a git checkout (an installed wheel, even one in a venv inside some repository) or
    without git."""
    import subprocess

    here = Path(folder) if folder is not None else Path(__file__).resolve().parent
    if "site-packages" in here.parts:
        return None
    try:
        p = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_meta(scenario_sha256: str | dict[str, str], seed: int | list[int] | None, params: dict) -> dict:
    """The `meta` every JSON result carries, what reproduces it: gpufaas `version`, `git` revision (None
    outside a checkout), `scenario_sha256` (one file's, or per scenario name), `seed` (one, or the list run),
    the policies' effective `params`, the `python` and `torch` versions. Who calls it: `gpufaas sim --json`,
    `--report` and `gpufaas results --json-out`. Changes nothing (runs `git rev-parse`)."""
    import platform as std_platform  # NOTE: the standard library's; gpufaas.platform is always imported by full name
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {"version": ver("gpufaas"), "git": git_revision(), "scenario_sha256": scenario_sha256, "seed": seed,
            "params": params, "python": std_platform.python_version(), "torch": ver("torch")}


def effective_params(scenario: "Scenario", policies: Iterable[str], overrides: dict[str, dict] | None = None) -> dict[str, dict]:
    """Per policy: every parameter it runs with (its defaults, the scenario's `params:`, then `overrides`),
    validated; JSON-able. Raises UserError as `Registry.check` does."""
    from gpufaas.platform.policy.registry import builtin_registry

    reg = builtin_registry()
    return {p: reg.check(p, {**scenario.params.get(p, {}), **(overrides or {}).get(p, {})}).model_dump(mode="json")
            for p in policies}


# ---------------------------------------------------------------- aggregation and targets


def _stats(xs: list[float]) -> dict:
    return {"mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs)}


def aggregate(results: Iterable[dict]) -> dict[tuple[str, str, float], dict]:
    """Per (scenario, policy, load): SLO hit rate, allocated and busy USD (mean/min/max over seeds, hits
    also by seed), allocated/busy ratio of the means, decision p99 us (mean and max over seeds)."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for r in results:
        groups.setdefault((r["scenario"], r["policy"], float(r["load"])), []).append(r)
    agg = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        hit = _stats([r["slo_hit_rate"] for r in rs])
        hit["by_seed"] = {r["seed"]: r["slo_hit_rate"] for r in rs}
        alloc = _stats([r["cost"]["allocated_usd"] for r in rs])
        busy = _stats([r["cost"]["busy_usd"] for r in rs])
        dec = [r["decision_us"]["p99"] for r in rs]
        agg[key] = {
            "scenario": key[0], "policy": key[1], "load": key[2], "seeds": [r["seed"] for r in rs],
            "slo_hit_rate": hit, "allocated_usd": alloc, "busy_usd": busy,
            "alloc_over_busy": alloc["mean"] / busy["mean"] if busy["mean"] > 0 else None,
            "decision_p99_us": {"mean": sum(dec) / len(dec), "max": max(dec)},
        }
    return agg


def _check(scenario: str, load: float, target: str, met: bool, summary: str, detail: str = "") -> dict:
    return {"scenario": scenario, "load": load, "target": target, "name": TARGET_NAMES[target], "met": met,
            "summary": summary, "detail": detail}


def evaluate_targets(agg: dict[tuple[str, str, float], dict], policy: str = TARGET_POLICY) -> list[dict]:
    """The issue's targets for `policy`, one check per (scenario, load, target), each `met` True/False
    with its figures: (i) and (ii) at every load, (iii) and (iv) at load 1 only. Pure; tests call it."""
    checks = []
    for scenario, pol, load in [k for k in agg if k[1] == policy]:  # the grid's order
        me = agg[(scenario, pol, load)]
        peers = {k[1]: v for k, v in agg.items() if k[0] == scenario and k[2] == load}
        hit = me["slo_hit_rate"]["mean"]
        # (i) hit rate at least the best policy's, less 0.01; also stated per seed
        best_pol = max(peers, key=lambda p: (peers[p]["slo_hit_rate"]["mean"], p == policy))
        best = peers[best_pol]["slo_hit_rate"]["mean"]
        per_seed, verdicts = [], []
        for seed, h in me["slo_hit_rate"]["by_seed"].items():
            bs = max(v["slo_hit_rate"]["by_seed"][seed] for v in peers.values() if seed in v["slo_hit_rate"]["by_seed"])
            verdicts.append("MET" if h >= bs - HIT_SLACK - EPS else "MISSED")
            per_seed.append(f"seed {seed} {verdicts[-1]} ({h:.3f} vs best {bs:.3f})")
        checks.append(_check(scenario, load, "i", hit >= best - HIT_SLACK - EPS,
                             f"{hit:.3f} vs {best_pol} {best:.3f} (seeds: {', '.join(verdicts)})", "; ".join(per_seed)))
        # (ii) no baseline within 0.02 of esg's hit rate (or better) allocates less than esg's cost / 1.05
        # NOTE: a baseline more than 0.02 *above* esg counts too: it dominates esg, and the literal
        # two-sided reading would let it pass this check (it fails (i) as well).
        cost = me["allocated_usd"]["mean"]
        cheaper = sorted((v["allocated_usd"]["mean"], p) for p, v in peers.items()
                         if p != policy and v["slo_hit_rate"]["mean"] >= hit - NEAR_HIT - EPS
                         and v["allocated_usd"]["mean"] < cost / COST_MARGIN - EPS)
        summary = (f"${cost:.3f}; cheaper: " + ", ".join(f"{p} ${c:.3f} (hit {peers[p]['slo_hit_rate']['mean']:.3f})"
                                                         for c, p in cheaper)) if cheaper else f"${cost:.3f}, none cheaper"
        checks.append(_check(scenario, load, "ii", not cheaper, summary))
        if load != 1.0:
            continue
        # (iii) allocated <= 3x busy
        ratio = me["alloc_over_busy"]
        checks.append(_check(scenario, load, "iii", ratio is not None and ratio <= MAX_ALLOC_OVER_BUSY + EPS,
                             f"{ratio:.1f}x" if ratio is not None else "no busy time"))
        # (iv) decision p99 per pass <= 1 ms (judged on the worst seed)
        dec = me["decision_p99_us"]
        checks.append(_check(scenario, load, "iv", dec["max"] <= MAX_DECISION_P99_US + EPS,
                             f"{dec['max']:.0f} us (mean over seeds {dec['mean']:.0f})"))
    return checks


# ---------------------------------------------------------------- README block


def replace_block(text: str, block: str) -> str:
    """`text` with everything between the results markers replaced by `block`; text outside them kept.
    UserError if the markers are missing, repeated or out of order."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise UserError(f"--readme: expected exactly one '{BEGIN}' followed by one '{END}'; add them where the results go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block.strip()}\n{END}{tail}"


# ---------------------------------------------------------------- command line


def _resolve(name: str) -> str:
    from gpufaas.loadgen.scenario import resolve_scenario

    return str(resolve_scenario(name, "--scenarios"))


def _split(value: str, flag: str, conv: Callable, ok: Callable, what: str) -> list:
    out = []
    for v in (v.strip() for v in value.split(",")):
        try:
            x = conv(v)
        except ValueError:
            x = None
        if x is None or not ok(x):
            raise UserError(f"{flag}: '{v}' is not {what}")
        out.append(x)
    if not out:
        raise UserError(f"{flag}: give at least one value")
    return out


def bar_on_done(bar: "Progress", total: int, what: str) -> Callable[[int, int, Cell, dict], None]:
    """An `on_done` for `run_grid` that adds a task of `total` cells to `bar` (a rich Progress) and moves it
    on after each cell, naming the last one. Who calls it: `gpufaas sim` and `gpufaas results`."""
    task = bar.add_task(what, total=total, info="")

    def on_done(done: int, _total: int, cell: Cell, r: dict) -> None:
        seed = f" seed {cell.seed}" if cell.seed is not None else ""
        bar.update(task, completed=done, info=f"last: {r['scenario']} {cell.policy} load {cell.load:g}{seed}, "
                                              f"hit {r['slo_hit_rate']:.3f}")
    return on_done


def _progress(t0_ns: int) -> Callable[[int, int, Cell, dict], None]:
    """One line per finished cell on stderr: what `gpufaas results` prints when stderr is no terminal (logs)."""
    from gpufaas.platform.clock import perf_ns

    def on_done(done: int, total: int, cell: Cell, r: dict) -> None:
        el = int((perf_ns() - t0_ns) / 1e9)
        click.echo(f"[{done}/{total}] {el // 3600}:{el % 3600 // 60:02d}:{el % 60:02d} elapsed  {r['scenario']} "
                   f"{cell.policy} load {cell.load:g} seed {cell.seed}: hit {r['slo_hit_rate']:.3f}, "
                   f"{r['sim_wall_s']:.2f} s", err=True)
    return on_done


def print_targets(checks: list[dict]) -> None:
    """The targets as a rich table on stdout, one row per (scenario, load)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"targets for {TARGET_POLICY}")
    t.add_column("scenario")
    t.add_column("load", justify="right")
    for k, name in TARGET_NAMES.items():
        t.add_column(f"({k}) {name}")
    rows: dict[tuple[str, float], dict] = {}
    for c in checks:
        rows.setdefault((c["scenario"], c["load"]), {})[c["target"]] = c
    for (sc, load), cs in rows.items():
        cells = []
        for k in TARGET_NAMES:
            got = cs.get(k)
            cells.append("" if got is None else f"[{'green' if got['met'] else 'red'}]{'MET' if got['met'] else 'MISSED'}[/] {got['summary']}")
        t.add_row(sc, f"{load:g}", *cells)
    con = Console(width=max(200, Console().width))
    con.print(t)
    for c in checks:
        if c["detail"]:
            con.print(f"{c['scenario']} load {c['load']:g} ({c['target']}) per seed: {c['detail']}", highlight=False)


@click.command("results")
@click.option("--scenarios", default=",".join(DEFAULT_SCENARIOS), show_default=True, help="shipped names or YAML paths, comma-separated")
@click.option("--policies", default=",".join(DEFAULT_POLICIES), show_default=True, help="policy names, comma-separated")
@click.option("--loads", default="0.5,1,2,4", show_default=True, help="load multipliers, comma-separated")
@click.option("--seeds", default="1,2,3", show_default=True, help="seeds, comma-separated")
@click.option("-j", "--jobs", type=int, default=None, help="worker processes [default: the number of CPUs]")
@click.option("--duration", "duration_s", type=float, default=None, help="override every scenario's duration (s), for quick runs")
@click.option("--readme", "readme", default="README.md", show_default=True, type=click.Path(dir_okay=False), help="README to update between the results markers")
@click.option("--no-readme", is_flag=True, help="do not touch any README")
@click.option("--plot", "plot_path", default="docs/results-pareto.png", show_default=True, type=click.Path(dir_okay=False), help="Pareto plot PNG")
@click.option("--json-out", "json_out", default=None, type=click.Path(dir_okay=False), help="write every raw result and the targets as JSON")
def COMMAND(scenarios: str, policies: str, loads: str, seeds: str, jobs: int | None, duration_s: float | None,
            readme: str, no_readme: bool, plot_path: str, json_out: str | None) -> None:
    """Run scenarios x policies x loads x seeds; write the README results, a Pareto plot and JSON; check targets.

    \b
    Everything the README shows (about 10 minutes on 2 cores):
      gpufaas results
    A quick look:
      gpufaas results --scenarios chain --loads 1 --seeds 1 --duration 20 --no-readme --plot /tmp/p.png
    """
    from gpufaas.gateway.cli import progress
    from gpufaas.loadgen import report
    from gpufaas.platform.clock import perf_ns
    from gpufaas.platform.policy.registry import builtin_registry

    # NOTE: every flag and output path is checked before the first run: a typo must not cost a whole run.
    paths = [_resolve(n) for n in _split(scenarios, "--scenarios", str, bool, "a scenario")]
    reg = builtin_registry()
    names = _split(policies, "--policies", str, lambda n: n in reg or ":" in n,
                   f"a registered policy ({', '.join(reg.names())})")
    load_list = _split(loads, "--loads", float, lambda x: 0 < x < float("inf"), "a positive number")
    seed_list = _split(seeds, "--seeds", int, lambda x: True, "an integer")
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise UserError(f"-j: must be >= 1, got {jobs}")
    if duration_s is not None and not duration_s > 0:
        raise UserError(f"--duration: must be > 0 seconds, got {duration_s}")
    for p in paths:  # every scenario loads (and every load can be replayed) before the first run
        for ld in load_list:
            cached_scenario(p, duration_s).workload.check_load(ld, "--loads")
    readme_text = None
    if not no_readme:
        try:
            readme_text = Path(readme).read_text()
        except OSError as e:
            raise UserError(f"--readme: cannot read '{readme}' ({e.strerror}); give the README path or --no-readme") from None
        replace_block(readme_text, "")  # the markers must be there
        report.check_writable(readme, "--readme")
    Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
    report.check_writable(plot_path, "--plot")
    if json_out:
        report.check_writable(json_out, "--json-out")

    cells = [Cell(p, pol, ld, sd) for p in paths for ld in load_list for pol in names for sd in seed_list]
    t0 = perf_ns()
    click.echo(f"{len(cells)} cells on {min(jobs, len(cells))} worker(s)", err=True)
    # NOTE: a bar on a terminal; off one (a log of `make results`), the one line per cell it always printed
    with progress.make(False) as bar:
        on_done = bar_on_done(bar, len(cells), "results") if progress.shown() else _progress(t0)
        results = run_grid(cells, min(jobs, len(cells)), duration_s, on_done)
    agg = aggregate(results)
    checks = evaluate_targets(agg)
    scen = [cached_scenario(p, duration_s) for p in paths]
    meta = {"generated_on": datetime.date.today().isoformat(),
            "scenarios": [{"name": s.name, "description": s.description, "duration_s": s.duration_s,
                           "warmup_s": s.effective_warmup_s()} for s in scen],
            "policies": names, "loads": load_list, "seeds": seed_list, "wall_s": round((perf_ns() - t0) / 1e9, 1)}
    report.write_pareto_plot(plot_path, list(agg.values()), [s.name for s in scen])
    if readme_text is not None:
        plot_rel = os.path.relpath(Path(plot_path).resolve(), Path(readme).resolve().parent)
        block = report.results_block(list(agg.values()), checks, meta, plot_rel, TARGET_POLICY)
        # NOTE: read again now: the run takes minutes, and the README may have been edited meanwhile
        # (a copy read at the start would silently undo those edits)
        Path(readme).write_text(replace_block(Path(readme).read_text(), block))
    if json_out:
        repro = run_meta({s.name: file_sha256(p) for s, p in zip(scen, paths)}, seed_list,
                         {s.name: effective_params(s, names) for s in scen})
        with open(json_out, "w") as f:
            json.dump({**meta, "meta": repro, "results": results, "targets": checks}, f, indent=1)
            f.write("\n")
    print_targets(checks)
    click.echo(f"done in {meta['wall_s']:.0f} s", err=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m gpufaas.loadgen.results`: the same as `gpufaas results`."""
    from gpufaas.gateway.cli import main as cli_main

    cli_main(["results", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
