"""The docker backend: one container per instance, built from a local function-runtime image.

Who calls what: the gateway calls `prepare(cluster)` once at `gpufaas up` (engine reachable, base image
present, orphans removed: a missing engine fails here, not at the first invocation) and
`prepare_function(spec, bundle_dir)` at deploy (builds the runtime image; a failed build refuses the
deploy with the log tail), and `aclose()` at exit (the LiveBackend protocol, interface.py). The
controller calls `start`, `submit` and `stop`; this backend answers through `on_instance_ready`,
`on_batch_done` and `on_instance_failed` from tasks on the running loop.

A container runs with CPU and memory limits, no network (`network_mode=none`), a read-only root, and a
host folder mounted at /run/gpufaas holding the Unix socket this backend listens on for its worker. The
worker is the platform's one worker, `python -m gpufaas.platform.worker` (the process backend's; the
runtime image's entry point), speaking platform/wire.py: it connects to /run/gpufaas/host.sock, says
HELLO, builds its model and says READY. It runs from the gateway's own install, mounted read-only (see
`_create`), so the engine must run on this machine; `prepare` refuses a remote DOCKER_HOST. Where the
engine has the NVIDIA runtime (or `gpu_passthrough` is "on"), the instance's GPU and share reach the
container as NVIDIA_VISIBLE_DEVICES and CUDA_MPS_ACTIVE_THREAD_PERCENTAGE. Every container carries
labels (`gpufaas.managed`, `gpufaas.scope`, `gpufaas.function`, `gpufaas.instance`); `prepare()` removes
the containers of its scope that a crashed gateway left behind. Nothing is pulled: images come from
`platform/images.py`.

The real cold start is measured in parts and reported in `inst.info`: `image_ms` (build, if not
cached), `create_ms`, `start_ms`, `worker_ready_ms`, the worker's own `imports_ms`, `model_build_ms`,
`first_batch_ms`, and `cold_start_ms` (the whole, the name every live backend uses for it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpufaas.platform import images, wire
from gpufaas.platform.backends.interface import UNBOUND, BackendHost
from gpufaas.platform.backends.process import report_result
from gpufaas.platform.clock import perf_ns
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import Batch, Instance
from gpufaas.platform.shipped import functions_dir
from gpufaas.platform.worker import worker_argv

if TYPE_CHECKING:
    from gpufaas.platform.specs import ClusterSpec, FunctionSpec

SOCKET_DIR_IN_CONTAINER = "/run/gpufaas"
HOST_SOCKET_IN_CONTAINER = f"{SOCKET_DIR_IN_CONTAINER}/host.sock"  # the host listens, the worker connects
DEFAULT_BUNDLE_ROOT = functions_dir()


class _Link:
    """Host side of one worker's socket (platform/wire.py frames; the worker connected to us)."""

    __slots__ = ("reader", "writer", "task", "pending")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task | None = None
        self.pending: dict[int, Batch] = {}

    def send_batch(self, batch_id: int, items: list, hold_ns: int) -> None:
        self.writer.writelines(wire.encode_parts(wire.Kind.BATCH, id=batch_id, items=items, hold_ns=hold_ns))

    async def next_message(self) -> tuple[wire.Kind, dict]:
        """The next message other than a heartbeat."""
        while True:
            kind, m = await wire.read_message(self.reader)
            if kind != wire.Kind.HEARTBEAT:
                return kind, m

    async def next_result(self) -> dict:
        """The next RESULT message (see platform/wire.py)."""
        while True:
            kind, m = await self.next_message()
            if kind == wire.Kind.RESULT:
                return m

    def send_stop(self) -> None:
        self.writer.write(wire.encode(wire.Kind.STOP))


class _Box:
    """What the backend holds for one instance: its container, socket folder, link and start task."""

    __slots__ = ("inst", "container", "sock_dir", "link", "task", "stopped", "parts_ms")

    def __init__(self, inst: Instance, sock_dir: Path) -> None:
        self.inst = inst
        self.container: Any = None
        self.sock_dir = sock_dir
        self.link: _Link | None = None
        self.task: asyncio.Task | None = None
        self.stopped = False
        self.parts_ms: dict[str, float] = {}


