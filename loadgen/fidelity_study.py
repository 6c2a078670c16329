"""`gpufaas fidelity` over several scenarios, loads and rounds: the study behind README "Fidelity".

One run compares one workload live and simulated (`loadgen.fidelity`); a live run on a shared machine is
one sample of what that machine does, so the claim is made over rounds: every (scenario, load) pair run
back to back, `rounds` times, each row (scenario, load, workflow) checked against the issue's targets in
every round. `run_study` runs them and `summarize` folds their JSON into the per-row table that
docs/fidelity-runs.md records (rows met, the range of each difference over the rounds).

NOTE: each run is a child process (`python -m gpufaas.gateway.cli fidelity ... --json`), exactly the
command a single run is, so that no state (the heap, caches, threads, a policy's memos) passes from one run
to the next and a study's rows are the same measurement as the single runs it repeats.

Who calls it: `gpufaas fidelity` when given more than one scenario, load or round
(gateway/cli/fidelity_cmd.py), and the tests. What it changes: the runs' own (fidelity.py), and with `out`
one JSON file per run in that folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from gpufaas.platform.errors import UserError


class Cell(NamedTuple):
    """One run of a study: its round (1-based), scenario (as given: a shipped name or a file) and load."""

    round: int
    scenario: str
    load: float

    def file_name(self) -> str:
        """The run's JSON file name under `--out`: `r{round}-{scenario's stem}-{load}.json`."""
        return f"r{self.round}-{Path(self.scenario).stem}-{self.load:g}.json"


def cells(scenarios: Iterable[str], loads: Iterable[float], rounds: int) -> list[Cell]:
    """The study's runs in the order they run: round by round, and in each round every scenario at every
    load (a round is the pairs back to back, so a slow spell of the machine falls on one round, not on one
    pair in every round)."""
    scs, lds = list(scenarios), list(loads)
    return [Cell(r, s, ld) for r in range(1, rounds + 1) for s in scs for ld in lds]


def run_one(cell: Cell, *, duration_s: float, seed: int | None, policy: str, backend: str, sim_model: str) -> dict:
    """One fidelity run in a child process; its `--json` document. UserError (one line: the run and the
    child's last line of stderr) when the child fails."""
    argv = [sys.executable, "-m", "gpufaas.gateway.cli", "fidelity", "--scenario", cell.scenario,
            "--duration", repr(duration_s), "--load", repr(cell.load), "--policy", policy, "--backend", backend,
            "--sim-model", sim_model, "--json"]
    if seed is not None:
        argv += ["--seed", str(seed)]
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        raise UserError(f"fidelity run {cell.scenario} at load {cell.load:g} (round {cell.round}) failed: {last}")
    doc: dict = json.loads(p.stdout)
    return doc


def run_study(todo: list[Cell], *, duration_s: float, seed: int | None, policy: str, backend: str, sim_model: str,
              out: Path | None = None, on_run: Callable[[Cell, dict], None] | None = None) -> list[dict]:
    """Run every cell in order (`run_one`); each run's document gets `round`; with `out`, each is written to
    `out / cell.file_name()` as it ends (a study stopped half-way keeps the runs it made). `on_run(cell, doc)`
    after each (progress)."""
    docs = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for cell in todo:
        doc = run_one(cell, duration_s=duration_s, seed=seed, policy=policy, backend=backend, sim_model=sim_model)
        doc["round"] = cell.round
        if out is not None:
            (out / cell.file_name()).write_text(json.dumps(doc) + "\n")
        docs.append(doc)
        if on_run is not None:
            on_run(cell, doc)
    return docs


def _span(xs: list[float]) -> list[float] | None:
    return [min(xs), max(xs)] if xs else None


def summarize(docs: Iterable[dict]) -> dict:
    """The study's JSON beside its runs: `rows`, one per (scenario, load, workflow) in first-seen order, with
    its runs, the rounds it met the targets in (`met`), and the range over the rounds of each difference
    (live minus sim: `d_hit`, `d_p50_rel`, `d_p99_rel`, [least, greatest], None when never measured); and
    `rows_met` / `rows_total` over every run's rows, `within_targets` when all met; and `rounds`, per round
    (the runs' `round`, 1 when absent) its rows met and, the largest over its runs, the gateway loop's
    lateness at p99 (`loop_lateness_p99_ms`, `diagnostics.loop_lateness_ms`), the share of the time some task
    waited for a CPU, the host's busy share and the CPU seconds of other processes (`host_waiting_share`,
    `host_busy_share`, `other_cpu_s`, `diagnostics.host_cpu`; None when not measured): how short of CPU the
    host was in that round, which the simulator does not model (README "Fidelity"), to read beside the
    round's misses. Pure."""
    rows: dict[tuple[str, float, str], dict] = {}
    rounds: dict[int, dict] = {}
    met = total = 0
    for doc in docs:
        r = doc.get("round", 1)
        rnd = rounds.setdefault(r, {"round": r, "rows_met": 0, "rows_total": 0, "loop_lateness_p99_ms": None,
                                    "host_waiting_share": None, "host_busy_share": None, "other_cpu_s": None})
        dg = doc.get("diagnostics", {})
        host = dg.get("host_cpu") or {}
        for name, x in (("loop_lateness_p99_ms", (dg.get("loop_lateness_ms") or {}).get("p99")),
                        ("host_waiting_share", host.get("waiting_share")), ("host_busy_share", host.get("busy_share")),
                        ("other_cpu_s", host.get("other_cpu_s"))):
            if x is not None and (rnd[name] is None or x > rnd[name]):
                rnd[name] = x
        for wf, d in doc["per_workflow"].items():
            key = (doc["scenario"], doc["load"], wf)
            row = rows.setdefault(key, {"scenario": key[0], "load": key[1], "workflow": wf, "runs": 0, "met": 0,
                                        "_hit": [], "_p50": [], "_p99": []})
            row["runs"] += 1
            row["met"] += bool(d["within_targets"])
            rnd["rows_total"] += 1
            rnd["rows_met"] += bool(d["within_targets"])
            total += 1
            met += bool(d["within_targets"])
            diff = d["diff"]
            for k, name in (("_hit", "slo_hit_rate"), ("_p50", "p50_rel"), ("_p99", "p99_rel")):
                if diff.get(name) is not None:
                    row[k].append(diff[name])
    out_rows = []
    for row in rows.values():
        hit, p50, p99 = row.pop("_hit"), row.pop("_p50"), row.pop("_p99")
        out_rows.append({**row, "d_hit": _span(hit), "d_p50_rel": _span(p50), "d_p99_rel": _span(p99)})
    return {"rows": out_rows, "rows_met": met, "rows_total": total, "within_targets": met == total,
            "rounds": [rounds[r] for r in sorted(rounds)]}
