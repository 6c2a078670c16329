"""One workload, two runs: live over HTTP against the real gateway (inproc backend, emulated GPUs) and
simulated on the virtual clock; they must agree on the number of invocations per workflow."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytestmark = pytest.mark.live  # starts processes (gateway, workers, HTTP servers): not in `make test-fast`

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = """
name: agree
duration_s: 2
drain_s: 10
seed: 5
cluster: {root}/loadgen/scenarios/clusters/a100x4.yaml
functions: [{fn}/preprocess, {fn}/resnet50, {fn}/distilbert, {fn}/bert-base, {fn}/aggregator]
workflows: [{fn}/workflows/image-classify.yaml, {fn}/workflows/text-pipeline.yaml]
workload:
  streams:
    - {{workflow: image-classify, arrival: poisson, rate_rps: 15}}
    - {{workflow: text-pipeline, arrival: gamma, rate_rps: 8, cv: 2}}
  traces:
    - {{format: timestamps, path: {fix}/timestamps_small.csv, workflows: [image-classify, text-pipeline], time_scale: 2}}
"""


async def test_live_and_sim_agree_on_invocations_per_workflow(tmp_path):
    from aiohttp.test_utils import TestServer

    from gpufaas.gateway.app import create_app
    from gpufaas.gateway.client import Client, deploy_stack, load_stack
    from gpufaas.gateway.config import GatewayConfig
    from gpufaas.loadgen import live_report
    from gpufaas.loadgen.driver import Driver
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.simdriver import run_scenario

    text = SCENARIO.format(root=ROOT, fn=ROOT / "functions", fix=ROOT / "tests" / "fixtures")
    # the fixture's workflow column names wf-a / wf-b: give the trace a copy naming the real workflows
    ts = (ROOT / "tests" / "fixtures" / "timestamps_small.csv").read_text().replace("wf-a", "image-classify").replace("wf-b", "text-pipeline")
    (tmp_path / "ts.csv").write_text(ts)
    (tmp_path / "sc.yaml").write_text(text.replace(f"{ROOT / 'tests' / 'fixtures'}/timestamps_small.csv", "ts.csv"))
    # the live driver reports every request: the simulation counts every arrival too (no warm-up cut)
    sc = load_scenario(tmp_path / "sc.yaml").model_copy(update={"warmup_s": 0.0})

    sim = run_scenario(sc, "batch1-wholegpu")

    cfg = GatewayConfig(backend="inproc", data_dir=tmp_path / "gw", port=0, policy="batch1-wholegpu")
    async with TestServer(create_app(cfg)) as srv:
        url = str(srv.make_url("")).rstrip("/")
        stack = tmp_path / "stack.yaml"
        stack.write_text("version: \"1\"\nfunctions: [" + ", ".join(f"{ROOT}/functions/{f}" for f in
                         ("preprocess", "resnet50", "distilbert", "bert-base", "aggregator")) +
                         f"]\nworkflows: [{ROOT}/functions/workflows/image-classify.yaml, {ROOT}/functions/workflows/text-pipeline.yaml]\n")
        await asyncio.get_running_loop().run_in_executor(None, lambda: deploy_stack(Client(url), load_stack(stack)))
        run = await Driver(url, sc.workload, seed=sc.seed, duration_s=sc.duration_s, timeout_s=30, source=str(tmp_path / "sc.yaml")).run()
    live = live_report.summarize(run)

    live_counts = {w: d["sent"] for w, d in live["per_workflow"].items()}
    sim_counts = {w: d["invocations"] for w, d in sim["per_workflow"].items()}
    assert live_counts == sim_counts
    assert sum(live_counts.values()) == sim["invocations"] > 30
    assert live["sent"] == live["completed"] + live["error_count"]  # every request ended in the report
    assert "unfinished" not in live["errors"]