class DockerBackend:
    """A container per instance through the Docker SDK. See the module docstring for the call flow."""

    name = "docker"
    takes_not_before = False

    def __init__(self, *, scope: str = "default", bundle_root: str | Path | None = None, cpus_per_instance: float = 1.0,
                 memory_mb_per_instance: int = 512, gpu_passthrough: str = "auto", ready_timeout_s: float = 60.0,
                 start_engine: bool = False, emulate_latency: bool = True, execute: str = "emulated",
                 client: Any = None) -> None:
        if gpu_passthrough not in ("auto", "on", "off"):
            raise UserError(f"docker backend: gpu_passthrough must be auto, on or off, not {gpu_passthrough!r}")
        if execute not in ("emulated", "real"):
            raise UserError(f"docker backend: execute must be emulated or real, not {execute!r}")
        if cpus_per_instance <= 0 or memory_mb_per_instance < 16:
            raise UserError("docker backend: cpus_per_instance must be > 0 and memory_mb_per_instance >= 16")
        self.scope = scope
        self.bundle_root = Path(bundle_root) if bundle_root is not None else DEFAULT_BUNDLE_ROOT
        self.cpus_per_instance = cpus_per_instance
        self.memory_mb_per_instance = memory_mb_per_instance
        self.gpu_passthrough = gpu_passthrough
        self.ready_timeout_s = ready_timeout_s
        self.start_engine = start_engine
        self.emulate_latency = emulate_latency  # hold each batch for its profiled latency (off: pure dispatch)
        self.execute = execute
        import sysconfig

        self._site_packages = sysconfig.get_paths()["purelib"]
        self._install_mounts = _install_mounts(self._site_packages)
        self.client = client
        self.ctl: BackendHost = UNBOUND
        self.base_tag = ""
        self.nvidia_runtime = False
        self.images: dict[str, str] = {}  # function name -> runtime image tag
        self.image_ms: dict[str, float] = {}  # function name -> build time of its image (0 if cached)
        self._build_locks: dict[str, asyncio.Lock] = {}
        self._boxes: dict[int, _Box] = {}
        self._sock_root: Path | None = None
        self.orphans_removed = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpufaas-docker")
        self._teardowns: set[concurrent.futures.Future] = set()
        self.test_hold_ms: float | None = None  # test hook: hold every batch this long (kill mid-batch)

    # ------------------------------------------------------------------ the LiveBackend lifecycle (gateway)

    def prepare(self, cluster: ClusterSpec | None = None) -> None:
        """Connect to the engine, make sure the base image exists, remove this scope's orphans. Blocking.

        Who calls it: the gateway at `gpufaas up` (and the tests), before any deploy; `cluster` is not
        needed here (placement is the controller's). Raises EngineUnavailable (one line) when no engine
        answers, UserError for a remote engine, ImageBuildError when the base cannot be built.
        """
        remote = os.environ.get("DOCKER_HOST", "unix://").split("://", 1)[0] not in ("unix", "npipe")
        if remote:
            # NOTE: the one worker (gpufaas.platform.worker) runs from this machine's install, mounted into
            # the container; an engine on another machine cannot mount it. An image with the package
            # installed would lift this; no user has asked for it yet.
            raise UserError(f"docker backend: DOCKER_HOST={os.environ['DOCKER_HOST']} is remote; containers run the "
                            "platform worker from this machine's install, so the engine must run here (unset DOCKER_HOST)")
        if self.client is None:
            self.client = images.connect_engine(start=self.start_engine)
        self.base_tag = images.ensure_base_image(self.client)
        try:
            runtimes = self.client.info().get("Runtimes", {}) or {}
        except Exception:  # noqa: BLE001
            runtimes = {}
        self.nvidia_runtime = "nvidia" in runtimes
        self.orphans_removed = self.remove_orphans()
        self._sock_root = Path(tempfile.mkdtemp(prefix=f"gpufaas-{self.scope}-"))

    def remove_orphans(self) -> int:
        """Remove every container labelled with this scope (left by a gateway that crashed). Returns how many."""
        # NOTE: the low-level list: the high-level one inspects each container and fails on one removed meanwhile.
        found = self.client.api.containers(all=True, filters={"label": [f"{images.MANAGED_LABEL}=1", f"gpufaas.scope={self.scope}"]})
        for c in found:
            try:
                self.client.api.remove_container(c["Id"], force=True)
            except Exception:  # noqa: BLE001 (already gone: removed by the engine or another gateway)
                pass
        return len(found)

    def prepare_function(self, spec: FunctionSpec, bundle_dir: Path | None = None, extra_steps: str = "") -> None:
        """Build (or find cached) the runtime image of one function from its bundle folder (default:
        `bundle_root/<name>`; a spec without a folder gets one holding only function.yaml). Blocking;
        called at deploy. Raises ImageBuildError with the tail of the build log: the deploy is refused.
        `extra_steps`: Dockerfile lines (tests use a failing RUN)."""
        if not self.base_tag:
            raise UserError("docker backend: prepare() was not called; the gateway calls it at start-up")
        bdir = Path(bundle_dir) if bundle_dir is not None else self.bundle_root / spec.name
        import yaml

        spec_yaml = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
        t0 = perf_ns()
        tag, built = images.ensure_runtime_image(self.client, self.base_tag, spec.name, bdir if bdir.is_dir() else None,
                                                 spec_yaml=spec_yaml, extra_steps=extra_steps)
        self.images[spec.name] = tag
        self.image_ms[spec.name] = (perf_ns() - t0) / 1e6 if built else 0.0

    async def aclose(self) -> None:
        """Stop every instance (no callback follows), then `close()` in a thread: the gateway's exit path."""
        for box in list(self._boxes.values()):
            self.stop(box.inst)
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Remove every container this backend started and its socket folders; no callback follows.
        Blocking (tests, `aclose`)."""
        for box in list(self._boxes.values()):
            box.stopped = True
            self._teardown(box)
        self._boxes.clear()
        concurrent.futures.wait(list(self._teardowns), timeout=60)
        if self._sock_root is not None:
            shutil.rmtree(self._sock_root, ignore_errors=True)

    # ------------------------------------------------------------------ the Backend protocol (controller)

    def bind(self, host: BackendHost) -> None:
        """Called once by the controller's constructor."""
        self.ctl = host

    def start(self, inst: Instance) -> None:
        """Create and start the container in a task; READY -> on_instance_ready, else on_instance_failed."""
        if self._sock_root is None:
            raise UserError("docker backend: prepare() was not called; the gateway calls it at start-up")
        box = _Box(inst, self._sock_root / f"i{inst.id}")
        self._boxes[inst.id] = box
        box.task = asyncio.get_running_loop().create_task(self._start(box))

    def submit(self, inst: Instance, batch: Batch) -> None:
        """Send the batch to the container's worker; its RESULT -> on_batch_done."""
        box = self._boxes.get(inst.id)
        if box is None or box.link is None:
            self.ctl.on_batch_done(inst, batch, None, "docker backend: instance has no live container")
            return
        hold_ns = inst.batch_latency_ns(len(batch.jobs)) if self.emulate_latency else 0
        if self.test_hold_ms is not None:
            hold_ns = int(self.test_hold_ms * 1e6)
        box.link.pending[batch.id] = batch
        box.link.send_batch(batch.id, batch.outputs or [None] * len(batch.jobs), hold_ns)

    def stop(self, inst: Instance) -> None:
        """Close the link and remove the container in a thread; no callback follows."""
        box = self._boxes.pop(inst.id, None)
        if box is None:
            return
        box.stopped = True
        if box.task is not None and not box.task.done():
            box.task.cancel()
        if box.link is not None:
            if box.link.task is not None:
                box.link.task.cancel()
            box.link.writer.close()
        # NOTE: removal runs in a thread so that keep-alive expiry never blocks the loop on the engine;
        # close() waits for the removals still under way.
        fut = self._pool.submit(self._teardown, box)
        self._teardowns.add(fut)
        fut.add_done_callback(self._teardowns.discard)

    # ------------------------------------------------------------------ internals

    def _teardown(self, box: _Box) -> None:
        c = box.container
        if c is not None:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 (already removed)
                pass
        shutil.rmtree(box.sock_dir, ignore_errors=True)

    def _env(self, inst: Instance) -> dict[str, str]:
        env = {"GPUFAAS_FUNCTION": inst.function.name, "GPUFAAS_MEMORY_LIMIT": f"{self.memory_mb_per_instance}m"}
        if self.gpu_passthrough == "on" or (self.gpu_passthrough == "auto" and self.nvidia_runtime):
            first = min(g.id for g in self.ctl.gpus if g.node == inst.gpu.node)
            env["NVIDIA_VISIBLE_DEVICES"] = str(inst.gpu.id - first)
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(1, round(inst.share * 100)))
        return env

    def _create(self, box: _Box, image: str) -> Any:
        inst = box.inst
        box.sock_dir.mkdir(parents=True, exist_ok=True)
        kw: dict[str, Any] = {}
        if self.nvidia_runtime and self.gpu_passthrough != "off":
            kw["runtime"] = "nvidia"
        volumes = {str(box.sock_dir): {"bind": SOCKET_DIR_IN_CONTAINER, "mode": "rw"}}
        # NOTE: the worker runs from the gateway's own install, mounted read-only: the source tree and
        # site-packages at their own paths (the editable install's finder holds absolute paths), and
        # site-packages once more as the image python's dist-packages, whose .pth files python processes at
        # start-up, so `python3 -m gpufaas.platform.worker` imports without a launcher script. The image's
        # python3 is 3.11 like the venv's, so its compiled wheels load.
        for path in self._install_mounts:
            volumes[path] = {"bind": path, "mode": "ro"}
        volumes[self._site_packages] = {"bind": images.DIST_PACKAGES, "mode": "ro"}
        command = worker_argv(bundle=images.BUNDLE_IN_IMAGE, socket_path=HOST_SOCKET_IN_CONTAINER, token=str(inst.id),
                              execute=self.execute, gpu_type=inst.gpu.type_name, share=inst.share)
        return self.client.containers.create(
            image, command=command, name=f"gpufaas-{self.scope}-{inst.function.name}-{inst.id}", detach=True,
            environment=self._env(inst),
            labels={images.MANAGED_LABEL: "1", "gpufaas.scope": self.scope, "gpufaas.function": inst.function.name,
                    "gpufaas.instance": str(inst.id), "gpufaas.gpu": str(inst.gpu.id), "gpufaas.share": f"{inst.share:g}"},
            nano_cpus=int(self.cpus_per_instance * 1e9), mem_limit=f"{self.memory_mb_per_instance}m",
            memswap_limit=f"{self.memory_mb_per_instance}m", pids_limit=256, network_mode="none", read_only=True,
            tmpfs={"/tmp": "size=64m"}, volumes=volumes, **kw)

    async def _image_for(self, inst: Instance) -> str:
        name = inst.function.name
        tag = self.images.get(name)
        if tag is not None:
            return tag
        lock = self._build_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self.images:
                await asyncio.get_running_loop().run_in_executor(None, self.prepare_function, inst.function.spec)
        return self.images[name]

    async def _start(self, box: _Box) -> None:
        inst = box.inst
        loop = asyncio.get_running_loop()
        try:
            t0 = perf_ns()
            image = await self._image_for(inst)
            t1 = perf_ns()
            box.container = await loop.run_in_executor(None, self._create, box, image)
            t2 = perf_ns()
            if box.stopped:
                await loop.run_in_executor(None, self._teardown, box)
                return
            link, hello, t3, t4 = await self._connect(box)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 (any failure of a cold start fails the instance, with its reason)
            if not box.stopped:
                why = f"docker cold start of {inst.function.name} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                self.ctl.on_instance_failed(inst, why)
            return
        if box.stopped:
            link.writer.close()
            return
        box.link = link
        box.parts_ms = {"image_ms": round((t1 - t0) / 1e6, 3), "create_ms": round((t2 - t1) / 1e6, 3),
                        "start_ms": round((t3 - t2) / 1e6, 3), "worker_ready_ms": round((t4 - t3) / 1e6, 3),
                        "cold_start_ms": round((t4 - t0) / 1e6, 3)}
        link.task = loop.create_task(self._read(box))
        info = {"backend": "docker", "container": box.container.id[:12], "image": image, **box.parts_ms,
                **wire.ready_parts_ms(hello), "worker": hello}
        self.ctl.on_instance_ready(inst, info)

    async def _connect(self, box: _Box) -> tuple[_Link, dict, int, int]:
        """Listen on the mounted folder, start the container; the worker connects, says HELLO, builds its
        model and says READY (or FAILED with the reason). Returns (link, HELLO + READY fields, t_started,
        t_ready)."""
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future = loop.create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not accepted.done():
                accepted.set_result((reader, writer))
            else:
                writer.close()

        server = await asyncio.start_unix_server(on_connect, path=str(box.sock_dir / "host.sock"))
        try:
            await loop.run_in_executor(None, box.container.start)
            t3 = perf_ns()
            waiter = loop.run_in_executor(None, self._wait_exit, box.container)
            done, _ = await asyncio.wait({accepted, waiter}, timeout=self.ready_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if accepted not in done:
                if waiter in done:
                    raise RuntimeError(f"the worker exited before connecting: {waiter.result()}")
                raise TimeoutError(f"the worker did not connect within {self.ready_timeout_s:g} s")
            reader, writer = accepted.result()
            link = _Link(reader, writer)
            kind, hello = await asyncio.wait_for(link.next_message(), self.ready_timeout_s)
            kind, ready = await asyncio.wait_for(link.next_message(), self.ready_timeout_s)
            if kind == wire.Kind.FAILED:
                raise RuntimeError(f"the worker failed to start: {ready.get('error')}")
            if kind != wire.Kind.READY:
                raise RuntimeError(f"the worker sent {kind.name} instead of READY")
            t4 = perf_ns()
        finally:
            server.close()
        return link, {**hello, **ready}, t3, t4

    def _wait_exit(self, container: Any) -> str:
        """Block until the container exits (a worker that dies before connecting); its last log line."""
        try:
            r = container.wait(timeout=self.ready_timeout_s + 5)
            tail = container.logs(tail=3).decode(errors="replace").strip().splitlines()
            return f"exit code {r.get('StatusCode')}" + (f": {tail[-1]}" if tail else "")
        except Exception as e:  # noqa: BLE001 (timeout or the container is gone)
            return type(e).__name__

    async def _read(self, box: _Box) -> None:
        link = box.link
        assert link is not None, "the reader starts once the link is up"
        inst = box.inst
        try:
            while True:
                m = await link.next_result()
                batch_id = m.get("id")
                batch = link.pending.pop(batch_id, None) if isinstance(batch_id, int) else None
                if batch is not None:
                    report_result(self.ctl, inst, batch, m)
        except asyncio.CancelledError:
            return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError, wire.WireError):
            pass
        if box.stopped:
            return
        link.pending.clear()
        why = await asyncio.get_running_loop().run_in_executor(None, self._exit_reason, box)
        if not box.stopped:
            self.ctl.on_instance_failed(inst, why)

    def _exit_reason(self, box: _Box) -> str:
        """Why a container's worker went away: exit code and OOM flag from the engine, one line."""
        c = box.container
        try:
            c.wait(timeout=5)
            c.reload()
            st = c.attrs.get("State", {})
        except Exception:  # noqa: BLE001 (the container is gone: removed from outside)
            return f"container {c.id[:12]} of {box.inst.function.name} vanished"
        oom = " (OOM-killed: raise memory_mb_per_instance)" if st.get("OOMKilled") else ""
        return f"container {c.id[:12]} of {box.inst.function.name} exited with code {st.get('ExitCode')}{oom}"


def _install_mounts(site_packages: str) -> list[str]:
    """Folders the platform worker needs from this install: site-packages and the source tree (editable)."""
    roots = {Path(site_packages).resolve(), Path(wire.__file__).resolve().parents[1]}
    out: list[str] = []
    for r in sorted(roots, key=lambda p: len(p.parts)):
        if not any(r.is_relative_to(Path(o)) for o in out):
            out.append(str(r))
    return out


def container_count(client: Any, scope: str) -> int:
    """Containers (running or not) labelled with `scope`; tests and `gpufaas ls` use it."""
    return len(client.api.containers(all=True, filters={"label": [f"{images.MANAGED_LABEL}=1", f"gpufaas.scope={scope}"]}))
