"""One conformance suite for every backend: each registered live backend (inproc, process; docker and ray
where an engine / Ray is available), the simulator's backend and the test fake.

Structurally, each is an instance of its protocol (`Backend`, and `LiveBackend` for the live ones,
runtime-checkable) and declares `name` and `takes_not_before` on its class; `_static_conformance` below
states the same as typed assignments for a type checker (`mypy tests/test_backend_conformance.py`), the
Python form of Go's `var _ Backend = &X{}`. Behaviourally, against a `RecordingBackendHost`: a start
reports `on_instance_ready` once; a batch of 3 items reports `on_batch_done` with one output per item
(the sim carries no payloads: None); after `stop` no callback follows for that instance; a start that
cannot succeed reports `on_instance_failed`; `prepare`, `prepare_function` and `aclose` can be called.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import yaml

from gpufaas.platform.backends.docker_backend import DockerBackend
from gpufaas.platform.backends.fake import FakeBackend
from gpufaas.platform.backends.inproc import InprocBackend
from gpufaas.platform.backends.interface import Backend, BackendHost, LiveBackend
from gpufaas.platform.backends.process import ProcessBackend
from gpufaas.platform.backends.ray_backend import RayBackend
from gpufaas.platform.backends.registry import BackendOptions, BackendRegistry, backend_names, build_backend
from gpufaas.platform.backends.sim import SimBackend
from gpufaas.platform.clock import Clock, LoopClock, VirtualClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.errors import UserError
from gpufaas.platform.profiles import ColdStartProfile, MemoryProfile, Profile, Profiles
from gpufaas.platform.runtime import AfwQueue, Batch, FunctionRt, Gpu, Instance, Invocation, Job, WorkflowRt, build_gpus
from gpufaas.platform.specs import ClusterSpec, FunctionSpec

from tests.helpers import chain, cluster

COLD_NS = 5_000_000  # the recording host's cold start (profile-timed backends wait this long)
N_ITEMS = 3
SPEC = FunctionSpec.model_validate({"name": "conf", "model": "conf-flat", "batch_sizes": [1, 2, 3, 4], "shares": [1.0],
                                    "outputs": {"y": {"dtype": "float32", "shape": [2]}}})
# a valid spec whose bundle folder is not: the worker cannot load it, so the instance cannot start
BROKEN = SPEC.model_copy(update={"name": "broken"})


def _profiles() -> Profiles:
    """`conf-flat`: 20 ms at batch 1, 80 ms at batch 4 (a batch of 3 takes 60 ms): the stop test's fence
    batch, on another instance, ends well after the stopped instance's batch would have."""
    p = Profiles.shipped()
    p.add(Profile(model="conf-flat", gpu_type="A100-80GB", source="test: conformance", batches=[1, 4], shares=[0.1, 1.0],
                  latency_ms=[[20.0, 20.0], [80.0, 80.0]], memory=MemoryProfile(instance_mb=1, per_item_mb=0),
                  cold_start=ColdStartProfile(container_ms=0, runtime_init_ms=0, model_load_ms=0)))
    return p


class RecordingBackendHost:
    """A `BackendHost` that records every callback as (event, instance id, detail) and lets a test wait
    for a condition on the record (live backends) instead of sleeping."""

    def __init__(self, gpus: list[Gpu]) -> None:
        self.events: list[tuple[str, int, Any]] = []
        self.failed_invocations: list[str] = []
        self._gpus = gpus
        self._changed: asyncio.Event | None = None

    def _record(self, event: str, inst: Instance, detail: Any) -> None:
        self.events.append((event, inst.id, detail))
        if self._changed is not None:
            self._changed.set()

    def on_instance_ready(self, inst: Instance, info: dict | None = None) -> None:
        self._record("ready", inst, info)

    def on_batch_done(self, inst: Instance, batch: Batch, outputs: list[Any] | None = None, error: str = "") -> None:
        self._record("done", inst, (batch.id, outputs, error))

    def on_instance_failed(self, inst: Instance, reason: str) -> None:
        self._record("failed", inst, reason)

    def fail_invocation(self, inv: Invocation, reason: str) -> None:
        self.failed_invocations.append(reason)

    def cold_start_ns(self, fn: FunctionRt, gpu: Gpu) -> int:
        return COLD_NS

    @property
    def jobs(self) -> dict[int, Job]:
        return {}

    @property
    def gpus(self) -> list[Gpu]:
        return self._gpus

    def of(self, inst: Instance, event: str | None = None) -> list[tuple[str, int, Any]]:
        """The recorded events of one instance (of one kind)."""
        return [e for e in self.events if e[1] == inst.id and (event is None or e[0] == event)]

    async def until(self, cond: Callable[[], bool], timeout_s: float) -> None:
        """Wait until `cond()` holds, woken by each callback; TimeoutError naming what was recorded."""
        if self._changed is None:
            self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not cond():
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"condition not met within {timeout_s:g} s; recorded: {self.events}")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass


