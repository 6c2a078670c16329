"""`gpufaas fidelity`: the comparison's arithmetic on hand-made figures, bad input, and one short live run
against its simulation (inproc backend, emulated GPUs), judged with tolerances derived from the run's own
measurements, as tests/test_loadgen_live_vs_sim.py does."""

from __future__ import annotations

import json

import pytest

from gpufaas.loadgen import fidelity as F
from tests.conftest import FUNCTIONS, SCENARIOS
from tests.helpers import run_cli

EPOLL_GRANULARITY_MS = 1.0


def test_side_stats_and_compare():
    sim = F.side_stats([F.Sample("w", True, float(x)) for x in range(1, 101)] + [F.Sample("w", False, None)])
    assert sim["w"]["invocations"] == 101 and sim["w"]["slo_hit_rate"] == round(100 / 101, 6)
    assert 50 <= sim["w"]["p50_ms"] <= 51 and 99 <= sim["w"]["p99_ms"] <= 100
    live = {"w": {**sim["w"], "slo_hit_rate": sim["w"]["slo_hit_rate"] - 0.02, "p50_ms": sim["w"]["p50_ms"] * 1.1,
                  "p99_ms": sim["w"]["p99_ms"] * 1.25}}
    d = F.compare(sim, live)["w"]
    assert d["within_targets"] is True
    assert d["diff"]["p50_rel"] == pytest.approx(0.1, abs=1e-4) and d["diff"]["slo_hit_rate"] == pytest.approx(-0.02)
    for key, bad in (("slo_hit_rate", sim["w"]["slo_hit_rate"] - 0.04), ("p50_ms", sim["w"]["p50_ms"] * 1.2),
                     ("p99_ms", sim["w"]["p99_ms"] * 0.6)):
        assert F.compare(sim, {"w": {**sim["w"], key: bad}})["w"]["within_targets"] is False, key
    only = F.compare(sim, {})  # a workflow the live run never saw fails the targets
    assert only["w"]["live"] is None and only["w"]["within_targets"] is False


@pytest.mark.parametrize("argv, needle", [(["--scenario", "chain", "--duration", "0"], "--duration"),
                                          (["--scenario", "chain", "--load", "-1"], "--load"),
                                          (["--scenario", "chain", "--policy", "nosuch"], "unknown policy"),
                                          (["--scenario", "nosuch"], "--scenario"),
                                          (["--scenario", "noisy-tenant"], "tenants")])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, out, err = run_cli(["fidelity", *argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1 and needle in err


@pytest.mark.live
@pytest.mark.slow
def test_live_and_sim_agree_per_workflow(tmp_path, capsys):
    sc = tmp_path / "sc.yaml"
    sc.write_text(f"""
name: fid
seed: 7
duration_s: 8
warmup_s: 3
drain_s: 10
cluster: {SCENARIOS / 'clusters' / 'a100x4.yaml'}
functions: [{FUNCTIONS / 'preprocess'}, {FUNCTIONS / 'resnet50'}, {FUNCTIONS / 'distilbert'}, {FUNCTIONS / 'bert-base'}, {FUNCTIONS / 'aggregator'}]
workflows: [{FUNCTIONS / 'workflows' / 'image-classify.yaml'}, {FUNCTIONS / 'workflows' / 'text-pipeline.yaml'}]
workload:
  streams:
    - {{workflow: image-classify, arrival: poisson, rate_rps: 40}}
    - {{workflow: text-pipeline, arrival: poisson, rate_rps: 20}}
""")
    code, out, err = run_cli(["fidelity", "--scenario", str(sc), "--duration", "8", "--backend", "inproc", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["per_workflow"]) == {"image-classify", "text-pipeline"}
    assert doc["meta"]["seed"] == 7 and doc["warmup_s"] == 3
    dg = doc["diagnostics"]
    lag_ms = max(EPOLL_GRANULARITY_MS, dg["loop_lateness_ms"]["max"])
    decision_ms = (dg["decision_us"] or {}).get("p99", 0.0) / 1000
    stages = {"image-classify": 2, "text-pipeline": 3}
    for w, d in doc["per_workflow"].items():
        s, lv = d["sim"], d["live"]
        # the same invocations in the window (same seed, same schedule), every one ended on both sides
        assert s["invocations"] == lv["invocations"] > 50
        # each invocation moves by at most 2 waits per stage x (timer lateness + decision time); the live run is
        # never faster at the median than the simulation less that bound, nor slower by more than it
        bound_ms = 2 * stages[w] * (lag_ms + decision_ms)
        assert abs(lv["p50_ms"] - s["p50_ms"]) <= bound_ms, (w, d, dg)
        assert lv["client_p50_ms"] >= lv["p50_ms"]  # the client side adds the HTTP path
        assert set(s) >= {"slo_hit_rate", "p50_ms", "p99_ms"} and set(lv) >= {"slo_hit_rate", "p50_ms", "p99_ms"}
        assert d["diff"]["p50_ms"] == pytest.approx(lv["p50_ms"] - s["p50_ms"], abs=1e-3)
