"""The process backend with real worker processes (emulated mode): cold vs warm start, keep-alive expiry,
a worker killed mid-batch, a hung worker, a bad payload, a worker that cannot start."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from gpufaas.platform.backends.process import ProcessBackend
from gpufaas.platform.clock import LoopClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.profiles import ColdStartProfile, MemoryProfile, Profile, Profiles
from gpufaas.platform.runtime import InvocationStatus
from gpufaas.platform.specs import FunctionSpec, WorkflowSpec
from tests.helpers import cluster

pytestmark = pytest.mark.live  # starts processes (gateway, workers, HTTP servers): not in `make test-fast`


def setup(tmp_path: Path, *, latency_ms: float = 0.0, gpus: int = 2, keep_alive_s: float = 60.0, max_retries: int = 1,
          heartbeat_s: float = 0.5, hang_timeout_s: float = 30.0, bundle: Path | None = None) -> tuple[Controller, ProcessBackend]:
    """A controller (batch1-wholegpu, live) on a ProcessBackend; one function 'echo' timed by a flat profile."""
    profiles = Profiles.shipped()
    profiles.add(Profile(model="flat", gpu_type="A100-80GB", source="test: flat latency", batches=[1, 8], shares=[0.1, 1.0],
                         latency_ms=[[latency_ms] * 2] * 2, memory=MemoryProfile(instance_mb=1, per_item_mb=0),
                         cold_start=ColdStartProfile(container_ms=0, runtime_init_ms=0, model_load_ms=0)))
    spec = FunctionSpec.model_validate({"name": "echo", "model": "flat", "batch_sizes": [1], "shares": [1.0],
                                        "inputs": {"x": {"dtype": "float32", "shape": [4]}},
                                        "outputs": {"y": {"dtype": "float32", "shape": [2]}}})
    if bundle is None:
        bundle = tmp_path / "echo"
        bundle.mkdir()
        (bundle / "function.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    clock = LoopClock()
    backend = ProcessBackend(clock, execute="emulated", bundle_dir=lambda _n: bundle, heartbeat_s=heartbeat_s,
                             hang_timeout_s=hang_timeout_s, workdir=tmp_path / "run")
    ctl = Controller(cluster(gpus), profiles, builtin_registry().make("batch1-wholegpu"), backend, clock, live=True,
                     keep_alive_s=keep_alive_s, max_retries=max_retries)
    ctl.deploy_function(spec)
    ctl.deploy_workflow(WorkflowSpec.model_validate({"name": "wf", "slo_ms": 60_000, "stages": [{"name": "s", "function": "echo"}]}))
    return ctl, backend


def submit(ctl: Controller, payload=None) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    ctl.submit("wf", payload, on_done=lambda inv: fut.done() or fut.set_result(inv))
    return fut


async def until(cond, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


GOOD = {"x": np.arange(4, dtype=np.float32)}


async def test_cold_then_warm_start(tmp_path: Path) -> None:
    ctl, be = setup(tmp_path)
    try:
        inv = await asyncio.wait_for(submit(ctl, GOOD), 60)
        assert inv.status == InvocationStatus.COMPLETED, inv.reason
        assert inv.outputs[0]["y"].shape == (2,) and inv.outputs[0]["y"].dtype == np.float32
        (inst,) = ctl.instances.values()
        info = inst.info
        for k in ("spawn_ms", "imports_ms", "model_build_ms", "first_batch_ms", "cold_start_ms"):
            assert info[k] >= 0, k
        assert info["cold_start_ms"] >= info["spawn_ms"] + info["imports_ms"] and info["cold_start_ms"] > 0
        assert info["execute"] == "emulated" and alive(info["pid"])
        cold_ms = (inv.finish_ns - inv.arrival_ns) / 1e6
        warm = await asyncio.wait_for(submit(ctl, GOOD), 10)
        assert warm.status == InvocationStatus.COMPLETED
        assert list(ctl.instances.values()) == [inst] and ctl.acct.cold_starts == 1  # same worker, no new start
        assert (warm.finish_ns - warm.arrival_ns) / 1e6 < cold_ms
    finally:
        await be.aclose()
    assert not alive(info["pid"]) or await _reaped(info["pid"])


async def _reaped(pid: int) -> bool:
    await until(lambda: not alive(pid), 5)
    return True


async def test_keep_alive_expiry_kills_the_worker(tmp_path: Path) -> None:
    ctl, be = setup(tmp_path, keep_alive_s=0.3)
    try:
        inv = await asyncio.wait_for(submit(ctl, GOOD), 60)
        assert inv.status == InvocationStatus.COMPLETED
        pid = next(iter(ctl.instances.values())).info["pid"]
        await until(lambda: not ctl.instances, 10)
        await until(lambda: not alive(pid), 10)  # STOP, then killed after the grace period at the latest
    finally:
        await be.aclose()


async def _busy_pid(ctl: Controller, be: ProcessBackend) -> int:
    await until(lambda: any(w.batch is not None and w.proc is not None for w in be._workers.values()), 60)
    w = next(w for w in be._workers.values() if w.batch is not None)
    return w.proc.pid


@pytest.mark.parametrize("max_retries", [1, 0])
async def test_worker_killed_mid_batch(tmp_path: Path, max_retries: int) -> None:
    ctl, be = setup(tmp_path, latency_ms=1500, max_retries=max_retries)
    try:
        fut = submit(ctl, GOOD)
        pid = await _busy_pid(ctl, be)
        os.kill(pid, signal.SIGKILL)
        inv = await asyncio.wait_for(fut, 60)
        assert "exited with code -9 mid-batch" in be.failures[0][1]
        if max_retries:
            assert inv.status == InvocationStatus.COMPLETED, inv.reason  # retried on a fresh instance
            assert ctl.acct.retries == 1 and ctl.acct.cold_starts == 2
        else:
            assert inv.status == InvocationStatus.FAILED
            assert "failed after 1 attempt(s)" in inv.reason and "exited with code -9 mid-batch" in inv.reason
        assert not ctl.inflight  # nothing left pending
    finally:
        await be.aclose()


@pytest.mark.parametrize("detector", ["heartbeat", "batch-timeout"])
async def test_hung_worker_is_killed_and_its_job_retried(tmp_path: Path, detector: str) -> None:
    kw = {"heartbeat_s": 0.2} if detector == "heartbeat" else {"heartbeat_s": 30.0, "hang_timeout_s": 0.5}
    ctl, be = setup(tmp_path, latency_ms=1000, **kw)
    try:
        fut = submit(ctl, GOOD)
        pid = await _busy_pid(ctl, be)
        os.kill(pid, signal.SIGSTOP)
        inv = await asyncio.wait_for(fut, 60)
        assert inv.status == InvocationStatus.COMPLETED, inv.reason
        reason = be.failures[0][1]
        assert "hung" in reason and ("no heartbeat" in reason if detector == "heartbeat" else "not done within" in reason)
        await until(lambda: not alive(pid), 10)  # the stopped worker was killed
    finally:
        await be.aclose()


async def test_bad_payload_fails_that_job_and_the_worker_lives(tmp_path: Path) -> None:
    ctl, be = setup(tmp_path)
    try:
        bad = await asyncio.wait_for(submit(ctl, {"x": np.zeros(5, np.float32)}), 60)
        assert bad.status == InvocationStatus.FAILED
        assert "bad input: input 'x': expected float32[4], got float32[5]" in bad.reason
        pid = next(iter(ctl.instances.values())).info["pid"]
        ok = await asyncio.wait_for(submit(ctl, GOOD), 10)
        assert ok.status == InvocationStatus.COMPLETED
        assert next(iter(ctl.instances.values())).info["pid"] == pid and not be.failures and ctl.acct.retries == 0
    finally:
        await be.aclose()


async def test_worker_that_cannot_start_fails_the_invocation(tmp_path: Path) -> None:
    ctl, be = setup(tmp_path, bundle=tmp_path / "missing")
    try:
        inv = await asyncio.wait_for(submit(ctl, GOOD), 60)
        assert inv.status == InvocationStatus.FAILED
        assert "worker failed to start" in inv.reason and "no function.yaml" in inv.reason
        assert not ctl.instances and not ctl.inflight
    finally:
        await be.aclose()


async def test_bench_dispatch_figures() -> None:
    """The shared dispatch probe on the process backend (built through the registry): figure names."""
    from gpufaas.gateway.cli.bench_dispatch import measure_backend

    r = await measure_backend("process", num_warm=10)
    assert r["backend"] == "process" and r["execute"] == "emulated" and r["num_warm"] == 10
    assert 0 < r["warm_rtt_ms"]["p50"] <= r["invocation_rtt_ms"]["p50"]
    assert r["cold_start_ms"] > 0
    assert set(r["cold_start_parts_ms"]) == {"spawn_ms", "imports_ms", "model_build_ms", "first_batch_ms"}


async def test_instances_starting_together_share_one_bundle_copy(tmp_path: Path) -> None:
    ctl, be = setup(tmp_path)
    try:
        copies = await asyncio.gather(*(be._bundle_copy("echo") for _ in range(3)))  # three spawns at once
        assert len(set(copies)) == 1 and (copies[0] / "function.yaml").is_file()
        assert len(list(be.workdir.glob("bundle-*"))) == 1
        assert await be._bundle_copy("echo") == copies[0]  # later spawns reuse it
    finally:
        await be.aclose()
