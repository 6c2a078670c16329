"""`gpufaas sim` with --sweep/--plot/--csv: outputs and bad input (exit code 2, before any run)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import SCENARIOS

from gpufaas.gateway.cli.sim import parse_sweep
from gpufaas.platform.errors import UserError
from tests.helpers import run_cli, tiny_scenario


@pytest.fixture
def tiny(tmp_path):
    """The chain scenario, 3 s at 40 rps: fast enough to run several policies and loads."""
    return tiny_scenario(tmp_path, "{workflow: image-classify, arrival: poisson, rate_rps: 40}")




def test_sweep_writes_json_csv_and_png(tiny, tmp_path, capsys):
    png, csv_path = tmp_path / "o.png", tmp_path / "o.csv"
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static,fastgshare,batch1-wholegpu",
                           "--sweep", "load=0.5,2", "--plot", str(png), "--csv", str(csv_path), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["scenario"] == "tiny"
    assert [(r["policy"], r["load"]) for r in doc["results"]] == [
        (p, load) for load in (0.5, 2.0) for p in ("static", "fastgshare", "batch1-wholegpu")]
    # load scales every arrival rate
    by = {(r["policy"], r["load"]): r for r in doc["results"]}
    assert by[("static", 2.0)]["invocations"] > 2.5 * by[("static", 0.5)]["invocations"]
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 6
    assert {(r["policy"], float(r["load"])) for r in rows} == set(by)
    for r in rows:
        assert float(r["slo_hit_rate"]) == by[(r["policy"], float(r["load"]))]["slo_hit_rate"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_output_without_json(tiny, capsys):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "infless"], capsys)
    assert code == 0, err
    assert "infless" in out and "SLO hit" in out


@pytest.mark.parametrize("value", ["load=0", "load=-1", "load=abc", "load=1,,2", "load=inf", "speed=1", "1,2"])
def test_bad_sweep_values_exit_2_before_running(tiny, capsys, value):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", "--sweep", value], capsys)
    assert code == 2
    assert err.startswith("error: --sweep:") and err.count("\n") == 1
    assert out == ""


def test_parse_sweep_values():
    assert parse_sweep(None) == [1.0]
    assert parse_sweep("load=0.5, 1,4") == [0.5, 1.0, 4.0]
    with pytest.raises(UserError):
        parse_sweep("load=")


def test_unknown_policy_lists_registered_ones(tiny, capsys):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static,nosuch"], capsys)
    assert code == 2
    for name in ("infless", "fastgshare", "static", "batch1-wholegpu"):
        assert name in err
    assert "nosuch" in err


@pytest.mark.parametrize("flag", ["--plot", "--csv"])
def test_unwritable_output_exit_2_before_running(tiny, tmp_path, capsys, flag):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", flag, str(tmp_path / "nodir" / "x")], capsys)
    assert code == 2
    assert err.startswith(f"error: {flag}:") and err.count("\n") == 1
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", flag, str(tmp_path)], capsys)
    assert code == 2 and "directory" in err


def test_console_script_exit_code(tiny):
    exe = sys.executable.replace("python", "gpufaas")
    p = subprocess.run([exe, "sim", "--scenario", str(tiny), "--sweep", "load=-3"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "--sweep" in p.stderr


def test_jobs_run_the_cells_in_processes_with_the_same_numbers(tiny, capsys):
    """-j 2 runs the (policy, load) cells in a process pool; everything but the wall-clock fields is
    what -j 1 gives, in the same order."""
    runs = {}
    for j in ("1", "2"):
        code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "esg,static", "--sweep", "load=0.5,2",
                               "--set", "esg.epsilon=0", "-j", j, "--json"], capsys)
        assert code == 0, err
        runs[j] = [{k: v for k, v in r.items() if k not in ("sim_wall_s", "decision_us")} for r in json.loads(out)["results"]]
    assert [(r["policy"], r["load"]) for r in runs["2"]] == [("esg", 0.5), ("static", 0.5), ("esg", 2.0), ("static", 2.0)]
    assert runs["1"] == runs["2"]


def test_a_sweep_a_timestamps_trace_cannot_replay_is_refused_before_the_first_run(tmp_path, capsys):
    """A timestamps trace can only be thinned: --sweep load=0.5,2 is refused with exit 2 before any run,
    and no CSV is written half-way."""
    import yaml

    data = yaml.safe_load((SCENARIOS / "chain.yaml").read_text())
    data.update(name="ts", duration_s=2)
    for key in ("functions", "workflows"):
        data[key] = [str((SCENARIOS / p).resolve()) for p in data[key]]
    data["cluster"] = str((SCENARIOS / data["cluster"]).resolve())
    (tmp_path / "ts.csv").write_text("t_ms\n" + "".join(f"{i * 50}\n" for i in range(40)))
    trace = {"format": "timestamps", "path": str(tmp_path / "ts.csv"), "workflows": ["image-classify"]}
    data["workload"] = {"traces": [trace]}
    p = tmp_path / "ts.yaml"
    p.write_text(yaml.safe_dump(data))
    out_csv = tmp_path / "o.csv"
    code, out, err = run_cli(["sim", "--scenario", str(p), "--policy", "static", "--sweep", "load=0.5,2", "--csv", str(out_csv)], capsys)
    assert code == 2 and out == "" and not out_csv.exists()
    assert "--sweep: load 2 is above what the timestamps trace" in err and "use loads <= 1" in err
    code, out, err = run_cli(["sim", "--scenario", str(p), "--policy", "static", "--sweep", "load=0.5", "--json"], capsys)
    assert code == 0, err
