"""Done-when of issue 5: the controller runs the shipped workflows end to end on real worker processes
(process backend, functions/ bundles), in `emulated` and in `real` mode; every invocation completes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gpufaas.platform.backends.process import ProcessBackend
from gpufaas.platform.clock import LoopClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.runtime import InvocationStatus
from gpufaas.platform.specs import FunctionSpec, WorkflowSpec, load_yaml
from tests.conftest import FUNCTIONS
from tests.helpers import cluster

pytestmark = pytest.mark.live  # starts processes (gateway, workers, HTTP servers): not in `make test-fast`

VIDEO_FUNCTIONS = ["preprocess", "ssdlite", "resnet50", "mobilenet-v2", "vit-b16", "aggregator"]


async def run_workflows(tmp_path, execute: str, workflows: list[str], functions: list[str], n: int) -> tuple[Controller, list]:
    clock = LoopClock()
    backend = ProcessBackend(clock, execute=execute, bundle_dir=lambda name: FUNCTIONS / name, threads_per_worker=1,
                             workdir=tmp_path / "run", hang_timeout_s=120)
    ctl = Controller(cluster(len(functions)), Profiles.shipped(), builtin_registry().make("batch1-wholegpu"), backend, clock,
                     live=True, keep_alive_s=600)
    for f in functions:
        ctl.deploy_function(load_yaml(FUNCTIONS / f / "function.yaml", FunctionSpec))
    for w in workflows:
        ctl.deploy_workflow(load_yaml(FUNCTIONS / "workflows" / f"{w}.yaml", WorkflowSpec))
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(0)

    def payload(wf: str):
        if wf == "text-pipeline":
            return {"tokens": rng.integers(1, 30000, 64).astype(np.int64)}
        return {"frame": rng.integers(0, 256, (3, 256, 256)).astype(np.uint8)}

    futs = []
    try:
        for i in range(n):
            for wf in workflows:
                fut = loop.create_future()
                ctl.submit(wf, payload(wf) if i % 2 == 0 else None, on_done=lambda inv, f=fut: f.done() or f.set_result(inv))
                futs.append(fut)
        invs = await asyncio.wait_for(asyncio.gather(*futs), 240)
        infos = {i.function.name: dict(i.info) for i in ctl.instances.values()}
    finally:
        ctl.shutdown()
        await backend.aclose()
    return ctl, [invs, infos]


def check(invs: list, infos: dict, execute: str, functions: list[str]) -> None:
    for inv in invs:
        assert inv.status == InvocationStatus.COMPLETED, inv.reason
        stages = inv.workflow.stages
        last = [s.index for s in stages if not s.succs]
        for i in last:
            out = inv.outputs[i]
            assert out and all(isinstance(v, np.ndarray) for v in out.values())
        for s in stages:
            start, end = inv.stage_ns[s.index]
            assert 0 <= start <= end
    assert infos and set(infos) <= set(functions)  # (the policy may have stopped an idle one to make room)
    for info in infos.values():
        assert info["execute"] == execute and info["cold_start_ms"] > 0 and {"spawn_ms", "imports_ms", "model_build_ms", "first_batch_ms"} <= set(info)


async def test_all_workflows_emulated(tmp_path) -> None:
    fns = sorted(p.parent.name for p in FUNCTIONS.glob("*/handler.py"))
    ctl, (invs, infos) = await run_workflows(tmp_path, "emulated", ["video-analytics", "image-classify", "text-pipeline"], fns, 4)
    check(invs, infos, "emulated", fns)
    video = [inv for inv in invs if inv.workflow.name == "video-analytics"]
    assert all(inv.outputs[-1]["decision"].shape == (16,) for inv in video)
    assert ctl.acct.completed == len(invs) == 12 and ctl.acct.failed == 0


@pytest.mark.slow
async def test_video_analytics_real(tmp_path) -> None:
    ctl, (invs, infos) = await run_workflows(tmp_path, "real", ["video-analytics"], VIDEO_FUNCTIONS, 3)
    check(invs, infos, "real", VIDEO_FUNCTIONS)
    fuse = [inv.outputs[inv.workflow.by_name["fuse"].index]["decision"] for inv in invs]
    assert all(f.shape == (16,) and np.isfinite(f).all() for f in fuse)
    # different frames give different decisions: the models really ran on the data
    assert not np.allclose(fuse[0], fuse[1])
    assert all(info["model_build_ms"] > 0 for info in infos.values())
    assert ctl.acct.completed == 3