class World:
    """Instances and batches of `SPEC` on a one-node cluster, built the way the controller builds them,
    and the clock the backend runs on (virtual for the sim, the running loop's otherwise)."""

    def __init__(self, virtual: bool = False) -> None:
        self.vclock = VirtualClock()
        self.clock: Clock = self.vclock if virtual else LoopClock()
        self.cluster: ClusterSpec = cluster(gpus=2)
        self.profiles = _profiles()
        self.gpus = build_gpus(self.cluster)
        self.fns = {s.name: FunctionRt(s, self.cluster, self.profiles, 60.0) for s in (SPEC, BROKEN)}
        self.wf = WorkflowRt(chain("wf", ["conf"]), self.fns)
        self._ids = itertools.count(1)

    def instance(self, fn: str = "conf", gpu: Gpu | None = None) -> Instance:
        gpu = gpu or self.gpus[0]
        return Instance(next(self._ids), self.fns[fn], gpu, gpu.share_units, 4, 1.0, 0)

    def batch(self, inst: Instance, n: int, now_ns: int) -> Batch:
        stage = self.wf.stages[0]
        queue = AfwQueue(self.wf, stage)
        jobs = [Job(next(self._ids), Invocation(next(self._ids), self.wf, now_ns, 60 * 10**9), stage, queue, now_ns)
                for _ in range(n)]
        b = Batch(next(self._ids), inst, jobs, now_ns)
        b.start_ns = now_ns
        b.outputs = [None] * n  # the inputs, in live mode (None: the emulated worker needs none)
        return b


@dataclass
class Case:
    """How to build, drive and break one backend for this suite."""

    name: str
    make: Callable[[World, Path], Awaitable[Backend]]
    virtual: bool = False  # runs on a VirtualClock: `settle` runs the clock instead of waiting
    carries_data: bool = True  # on_batch_done carries one output per item (the sim carries none)
    cannot_fail: str = ""  # why a start cannot fail, if it cannot
    failing: Callable[[World], Instance] | None = None  # an instance whose start must fail
    timeout_s: float = 60.0


def _write_bundles(root: Path) -> Path:
    good = root / "conf"
    good.mkdir(parents=True)
    (good / "function.yaml").write_text(yaml.safe_dump(SPEC.model_dump(mode="json")))
    bad = root / "broken"
    bad.mkdir()
    (bad / "function.yaml").write_text("name: broken\nmodel: [unclosed\n")
    return root


def _options(bundles: Path) -> BackendOptions:
    return BackendOptions(scope="conformance", bundles_dir=bundles)


async def _make_registered(name: str, world: World, tmp: Path) -> Backend:
    bundles = _write_bundles(tmp / "bundles")
    be = build_backend(name, world.clock, _options(bundles), lambda fn: bundles / fn)
    await asyncio.get_running_loop().run_in_executor(None, be.prepare, world.cluster)
    return be


async def _make_docker(world: World, tmp: Path) -> Backend:
    from gpufaas.platform import images

    try:
        images.connect_engine(start=True)
    except images.EngineUnavailable as e:
        pytest.skip(f"no Docker engine can be started here: {e}")
    return await _make_registered("docker", world, tmp)


async def _make_ray(world: World, tmp: Path) -> Backend:
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[dev]' installs it)")
    return await _make_registered("ray", world, tmp)


async def _make_sim(world: World, tmp: Path) -> Backend:
    return SimBackend(world.clock)


def _on_unknown_node(world: World) -> Instance:
    """An instance on a GPU of a node that no Ray node stands for: Ray cannot place it."""
    g = world.gpus[0]
    return world.instance(gpu=Gpu(99, "node-9", 9, g.type_name, g.share_units, g.memory_mb, 5.12))


