"""A CLI that shows its work (issue 16): sim's narrow table and --wide, the DAG drawing of `ls`, `${VAR}` in
every path of a scenario, every validation error listed, README links inside the repository, and progress
bars that draw on a terminal only (never without a TTY, never with --json)."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from gpufaas.gateway.cli.gateway_cmds import dag_tree
from gpufaas.gateway.cli.sim import NARROW_COLUMNS, RESIDENCY_COLUMNS, WIDE_COLUMNS
from gpufaas.loadgen.scenario import load_scenario
from gpufaas.platform.errors import SpecError
from gpufaas.platform.specs import ClusterSpec, parse
from tests.conftest import FUNCTIONS, ROOT, SCENARIOS
from tests.helpers import run_cli

GPUFAAS = str(Path(sys.executable).parent / "gpufaas")




# ---------------------------------------------------------------- sim: narrow table and --wide


def test_sim_table_is_narrow_by_default_and_wide_on_request(tiny, capsys):
    code, narrow, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "batch1-wholegpu", "--sweep", "load=0.5,1"], capsys)
    assert code == 0, err
    widths = [len(line) for line in narrow.splitlines()]
    assert max(widths) <= 100, narrow
    header = next(line for line in narrow.splitlines() if "policy" in line)
    shown = [c for c in NARROW_COLUMNS if c not in RESIDENCY_COLUMNS]  # one residency policy: no residency columns
    assert [c for _, c in sorted((header.index(c), c) for c in shown)] == shown  # all, in order
    for col in ("SLO hit", "p99 ms", "alloc $", "busy $"):
        assert col in header
    assert "decide p99 us" not in narrow and narrow.count("batch1-wholegpu") == 2
    code, wide, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "batch1-wholegpu", "--sweep", "load=0.5,1", "--wide"], capsys)
    assert code == 0, err
    wide_header = next(line for line in wide.splitlines() if "policy" in line)
    assert all(c in wide_header for c in WIDE_COLUMNS), wide_header
    assert max(len(line) for line in wide.splitlines()) > 100


def test_sim_json_is_the_same_with_or_without_wide(tiny, capsys):
    docs = []
    for extra in ([], ["--wide"]):
        code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "batch1-wholegpu", "--json", *extra], capsys)
        assert code == 0 and err == "", err
        doc = json.loads(out)
        for r in doc["results"]:
            r.pop("sim_wall_s")
            r.pop("decision_us")
        docs.append(doc)
    assert docs[0] == docs[1]
    assert {"invocations", "slo_hit_rate", "cost", "latency_ms", "cold_starts", "mean_batch"} <= set(docs[0]["results"][0])


# ---------------------------------------------------------------- ls: the DAG drawn as a tree


def _tree_lines(wf_file: Path) -> list[str]:
    wf = yaml.safe_load(wf_file.read_text())
    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None).print(dag_tree(wf["name"], wf["slo_ms"], wf["stages"]))
    return buf.getvalue().splitlines()


def _children(lines: list[str], parent: str) -> list[str]:
    """The stage names drawn one level under the line that starts with `parent`."""
    at = next(i for i, line in enumerate(lines) if re.search(rf"[─ ]{re.escape(parent)} \(", line))
    col = re.search(rf"{re.escape(parent)} \(", lines[at]).start()
    kids = []
    for line in lines[at + 1:]:
        m = re.search(r"[─] (-> )?([a-z0-9_.-]+)", line)
        if m is None or m.start(2) <= col:
            break
        name_col = m.start(2) - (3 if m.group(1) else 0)
        if name_col == col + 4:
            kids.append(("-> " if m.group(1) else "") + m.group(2))
    return kids


def test_ls_tree_draws_fan_out_under_the_parent_and_fan_in_once():
    lines = _tree_lines(FUNCTIONS / "workflows" / "video-analytics.yaml")
    assert "video-analytics" in lines[0] and "300 ms" in lines[0]
    assert _children(lines, "decode") == ["detect"]
    assert _children(lines, "detect") == ["classify", "attributes", "scene"]  # the fan-out, all under detect
    # the fan-in stage is drawn once, says what it waits for; its other predecessors point at it
    assert sum(bool(re.search(r"─ fuse \(", line)) for line in lines) == 1
    assert "waits for classify, attributes, scene" in next(line for line in lines if "─ fuse (" in line)
    assert _children(lines, "classify") == ["-> fuse"] and _children(lines, "attributes") == ["-> fuse"]
    assert _children(lines, "scene") == ["fuse"]


def test_ls_tree_of_a_chain_is_a_chain():
    lines = _tree_lines(FUNCTIONS / "workflows" / "text-pipeline.yaml")
    assert _children(lines, "intent") == ["encode"] and _children(lines, "encode") == ["decide"]
    assert not any("->" in line or "waits for" in line for line in lines)


# ---------------------------------------------------------------- ${VAR} in every path of a scenario


def _env_scenario(tmp_path: Path) -> Path:
    data = yaml.safe_load((SCENARIOS / "chain.yaml").read_text())
    data.update(name="envs", duration_s=1,
                cluster="${CLUSTERS_DIR}/a100x4.yaml",
                functions=["${FN_DIR}/preprocess", "${FN_DIR:-/nowhere}/resnet50"],
                workflows=["${WF_DIR}/image-classify.yaml"],
                profiles="${PROFILES_DIR}")
    p = tmp_path / "envs.yaml"
    p.write_text(yaml.safe_dump(data))
    (tmp_path / "my-profiles").mkdir()
    return p


ENV = {"CLUSTERS_DIR": str(SCENARIOS / "clusters"), "FN_DIR": str(FUNCTIONS), "WF_DIR": str(FUNCTIONS / "workflows")}


def test_scenario_expands_vars_in_every_path(tmp_path, monkeypatch):
    p = _env_scenario(tmp_path)
    for k, v in {**ENV, "PROFILES_DIR": str(tmp_path / "my-profiles")}.items():
        monkeypatch.setenv(k, v)
    sc = load_scenario(p)
    assert [f.name for f in sc.functions] == ["preprocess", "resnet50"]
    assert sc.workflows[0].name == "image-classify" and sc.cluster.nodes
    assert sc.profiles == str((tmp_path / "my-profiles").resolve())


@pytest.mark.parametrize("unset, field", [
    ("CLUSTERS_DIR", "cluster"), ("FN_DIR", "functions[0]"), ("WF_DIR", "workflows[0]"), ("PROFILES_DIR", "profiles"),
])
def test_unset_var_names_the_variable_and_the_field(tmp_path, monkeypatch, unset, field):
    p = _env_scenario(tmp_path)
    for k, v in {**ENV, "PROFILES_DIR": str(tmp_path / "my-profiles")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(unset)
    with pytest.raises(SpecError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert "\n" not in msg and f": {field}: " in msg and f"${{{unset}}} is not set" in msg, msg


def test_unset_var_through_sim_is_one_line_exit_2(tmp_path):
    p = _env_scenario(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if k != "CLUSTERS_DIR"}, **ENV, "PROFILES_DIR": str(tmp_path)}
    del env["CLUSTERS_DIR"]
    r = subprocess.run([GPUFAAS, "sim", "--scenario", str(p), "--policy", "batch1-wholegpu"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cluster: ${CLUSTERS_DIR} is not set" in r.stderr


# ---------------------------------------------------------------- every validation error, one per line


def test_validation_error_lists_every_error_with_its_field_path():
    bad = {"gpu_types": [{"name": "A", "memory_mb": -1, "price_per_hour_usd": 0}],
           "nodes": [{"name": "n0", "gpu_type": "A", "gpus": 99}], "netwrk": {}}
    with pytest.raises(SpecError) as e:
        parse(ClusterSpec, bad, "c.yaml")
    lines = str(e.value).splitlines()
    assert "more error" not in str(e.value)
    assert len(lines) == 4, lines
    assert all(line.startswith("c.yaml: ") for line in lines)
    paths = [line.split(": ")[1] for line in lines]
    assert paths == ["gpu_types.0.memory_mb", "gpu_types.0.price_per_hour_usd", "nodes.0.gpus", "netwrk"]
    assert "unknown field" in lines[3]


def test_sim_prints_every_scenario_error_one_per_line(tmp_path):
    data = yaml.safe_load((SCENARIOS / "chain.yaml").read_text())
    data.update(duration_s=-1, drain_s=-2, seeed=3)
    for key in ("functions", "workflows"):
        data[key] = [str((SCENARIOS / p).resolve()) for p in data[key]]
    data["cluster"] = str((SCENARIOS / data["cluster"]).resolve())
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    r = subprocess.run([GPUFAAS, "sim", "--scenario", str(p), "--policy", "batch1-wholegpu"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"error: {p}: ") for line in lines), r.stderr
    assert {line.split(": ")[2] for line in lines} == {"duration_s", "drain_s", "seeed"}


# ---------------------------------------------------------------- README links stay inside the repository


def test_readme_links_point_inside_the_repository():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)", text) + re.findall(r'(?:href|src)="([^"]+)"', text)
    assert targets
    for t in targets:
        if t.startswith(("http://", "https://", "#", "mailto:")):
            continue
        p = (ROOT / t.split("#")[0]).resolve()
        assert p.is_relative_to(ROOT), f"README links outside the repository: {t}"
        assert p.exists(), f"README links to a missing file: {t}"


# ---------------------------------------------------------------- progress: on a terminal only


def _with_tty_stderr(argv: list[str]) -> tuple[int, str, str]:
    """Run `argv` with stderr on a pseudo-terminal and stdout on a pipe; (exit code, stdout, what the
    terminal got). Reads the terminal to the end, then waits: no timing involved."""
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="120")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    out = p.stdout.read().decode()
    return p.wait(timeout=300), out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # runs `gpufaas` in a subprocess: `make test`, not `make test-fast`
def test_sim_progress_only_on_a_terminal_and_never_with_json(tiny):
    argv = [GPUFAAS, "sim", "--scenario", str(tiny), "--policy", "batch1-wholegpu", "--sweep", "load=0.5,1,2,4"]
    code, out_tty, term = _with_tty_stderr(argv)
    assert code == 0, term
    assert "sim tiny" in term and "4/4" in term  # the bar: the scenario and the cells done
    plain = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr  # no terminal: no progress at all
    assert plain.stdout == out_tty  # and the report is the same either way
    code, out, term = _with_tty_stderr(argv + ["--json"])
    assert code == 0 and term == "", term
    assert len(json.loads(out)["results"]) == 4


@pytest.mark.slow  # runs `gpufaas` in a subprocess: `make test`, not `make test-fast`
def test_bench_progress_never_with_json_or_without_a_terminal():
    argv = [GPUFAAS, "bench", "sim", "--duration", "1", "--requests", "200", "--repeat", "1"]  # progress, not speed: a small run
    code, out, term = _with_tty_stderr(argv + ["--json"])
    assert code == 0 and term == "", term
    assert json.loads(out)["invocations"] > 0
    plain = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert plain.returncode == 0 and plain.stderr == "" and plain.stdout.startswith("sim: {"), plain.stderr
