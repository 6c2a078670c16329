"""`gpufaas status` and the `ls` DAG drawing against a real gateway process (started as in test_cli_gateway.py);
`deploy` without a terminal prints no progress."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from gpufaas.gateway.demo import free_port
from tests.test_cli_gateway import STACK, cli, one_line_error, start, stop

pytestmark = pytest.mark.live  # starts a gateway process: not in `make test-fast`


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A gateway with the example stack deployed and one video-analytics invocation done."""
    port = free_port()
    p = start(tmp_path_factory.mktemp("gw"), port, "--cold-start-scale", "0")
    url = f"http://127.0.0.1:{port}"
    try:
        d = cli("deploy", "-f", str(STACK), gateway=url)
        assert d.returncode == 0 and d.stderr == "", d.stderr  # no terminal: no progress, no stray line
        assert "video-analytics" in d.stdout
        inv = cli("invoke", "video-analytics", "--slo-ms", "5000", "--json", gateway=url)
        assert json.loads(inv.stdout)["status"] == "completed", inv.stdout + inv.stderr
        yield url
    finally:
        assert stop(p) == 0


def test_status_json_combines_cluster_instances_queues_and_usage(deployed):
    p = cli("status", "--json", gateway=deployed)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    doc = json.loads(p.stdout)
    assert doc["gateway"] == deployed
    assert set(doc) == {"gateway", "cluster", "usage", "functions", "workflows"}
    cl = doc["cluster"]
    assert len(cl["gpus"]) == 4 and cl["policy"] == "batch1-wholegpu"
    fns = {i["function"] for i in cl["instances"]}  # the video stages ran (whole GPUs: the last four stay)
    assert fns and fns <= {"preprocess", "ssdlite", "resnet50", "mobilenet-v2", "vit-b16", "aggregator"}, fns
    assert sorted(i["id"] for i in cl["instances"]) == sorted(x for g in cl["gpus"] for x in g["instances"])
    assert {q["workflow"] for q in cl["queues"]} == {"image-classify", "text-pipeline", "video-analytics"}
    assert doc["usage"]["invocations"] >= 1 and doc["usage"]["completed"] >= 1
    assert len(doc["functions"]) == 8 and len(doc["workflows"]) == 3


def test_status_for_people_shows_each_gpu_its_share_memory_and_instances(deployed):
    doc = json.loads(cli("status", "--json", gateway=deployed).stdout)
    p = cli("status", gateway=deployed)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    out = p.stdout
    assert "policy batch1-wholegpu" in out and "GPUs" in out and "usage" in out
    for g in doc["cluster"]["gpus"]:
        used = g["share_units"] - g["free_units"]
        row = next(line for line in out.splitlines() if re.match(rf"│ {g['id']}\s+│ {g['node']}", line))
        assert f"{used}/{g['share_units']}" in row and f"{g['memory_mb'] - g['free_mb']:.0f}/{g['memory_mb']:.0f}" in row
        for i in doc["cluster"]["instances"]:
            if i["gpu"] == g["id"]:
                assert i["function"] in row, (row, i)


def test_status_without_a_gateway_is_one_line_exit_3():
    one_line_error(cli("status", gateway=f"http://127.0.0.1:{free_port()}"), 3, "no gateway at")
    one_line_error(cli("status", "--json", gateway=f"http://127.0.0.1:{free_port()}"), 3, "no gateway at")


def test_ls_draws_the_video_fan_out_under_detect(deployed):
    p = cli("ls", gateway=deployed)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    start_at = next(i for i, line in enumerate(lines) if line.startswith("video-analytics"))
    block = lines[start_at:start_at + 9]
    detect_col = next(line.index("detect") for line in block if "detect (" in line)
    for stage in ("classify", "attributes", "scene"):
        line = next(line for line in block if re.search(rf"─ {stage} \(", line))
        assert line.index(stage) == detect_col + 4, block  # one level under detect: a fan-out, not a chain
    assert sum("fuse (aggregator)" in line for line in block) == 1


def test_loadgen_progress_only_on_a_terminal_and_never_with_json():
    """`gpufaas loadgen` against the benchmark's trivial server: a bar (elapsed/planned s, sent, completed)
    on a terminal's stderr; nothing on stderr with --json or without a terminal, and the same JSON."""
    from gpufaas.loadgen import standin
    from tests.test_cli_shows_work import GPUFAAS, _with_tty_stderr

    proc, port = standin.start("gpufaas.loadgen.standin")
    url = f"http://127.0.0.1:{port}"
    try:
        argv = [GPUFAAS, "loadgen", "--gateway", url, "--workflow", "bench", "--rate", "40", "--arrival", "constant",
                "--duration", "1.5"]
        code, out, term = _with_tty_stderr(argv)
        assert code == 0, term
        assert re.search(r"/1\.5 s\s+sent \d+\s+completed \d+", term), term
        code, out, term = _with_tty_stderr(argv + ["--json"])
        assert code == 0 and term == "", term
        assert json.loads(out)["sent"] == 60
        plain = subprocess.run(argv + ["--json"], capture_output=True, text=True, timeout=120)
        assert plain.returncode == 0 and plain.stderr == "" and json.loads(plain.stdout)["sent"] == 60
        code, out, term = _with_tty_stderr([GPUFAAS, "bench", "loadgen", "--rate", "50", "--duration", "1", "--json"])
        assert code == 0 and term == "" and json.loads(out)["sent"] > 0, term
    finally:
        proc.terminate()
        proc.wait(timeout=10)
