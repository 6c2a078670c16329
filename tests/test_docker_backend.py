"""Docker backend against a real engine: cold start, warm reuse, keep-alive removal, a container killed
mid-batch, an OOM kill, orphan clean-up, a failing image build, a remote engine refused, and the
video-analytics workflow end to end. The containers run the platform's one worker (platform/worker.py).

The engine is started when none runs (root + dockerd installed; .ci/run prepares it through
deploy/ci-prepare-docker.sh); the module is skipped, with the reason, only when no engine can be
started. The base image is built once from a debootstrap rootfs and cached by its recipe hash.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest

from gpufaas.platform import images
from gpufaas.gateway.cli.bench_dispatch import bench_function, measure
from gpufaas.platform.backends.docker_backend import DockerBackend, container_count
from gpufaas.platform.clock import LoopClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.errors import UserError
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.runtime import InvocationStatus
from gpufaas.platform.specs import FunctionSpec, WorkflowSpec, load_yaml

from tests.helpers import chain, cluster, function

pytestmark = pytest.mark.docker

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"
VIDEO = ["preprocess", "ssdlite", "resnet50", "mobilenet-v2", "vit-b16", "aggregator"]


def _scope() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def _prepared(engine, **kw) -> DockerBackend:
    be = DockerBackend(scope=kw.pop("scope", None) or _scope(), client=engine, **kw)
    await asyncio.get_running_loop().run_in_executor(None, be.prepare)
    return be


def _controller(be, *, gpus=1, nodes=1, keep_alive_s=60.0, fns=(), wfs=()):
    ctl = Controller(cluster(gpus, nodes), Profiles.shipped(), builtin_registry().make("batch1-wholegpu"), be,
                     LoopClock(), live=True, keep_alive_s=keep_alive_s)
    for f in fns:
        be.prepare_function(f)
        ctl.deploy_function(f)
    for w in wfs:
        ctl.deploy_workflow(w)
    ctl.events = []  # (event, instance id, reason) for failure messages
    ctl.on_instance_event = lambda ev, inst: ctl.events.append((ev, inst.id, inst.info.get("container")))
    return ctl


async def _invoke(ctl, workflow, payload, timeout_s=60.0):
    fut = asyncio.get_running_loop().create_future()
    ctl.submit(workflow, payload, on_done=lambda inv: fut.done() or fut.set_result(inv))
    return await asyncio.wait_for(fut, timeout_s)


async def _until(cond, timeout_s=15.0, step_s=0.05):
    for _ in range(int(timeout_s / step_s)):
        if cond():
            return True
        await asyncio.sleep(step_s)
    return cond()


async def test_cold_start_then_warm_reuse_with_labels_and_limits(engine):
    be = await _prepared(engine, cpus_per_instance=0.5, memory_mb_per_instance=256, gpu_passthrough="on")
    try:
        fn = load_yaml(FUNCTIONS / "ssdlite" / "function.yaml", FunctionSpec)
        ctl = _controller(be, fns=[fn], wfs=[chain("wf", ["ssdlite"])])
        image = np.zeros((3, 224, 224), dtype=np.float16)
        first = await _invoke(ctl, "wf", {"image": image})
        assert first.status == InvocationStatus.COMPLETED, first.reason
        assert first.outputs[0]["boxes"].shape == (100, 4), "emulated: zeros of the declared output shapes"
        (inst,) = ctl.instances.values()
        parts = inst.info
        for k in ("create_ms", "start_ms", "worker_ready_ms", "cold_start_ms", "imports_ms"):
            assert parts[k] > 0, k
        assert parts["cold_start_ms"] >= parts["create_ms"] + parts["start_ms"] + parts["worker_ready_ms"] - 1
        assert parts["worker"]["execute"] == "emulated" and parts["worker"]["token"] == str(inst.id)
        for i in range(5):
            inv = await _invoke(ctl, "wf", {"image": image + i})
            assert inv.status == InvocationStatus.COMPLETED, inv.reason
        assert ctl.acct.cold_starts == 1, "warm invocations must reuse the container"
        (c,) = engine.containers.list(filters={"label": f"gpufaas.scope={be.scope}"})
        assert c.labels["gpufaas.function"] == "ssdlite" and c.labels["gpufaas.instance"] == str(inst.id)
        hc = c.attrs["HostConfig"]
        assert hc["NanoCpus"] == 500_000_000 and hc["Memory"] == 256 * 1024 * 1024
        assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
        env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])  # the GPU and its share reach the container
        assert env["NVIDIA_VISIBLE_DEVICES"] == "0" and env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"
    finally:
        be.close()
    assert container_count(engine, be.scope) == 0


async def test_worker_checks_numpy_payloads_against_the_spec(engine):
    be = await _prepared(engine)
    try:
        fn = function("frames", model="preprocess", inputs={"frame": {"dtype": "float16", "shape": [3, 4]}},
                      outputs={"y": {"dtype": "float32", "shape": [2]}})
        ctl = _controller(be, fns=[fn], wfs=[chain("wf", ["frames"])])
        for i in range(2):
            inv = await _invoke(ctl, "wf", {"frame": np.arange(12, dtype=np.float16).reshape(3, 4) + i})
            assert inv.status == InvocationStatus.COMPLETED, inv.reason
            y = inv.outputs[0]["y"]  # emulated: zeros of the declared shape, made in the container
            assert y.shape == (2,) and y.dtype == np.float32 and not y.any()
        bad = await _invoke(ctl, "wf", {"frame": np.zeros((3, 5), dtype=np.float16)})
        assert bad.status == InvocationStatus.FAILED, bad.reason
        assert "bad input: input 'frame': expected float16[3, 4], got float16[3, 5]" in bad.reason, bad.reason
        # the refused item fails its own invocation (no retry: it would fail again); the container lives on
        assert ctl.acct.retries == 0 and ctl.acct.cold_starts == 1
        assert (await _invoke(ctl, "wf", {"frame": np.ones((3, 4), dtype=np.float16)})).status == InvocationStatus.COMPLETED
    finally:
        be.close()


async def test_keep_alive_expiry_stops_and_removes_the_container(engine):
    be = await _prepared(engine)
    try:
        ctl = _controller(be, keep_alive_s=0.5, fns=[function("echo", model="preprocess")], wfs=[chain("wf", ["echo"])])
        assert (await _invoke(ctl, "wf", {})).status == InvocationStatus.COMPLETED
        assert container_count(engine, be.scope) == 1
        assert await _until(lambda: not ctl.instances and container_count(engine, be.scope) == 0, 15), \
            "the container outlived its keep-alive"
    finally:
        be.close()


async def test_container_killed_mid_batch_retries_on_a_replacement(engine):
    be = await _prepared(engine)
    try:
        ctl = _controller(be, fns=[function("echo", model="preprocess", outputs={})], wfs=[chain("wf", ["echo"])])
        assert (await _invoke(ctl, "wf", {"warm": 1})).status == InvocationStatus.COMPLETED
        (inst,) = ctl.instances.values()
        victim = inst.info["container"]
        be.test_hold_ms = 3000.0
        fut = asyncio.get_running_loop().create_future()
        ctl.submit("wf", {"x": 2}, on_done=lambda inv: fut.set_result(inv))
        assert await _until(lambda: inst.current is not None and inst.current.start_ns > 0)
        # the batch is on the instance (dispatched, 3-5 s hold): a kill now is a kill mid-batch
        await asyncio.get_running_loop().run_in_executor(None, lambda: engine.containers.get(victim).kill())
        be.test_hold_ms = None
        inv = await asyncio.wait_for(fut, 60)
        assert inv.status == InvocationStatus.COMPLETED, inv.reason
        assert ctl.acct.retries == 1 and ctl.acct.cold_starts == 2, ctl.events
        (repl,) = ctl.instances.values()
        assert repl.id != inst.id and repl.info["container"] != victim
        assert await _until(lambda: victim not in {c.id[:12] for c in engine.containers.list(all=True)}), \
            "the killed container was not removed"
    finally:
        be.close()


async def test_oom_killed_container_fails_the_invocation_with_the_reason(engine):
    be = await _prepared(engine, memory_mb_per_instance=96)
    try:
        ctl = _controller(be, fns=[function("echo", model="preprocess")], wfs=[chain("wf", ["echo"])])
        assert (await _invoke(ctl, "wf", {})).status == InvocationStatus.COMPLETED
        # a 128 MB item cannot be received within 96 MB: every attempt is OOM-killed, retried once, then failed
        inv = await _invoke(ctl, "wf", {"blob": np.zeros(32 * 2**20, dtype=np.float32)})
        assert inv.status == InvocationStatus.FAILED
        assert "after 2 attempt(s)" in inv.reason and "OOM-killed" in inv.reason, inv.reason
        assert ctl.acct.retries == 1
    finally:
        be.close()


async def test_orphans_of_a_crashed_gateway_are_removed_at_start_up(engine):
    scope = _scope()
    crashed = await _prepared(engine, scope=scope)
    ctl = _controller(crashed, gpus=2, fns=[function("echo", model="preprocess")], wfs=[chain("wf", ["echo"])])
    await asyncio.gather(_invoke(ctl, "wf", {}), _invoke(ctl, "wf", {}))
    assert container_count(engine, scope) >= 1
    # the gateway "crashes": nothing is closed; a new one starts in the same scope
    fresh = await _prepared(engine, scope=scope)
    try:
        assert fresh.orphans_removed >= 1
        assert container_count(engine, scope) == 0
    finally:
        fresh.close()


async def test_failing_image_build_refuses_the_deploy_with_the_log_tail(engine):
    be = await _prepared(engine)
    try:
        with pytest.raises(images.ImageBuildError) as err:
            be.prepare_function(function("broken", model="preprocess"), extra_steps="RUN echo about-to-fail && exit 3\n")
        msg = str(err.value)
        assert "broken" in msg and "build log tail" in msg and "about-to-fail" in msg and "\n" not in msg
    finally:
        be.close()


def test_a_remote_engine_is_refused_at_prepare(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    with pytest.raises(UserError, match="DOCKER_HOST=tcp://10.0.0.1:2375 is remote; .* the engine must run here"):
        DockerBackend(scope="remote").prepare()


def test_no_engine_is_a_clear_error_at_prepare(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/gpufaas-test.sock")
    be = DockerBackend(scope="noengine")
    with pytest.raises(UserError, match="no Docker engine reachable at unix:///nonexistent/gpufaas-test.sock"):
        be.prepare()


async def test_video_analytics_end_to_end(engine):
    be = await _prepared(engine, memory_mb_per_instance=256)
    try:
        fns = [load_yaml(FUNCTIONS / f / "function.yaml", FunctionSpec) for f in VIDEO]
        wf = load_yaml(FUNCTIONS / "workflows" / "video-analytics.yaml", WorkflowSpec)
        ctl = _controller(be, gpus=4, nodes=2, fns=fns, wfs=[wf])
        # NOTE: one invocation at a time: batch1-wholegpu gives each concurrent request its own instance, and
        # six containers importing the worker at once is what two shared cores can take in a test.
        invs = [await _invoke(ctl, "video-analytics", {"frame": np.full((3, 256, 256), i, dtype=np.uint8)}, 120)
                for i in range(2)]
        assert all(i.status == InvocationStatus.COMPLETED for i in invs), [i.reason for i in invs]
        # emulated: every stage returns zeros of its declared output shapes, produced in the container
        for inv in invs:
            fused = inv.outputs[-1]["decision"]
            assert fused.shape == (16,) and fused.dtype == np.float32 and not fused.any()
            assert inv.outputs[1]["boxes"].shape == (100, 4)
        assert all(g is not None for i in invs for g in i.out_gpu), "every stage ran on an instance"
        assert ctl.acct.cold_starts >= len(VIDEO)
        assert container_count(engine, be.scope) == len(ctl.instances)
    finally:
        be.close()


async def test_bench_dispatch_figures(engine, tmp_path):
    spec, bundle = bench_function("emulated", "", tmp_path)
    r = await measure(DockerBackend(scope=_scope(), client=engine), spec, bundle, num_warm=50)  # closes the backend
    assert r["backend"] == "docker" and r["num_warm"] == 50
    assert 0 < r["warm_rtt_ms"]["p50"] <= r["invocation_rtt_ms"]["p50"]
    # the same names as the process backend's figures (tests/test_process_backend.py) where they mean the same
    assert r["cold_start_ms"] > 0
    assert set(r["cold_start_parts_ms"]) >= {"create_ms", "start_ms", "worker_ready_ms", "imports_ms", "model_build_ms", "first_batch_ms"}

