"""`gpufaas fidelity` as a study (several scenarios, loads or rounds; `loadgen/fidelity_study.py`): the order
of its runs, its per-row summary on hand-made run documents, a failing run named in one line, and one short
study of two live runs (inproc backend, emulated GPUs). Bad study input (refused before the first run) is
among tests/test_eval_fidelity.py's bad-input cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufaas.loadgen import fidelity_study as S
from gpufaas.platform.errors import UserError
from tests.helpers import run_cli, tiny_scenario


def _run(scenario: str, load: float, rows: dict[str, tuple[float, float | None, float | None, bool]], rnd: int = 1,
         lag_p99_ms: float | None = None, busy: float | None = None, other_s: float | None = None) -> dict:
    """A run document as `gpufaas fidelity --json` prints it (with the study's `round`), reduced to what the
    summary reads: per workflow (Δ hit, Δ p50 rel, Δ p99 rel, within targets), the loop lateness p99, the
    host's busy share and other processes' CPU seconds."""
    host = None if busy is None else {"cores": 2, "wall_s": 31.0, "waiting_share": busy / 4, "busy_share": busy, "own_cpu_s": 20.0,
                                      "other_cpu_s": other_s, "steal_s": 0.0}
    return {"scenario": scenario, "load": load, "round": rnd,
            "diagnostics": {"loop_lateness_ms": None if lag_p99_ms is None else {"p50": 0.1, "p99": lag_p99_ms},
                            "host_cpu": host},
            "per_workflow": {wf: {"diff": {"slo_hit_rate": h, "p50_rel": p50, "p99_rel": p99}, "within_targets": ok}
                             for wf, (h, p50, p99, ok) in rows.items()}}


def test_cells_run_round_by_round_every_pair_in_each():
    cells = S.cells(["chain", "video"], [0.5, 1.0], 2)
    assert [(c.round, c.scenario, c.load) for c in cells] == [
        (1, "chain", 0.5), (1, "chain", 1.0), (1, "video", 0.5), (1, "video", 1.0),
        (2, "chain", 0.5), (2, "chain", 1.0), (2, "video", 0.5), (2, "video", 1.0)]
    assert cells[5].file_name() == "r2-chain-1.json"
    assert S.Cell(1, "/x/my-scenario.yaml", 0.25).file_name() == "r1-my-scenario-0.25.json"


def test_summary_counts_rows_met_and_spans_each_difference_over_the_rounds():
    docs = [_run("mixed", 1.0, {"a": (0.01, 0.05, -0.10, True), "b": (-0.05, 0.20, 0.0, False)}, 1, 2.5),
            _run("mixed", 1.0, {"a": (-0.02, 0.07, 0.25, True), "b": (0.0, None, None, False)}, 2, 19.0, 0.97, 4.0),
            _run("chain", 0.5, {"a": (0.0, 0.04, 0.02, True)}, 2, 3.0, 0.99, 1.5)]
    s = S.summarize(docs)
    assert (s["rows_met"], s["rows_total"], s["within_targets"]) == (3, 5, False)
    # per round its worst run; round 1's run measured no host figures
    assert s["rounds"] == [{"round": 1, "rows_met": 1, "rows_total": 2, "loop_lateness_p99_ms": 2.5, "host_waiting_share": None,
                            "host_busy_share": None, "other_cpu_s": None},
                           {"round": 2, "rows_met": 2, "rows_total": 3, "loop_lateness_p99_ms": 19.0, "host_waiting_share": 0.2475,
                            "host_busy_share": 0.99, "other_cpu_s": 4.0}]
    rows = {(r["scenario"], r["load"], r["workflow"]): r for r in s["rows"]}
    assert list(rows) == [("mixed", 1.0, "a"), ("mixed", 1.0, "b"), ("chain", 0.5, "a")]  # first seen first
    a = rows[("mixed", 1.0, "a")]
    assert (a["runs"], a["met"]) == (2, 2)
    assert a["d_hit"] == [-0.02, 0.01] and a["d_p50_rel"] == [0.05, 0.07] and a["d_p99_rel"] == [-0.10, 0.25]
    b = rows[("mixed", 1.0, "b")]
    assert (b["runs"], b["met"]) == (2, 0)
    assert b["d_p50_rel"] == [0.20, 0.20]  # the run without a p50 (none completed) adds no point
    assert S.summarize([_run("chain", 1.0, {"a": (0.0, 0.0, 0.0, True)})])["within_targets"] is True
    assert S.summarize([])["rows"] == []


@pytest.mark.live
def test_a_failing_run_is_one_line_naming_the_run_and_the_childs_error(tmp_path: Path):
    with pytest.raises(UserError) as e:
        S.run_study([S.Cell(2, "nosuch", 0.5)], duration_s=5.0, seed=None, policy="esg", backend="inproc",
                    sim_model="measured", out=tmp_path / "runs")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("fidelity run nosuch at load 0.5 (round 2) failed:")
    assert "no scenario 'nosuch'" in msg  # the child's own error line
    assert list((tmp_path / "runs").iterdir()) == []  # nothing written for a run that failed


@pytest.mark.live
@pytest.mark.slow
def test_a_study_of_two_loads_reports_each_row_and_writes_each_run(tmp_path: Path, capsys):
    sc = tiny_scenario(tmp_path, "{workflow: image-classify, arrival: poisson, rate_rps: 30}")
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(["fidelity", "--scenario", str(sc), "--load", "0.5,1", "--duration", "3", "--backend", "inproc",
                              "--out", str(out_dir), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["study"]["loads"] == [0.5, 1.0] and doc["study"]["rounds"] == 1
    runs = doc["runs"]
    assert [(r["round"], r["load"], r["seed"]) for r in runs] == [(1, 0.5, 3), (1, 1.0, 3)]
    assert sorted(p.name for p in out_dir.iterdir()) == ["r1-tiny-0.5.json", "r1-tiny-1.json"]
    assert json.loads((out_dir / "r1-tiny-1.json").read_text())["per_workflow"] == runs[1]["per_workflow"]
    # the study's rows are its runs' rows: one per (load, workflow), met as the run says
    assert [(r["load"], r["workflow"], r["runs"]) for r in doc["rows"]] == [(0.5, "image-classify", 1), (1.0, "image-classify", 1)]
    for row, run in zip(doc["rows"], runs):
        d = run["per_workflow"]["image-classify"]
        assert row["met"] == int(d["within_targets"])
        assert row["d_hit"] == [d["diff"]["slo_hit_rate"]] * 2
        assert run["per_workflow"]["image-classify"]["sim"]["invocations"] > 20  # the load scaled, both ran
    assert runs[1]["per_workflow"]["image-classify"]["sim"]["invocations"] > runs[0]["per_workflow"]["image-classify"]["sim"]["invocations"]
    assert doc["rows_total"] == 2 and doc["rows_met"] == sum(r["met"] for r in doc["rows"])
    lags = [r["diagnostics"]["loop_lateness_ms"]["p99"] for r in runs]
    hosts = [r["diagnostics"]["host_cpu"] for r in runs]
    assert doc["rounds"] == [{"round": 1, "rows_met": doc["rows_met"], "rows_total": 2, "loop_lateness_p99_ms": max(lags),
                              "host_waiting_share": max((h["waiting_share"] for h in hosts if h["waiting_share"] is not None),
                                                        default=None),
                              "host_busy_share": max(h["busy_share"] for h in hosts),
                              "other_cpu_s": max(h["other_cpu_s"] for h in hosts)}]