CASES = [
    pytest.param(Case("inproc", lambda w, t: _make_registered("inproc", w, t),
                      cannot_fail="emulated in this process: nothing runs, so a start cannot fail"), id="inproc"),
    pytest.param(Case("process", lambda w, t: _make_registered("process", w, t), failing=lambda w: w.instance("broken")),
                 id="process", marks=pytest.mark.live),
    pytest.param(Case("docker", _make_docker, failing=lambda w: w.instance("broken"), timeout_s=180.0),
                 id="docker", marks=[pytest.mark.live, pytest.mark.docker]),
    pytest.param(Case("ray", _make_ray, failing=_on_unknown_node, timeout_s=120.0),
                 id="ray", marks=[pytest.mark.live, pytest.mark.ray]),
    pytest.param(Case("sim", _make_sim, virtual=True, carries_data=False,
                      cannot_fail="profile-timed: nothing runs, so a start cannot fail"), id="sim"),
]


@pytest.fixture
async def rig(request: pytest.FixtureRequest, tmp_path: Path):
    """(case, world, backend bound to a RecordingBackendHost, host); the backend is closed afterwards."""
    case: Case = request.param
    world = World(virtual=case.virtual)
    be = await case.make(world, tmp_path)
    host = RecordingBackendHost(world.gpus)
    be.bind(host)
    try:
        yield case, world, be, host
    finally:
        if isinstance(be, LiveBackend):
            await be.aclose()
        if case.name == "ray":
            import ray

            ray.shutdown()


async def settle(case: Case, world: World, host: RecordingBackendHost, cond: Callable[[], bool]) -> None:
    """Let the backend work until `cond()` holds (virtual: run the clock dry, then check)."""
    if case.virtual:
        world.vclock.run()
        assert cond(), host.events
    else:
        await host.until(cond, case.timeout_s)


# ---------------------------------------------------------------- structure


def test_registry_lists_every_live_backend_and_refuses_unknown_and_duplicate_names() -> None:
    assert backend_names() == ["process", "inproc", "docker", "ray"]
    with pytest.raises(UserError, match=r"^--backend: unknown backend 'nope'; use process, inproc, docker or ray$"):
        build_backend("nope", VirtualClock(), BackendOptions(), Path)
    with pytest.raises(UserError, match="the inproc backend only emulates"):
        build_backend("inproc", VirtualClock(), BackendOptions(execute="real"), Path)
    reg = BackendRegistry()
    reg.register("x", lambda c, o, b: InprocBackend(c))
    with pytest.raises(ValueError, match="'x' is already registered"):
        reg.register("x", lambda c, o, b: InprocBackend(c))


def test_a_missing_optional_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from gpufaas.platform.backends import registry

    real = importlib.import_module

    def without_ray(name: str, package: str | None = None) -> Any:
        if name == "gpufaas.platform.backends.ray_backend":  # what importing it finds where ray is not installed
            raise ModuleNotFoundError("No module named 'ray'", name="ray")
        return real(name, package)

    monkeypatch.setattr(registry.importlib, "import_module", without_ray)
    with pytest.raises(UserError, match=r"^--backend ray: needs the Python package 'ray', which is not installed"):
        build_backend("ray", VirtualClock(), BackendOptions(), Path)


@pytest.mark.parametrize("make, live", [
    (lambda tmp: InprocBackend(VirtualClock()), True),
    (lambda tmp: ProcessBackend(VirtualClock(), bundle_dir=Path, workdir=tmp), True),
    (lambda tmp: DockerBackend(), True), (lambda tmp: RayBackend(), True),
    (lambda tmp: SimBackend(VirtualClock()), False), (lambda tmp: FakeBackend(), False),
], ids=["inproc", "process", "docker", "ray", "sim", "fake"])
def test_every_backend_is_an_instance_of_its_protocol(make: Callable[[Path], Backend], live: bool, tmp_path: Path) -> None:
    backend = make(tmp_path)  # nothing starts: constructors have no side effects beyond their own fields
    assert isinstance(backend, Backend)
    assert isinstance(backend, LiveBackend) == live
    cls = type(backend)
    assert isinstance(cls.__dict__.get("takes_not_before"), bool), f"{cls.__name__} must declare takes_not_before"
    assert isinstance(cls.__dict__.get("name"), str) and cls.name in (*backend_names(), "sim", "fake")
    assert cls.takes_not_before == (cls is SimBackend), "only the sim backend starts batches at not_before_ns"


def test_the_controller_and_the_recording_host_are_backend_hosts() -> None:
    ctl = Controller(cluster(), Profiles.shipped(), _noop_policy(), FakeBackend(), VirtualClock())
    assert isinstance(ctl, BackendHost) and isinstance(RecordingBackendHost([]), BackendHost)


def _noop_policy():  # noqa: ANN202
    from gpufaas.platform.policy.registry import builtin_registry

    return builtin_registry().make("batch1-wholegpu")


