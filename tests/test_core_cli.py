"""`gpufaas sim` end to end through the console script: JSON shape, and bad input as one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SCENARIOS

GPUFAAS = [str(Path(sys.executable).parent / "gpufaas")]


def run(*args, cwd=ROOT):
    return subprocess.run(GPUFAAS + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sim_json_shape(tmp_path):
    sc = tmp_path / "chain.yaml"
    text = (SCENARIOS / "chain.yaml").read_text().replace("duration_s: 120", "duration_s: 5")
    text = text.replace("clusters/", str(SCENARIOS / "clusters") + "/").replace("../../functions", str(ROOT / "functions"))
    sc.write_text(text)
    p = run("sim", "--scenario", str(sc), "--policy", "batch1-wholegpu", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    r = doc["results"][0]
    for k in ("policy", "invocations", "slo_hit_rate", "cost", "latency_ms", "cold_starts", "decision_us", "sim_wall_s"):
        assert k in r
    assert set(r["cost"]) >= {"allocated_usd", "busy_usd", "gpu_seconds_allocated", "gpu_seconds_busy"}
    assert set(r["latency_ms"]) == {"p50", "p95", "p99"} and set(r["decision_us"]) == {"p50", "p99"}


def bad_scenario(tmp_path: Path, edit) -> Path:
    text = (SCENARIOS / "chain.yaml").read_text()
    text = text.replace("clusters/", str(SCENARIOS / "clusters") + "/").replace("../../functions", str(ROOT / "functions"))
    p = tmp_path / "s.yaml"
    p.write_text(edit(text))
    return p


@pytest.mark.parametrize("edit, expect", [
    (lambda t: t + "\nbogus: [1, 2\n", "YAML syntax error at line"),
    (lambda t: t.replace("duration_s: 120", "duration_s: -1"), "duration_s: Input should be greater than 0"),
    (lambda t: t.replace("workflow: image-classify,", "workflow: nope,"), "unknown workflow 'nope'"),
    (lambda t: t.replace("rate_rps: 200", "rate_rps: 0"), "rate_rps: Input should be greater than 0"),
])
def test_bad_scenarios_one_line_exit_2(tmp_path, edit, expect):
    p = run("sim", "--scenario", str(bad_scenario(tmp_path, edit)), "--policy", "batch1-wholegpu")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_missing_file_and_unknown_policy(tmp_path):
    p = run("sim", "--scenario", str(tmp_path / "none.yaml"), "--policy", "batch1-wholegpu")
    assert p.returncode == 2 and "file not found" in p.stderr
    p = run("sim", "--scenario", str(SCENARIOS / "chain.yaml"), "--policy", "nope")
    assert p.returncode == 2 and "unknown policy 'nope'" in p.stderr and "batch1-wholegpu" in p.stderr


def test_workflow_with_cycle_and_unknown_function(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: loop\nslo_ms: 10\nstages:\n  - {name: a, function: preprocess, after: [b]}\n  - {name: b, function: preprocess, after: [a]}\n")
    p = run("sim", "--scenario", str(bad_scenario(tmp_path, lambda t: t.replace(str(ROOT / "functions") + "/workflows/image-classify.yaml", str(wf)))),
            "--policy", "batch1-wholegpu")
    assert p.returncode == 2 and "cycle" in p.stderr, p.stderr
    p = run("sim", "--scenario", str(bad_scenario(tmp_path, lambda t: t.replace(str(ROOT / "functions") + "/resnet50", str(ROOT / "functions") + "/vit-b16"))),
            "--policy", "batch1-wholegpu")
    assert p.returncode == 2 and "unknown function 'resnet50'" in p.stderr, p.stderr


@pytest.mark.slow  # runs every `bench sim` workload, SimFaaS's too
def test_bench_sim_json_shape():
    p = run("bench", "sim", "--duration", "2", "--requests", "500", "--repeat", "3", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["invocations"] > 0 and doc["invocations_per_s"] > 0 and doc["peak_rss_mb"] > 0
    assert doc["per_request"]["repeat"] == 3
    cells = doc["per_request"]["cells"]
    assert len(cells) == 6 and all(c["requests"] >= 500 and 0 < c["gpufaas_us"] <= c["gpufaas_median_us"] for c in cells)
    # the least of the runs on each side, and their ratio (simfaas is a dev dependency)
    assert all(0 < c["simfaas_us"] <= c["simfaas_median_us"] for c in cells)
    assert all(c["ratio"] == pytest.approx(c["gpufaas_us"] / c["simfaas_us"], rel=0.01) for c in cells)
    assert run("bench", "sim", "--repeat", "0").returncode == 2


def test_every_shipped_scenario_loads():
    from gpufaas.loadgen.scenario import load_scenario
    names = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    assert {"chain.yaml", "video.yaml", "mixed.yaml"} <= set(names)
    sample = SCENARIOS.parents[2] / "shared" / "data" / "azure_functions_2019_sample"
    for n in names:
        if n.startswith("azure-") and not sample.is_dir():
            continue  # they replay the Azure sample, which lives beside the repository, never in it
        sc = load_scenario(SCENARIOS / n)
        assert sc.workload.streams or sc.workload.traces  # azure-*.yaml replay traces only


def test_up_takes_its_defaults_from_gateway_config():
    """One source: every `gpufaas up` option that sets a GatewayConfig field defaults to that field's default."""
    from gpufaas.gateway.cli.gateway_cmds import up
    from gpufaas.gateway.config import GatewayConfig

    field_of = {"timeout_s": "invocation_timeout_s"}
    checked = 0
    for p in up.params:
        field = field_of.get(p.name, p.name)
        if field in GatewayConfig.model_fields and isinstance(p.default, (str, int, float)):
            want = GatewayConfig.model_fields[field].default
            assert type(want)(p.default) == want, (p.name, p.default, want)
            checked += 1
    assert checked >= 8