def _static_conformance(clock: LoopClock, vclock: VirtualClock, ctl: Controller) -> None:
    """Never called: a type checker verifies these assignments (every backend satisfies its protocol, the
    controller and the recording host satisfy BackendHost)."""
    _inproc: LiveBackend = InprocBackend(clock)
    _process: LiveBackend = ProcessBackend(clock, bundle_dir=Path)
    _docker: LiveBackend = DockerBackend()
    _ray: LiveBackend = RayBackend()
    _sim: Backend = SimBackend(vclock)
    _fake: Backend = FakeBackend()
    _ctl: BackendHost = ctl
    _rec: BackendHost = RecordingBackendHost([])


def test_the_fake_reports_what_its_test_drives() -> None:
    world = World()
    fake, host = FakeBackend(), RecordingBackendHost(world.gpus)
    fake.bind(host)
    inst = world.instance()
    fake.start(inst)
    fake.ready(inst)
    b = world.batch(inst, N_ITEMS, 0)
    fake.submit(inst, b)
    fake.finish(b, [{"y": 1}] * N_ITEMS)
    fake.crash(inst, "boom")
    assert [e[0] for e in host.events] == ["ready", "done", "failed"] and fake.started == [inst] and fake.submitted == [b]
    assert host.events[1][2] == (b.id, [{"y": 1}] * N_ITEMS, "") and host.events[2][2] == "boom"


# ---------------------------------------------------------------- behaviour


@pytest.mark.parametrize("rig", CASES, indirect=True)
async def test_start_reports_ready_then_a_batch_reports_one_output_per_item(rig) -> None:
    case, world, be, host = rig
    inst = world.instance()
    be.start(inst)
    await settle(case, world, host, lambda: bool(host.of(inst)))
    ((event, _, info),) = host.of(inst)
    assert event == "ready", host.events
    if case.carries_data:  # a live backend: the cold start under the one name every backend uses
        assert info["cold_start_ms"] >= 0, info
    b = world.batch(inst, N_ITEMS, world.clock.now_ns())
    be.submit(inst, b)
    await settle(case, world, host, lambda: bool(host.of(inst, "done")))
    ((_, _, (batch_id, outputs, error)),) = host.of(inst, "done")
    assert batch_id == b.id and error == ""
    if case.carries_data:
        assert outputs is not None and len(outputs) == N_ITEMS
        assert all(o is not None and o["y"].shape == (2,) for o in outputs), outputs
    else:
        assert outputs is None
    assert [e[0] for e in host.of(inst)] == ["ready", "done"], host.events
    be.stop(inst)


@pytest.mark.parametrize("rig", CASES, indirect=True)
async def test_no_callback_follows_stop(rig) -> None:
    case, world, be, host = rig
    a, b = world.instance(gpu=world.gpus[0]), world.instance(gpu=world.gpus[1])
    be.start(a)
    be.start(b)
    await settle(case, world, host, lambda: bool(host.of(a, "ready")) and bool(host.of(b, "ready")))
    be.submit(a, world.batch(a, 1, world.clock.now_ns()))  # 20 ms
    be.stop(a)
    # NOTE: the fence: a batch submitted after the stop on another instance, three times as long; when it
    # has ended, a's batch would long have reported had the stop not silenced it.
    be.submit(b, world.batch(b, N_ITEMS, world.clock.now_ns()))  # 60 ms
    await settle(case, world, host, lambda: bool(host.of(b, "done")))
    assert [e[0] for e in host.of(a)] == ["ready"], host.events
    be.stop(b)


@pytest.mark.parametrize("rig", CASES, indirect=True)
async def test_a_start_that_cannot_succeed_reports_failed(rig) -> None:
    case, world, be, host = rig
    if case.failing is None:
        pytest.skip(case.cannot_fail)
    inst = case.failing(world)
    be.start(inst)
    await settle(case, world, host, lambda: bool(host.of(inst)))
    ((event, _, reason),) = host.of(inst)
    assert event == "failed" and isinstance(reason, str) and reason and "\n" not in reason, host.events


@pytest.mark.parametrize("rig", CASES, indirect=True)
async def test_the_live_lifecycle_can_be_called(rig, tmp_path: Path) -> None:
    case, world, be, host = rig
    if not isinstance(be, LiveBackend):
        pytest.skip(f"{case.name} is not a live backend: the simulator prepares nothing")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, be.prepare_function, SPEC, tmp_path / "bundles" / "conf")
    await be.aclose()
    await be.aclose()  # twice: the gateway's exit path may run after a failed start-up already closed it
    assert host.events == []
