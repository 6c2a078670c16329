"""The docker backend: one container per instance, built from a local function-runtime image.

Who calls what: the gateway calls `prepare()` once at `gpufaas up` (engine reachable, base image present,
orphans removed: a missing engine fails here, not at the first invocation) and `prepare_function(spec)`
at deploy (builds the runtime image; a failed build refuses the deploy with the log tail). The
controller calls `start`, `submit` and `stop` (the Backend protocol, interface.py); this backend answers
through `on_instance_ready`, `on_batch_done` and `on_instance_failed` from tasks on the running loop.

A container runs with CPU and memory limits, no network (`network_mode=none`), a read-only root, and a
host folder mounted at /run/gpufaas holding the Unix socket of its worker. The worker is the platform's
own (`gpufaas.platform.worker`, the process backend's, speaking platform/wire.py: it connects to
/run/gpufaas/host.sock, where this backend listens), run from the gateway's install mounted read-only;
or, for an engine that cannot see this machine's files, the runtime image's stdlib-only emulated entry
(`images.RUNTIME_ENTRY`, which listens on /run/gpufaas/worker.sock). Where the engine has the NVIDIA runtime (or `gpu_passthrough`
is "on"), the instance's GPU and share reach the container as NVIDIA_VISIBLE_DEVICES and
CUDA_MPS_ACTIVE_THREAD_PERCENTAGE. Every container carries labels (`gpufaas.managed`, `gpufaas.scope`,
`gpufaas.function`, `gpufaas.instance`); `prepare()` removes the containers of its scope that a crashed
gateway left behind. Nothing is pulled: images come from `platform/images.py`.

The real cold start is measured in parts and reported in `inst.info`: image (build, if not cached),
create, start, worker ready.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import struct
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gpufaas.platform import images, wire
from gpufaas.platform.clock import perf_ns
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import Batch, Instance
from gpufaas.platform.shipped import functions_dir

_HDR = struct.Struct(">II")  # header length, blob length (see images.RUNTIME_ENTRY)
SOCKET_IN_CONTAINER = "/run/gpufaas/worker.sock"  # built-in entry: the worker listens here
HOST_SOCKET_IN_CONTAINER = "/run/gpufaas/host.sock"  # platform worker: the host listens, the worker connects
DEFAULT_BUNDLE_ROOT = functions_dir()


class _Link:
    """Host side of the built-in entry's socket (images.RUNTIME_ENTRY): JSON header + msgpack blob frames."""

    __slots__ = ("reader", "writer", "task", "pending")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task | None = None
        self.pending: dict[int, Batch] = {}

    def send(self, obj: dict, blob: bytes = b"") -> None:
        data = json.dumps(obj, separators=(",", ":")).encode()
        self.writer.write(_HDR.pack(len(data), len(blob)) + data + blob)

    async def recv(self) -> tuple[dict, bytes]:
        n, m = _HDR.unpack(await self.reader.readexactly(8))
        head = json.loads(await self.reader.readexactly(n))
        return head, (await self.reader.readexactly(m) if m else b"")

    def send_batch(self, batch_id: int, items: list, hold_ms: float, alloc_mb: int = 0) -> None:
        msg: dict = {"kind": "run", "id": batch_id, "n": len(items), "hold_ms": hold_ms}
        if alloc_mb:
            msg["alloc_mb"] = alloc_mb  # test hook: the worker touches this much memory (OOM test)
        self.send(msg, encode_items(items))

    async def next_result(self) -> tuple[Any, list | None, str]:
        """(batch id, outputs, error) of the next reply."""
        msg, blob = await self.recv()
        if msg.get("kind") == "done":
            return msg.get("id"), decode_items(blob), ""
        return msg.get("id"), None, str(msg.get("error", "worker error"))

    def send_stop(self) -> None:
        self.send({"kind": "exit"})


class _WireLink(_Link):
    """Host side of the platform worker's socket (platform/wire.py frames; the worker connected to us)."""

    __slots__ = ()

    def send_batch(self, batch_id: int, items: list, hold_ms: float, alloc_mb: int = 0) -> None:
        self.writer.write(wire.encode(wire.Kind.BATCH, id=batch_id, items=items, hold_ns=int(hold_ms * 1e6)))

    async def next_message(self) -> tuple[Any, dict]:
        """The next message other than a heartbeat."""
        while True:
            kind, m = await wire.read_message(self.reader)
            if kind != wire.Kind.HEARTBEAT:
                return kind, m

    async def next_result(self) -> tuple[Any, list | None, str]:
        while True:
            kind, m = await self.next_message()
            if kind != wire.Kind.RESULT:
                continue
            if m.get("error"):
                return m.get("id"), None, str(m["error"])
            errors = [e for e in (m.get("errors") or []) if e]
            if errors:
                # NOTE: the controller takes one verdict per batch; an item the worker refused fails its
                # batch with that item's reason (retried once, like any batch error).
                return m.get("id"), None, f"worker refused an item: {errors[0]}"
            return m.get("id"), m.get("outputs"), ""

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

    def __init__(self, *, scope: str = "default", bundle_root: str | Path | None = None, cpus_per_instance: float = 1.0,
                 memory_mb_per_instance: int = 512, gpu_passthrough: str = "auto", ready_timeout_s: float = 60.0,
                 start_engine: bool = False, emulate_latency: bool = True, worker: str = "auto",
                 execute: str = "emulated", client: Any = None) -> None:
        if gpu_passthrough not in ("auto", "on", "off"):
            raise UserError(f"docker backend: gpu_passthrough must be auto, on or off, not {gpu_passthrough!r}")
        if worker not in ("auto", "platform", "builtin"):
            raise UserError(f"docker backend: worker must be auto, platform or builtin, not {worker!r}")
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
        # NOTE: "platform" runs gpufaas.platform.worker (the process backend's worker) in the container, from
        # the gateway's install mounted read-only; "builtin" runs the stdlib-only emulated loop of the
        # runtime image's entry, for an engine that cannot see this machine's files (a remote DOCKER_HOST).
        # "auto" picks platform when the engine is local.
        self.worker = worker
        self.execute = execute
        import sysconfig

        self._site_packages = sysconfig.get_paths()["purelib"]
        self._install_mounts = _install_mounts(self._site_packages)
        self.client = client
        self.ctl: Any = None
        self.base_tag = ""
        self.nvidia_runtime = False
        self.images: dict[str, str] = {}  # function name -> runtime image tag
        self.image_ms: dict[str, float] = {}  # function name -> build time of its image (0 if cached)
        self._build_locks: dict[str, asyncio.Lock] = {}
        self._boxes: dict[int, _Box] = {}
        self._sock_root: Path | None = None
        self.orphans_removed = 0
        self.round_trips_ns: deque[int] = deque(maxlen=100_000)  # submit -> done, for `bench dispatch`
        self._sent_ns: dict[int, int] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpufaas-docker")
        self._teardowns: set[concurrent.futures.Future] = set()
        self.test_alloc_mb = 0  # test hook: memory the worker touches per batch (OOM test)
        self.test_hold_ms: float | None = None  # test hook: hold every batch this long (kill mid-batch)

    # ------------------------------------------------------------------ set-up (gateway)

    def prepare(self) -> None:
        """Connect to the engine, make sure the base image exists, remove this scope's orphans. Blocking.

        Who calls it: the gateway at `gpufaas up` (and the tests), before any deploy. Raises
        EngineUnavailable (one line) when no engine answers, ImageBuildError when the base cannot be built.
        """
        if self.client is None:
            self.client = images.connect_engine(start=self.start_engine)
        self.base_tag = images.ensure_base_image(self.client)
        try:
            runtimes = self.client.info().get("Runtimes", {}) or {}
        except Exception:  # noqa: BLE001
            runtimes = {}
        self.nvidia_runtime = "nvidia" in runtimes
        if self.worker == "auto":
            remote = os.environ.get("DOCKER_HOST", "unix://").split("://", 1)[0] not in ("unix", "npipe")
            self.worker = "builtin" if remote else "platform"
        if self.execute == "real" and self.worker != "platform":
            raise UserError("docker backend: --execute real needs the platform worker, which needs a local engine "
                            "(DOCKER_HOST is remote); use --execute emulated")
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

    def prepare_function(self, spec: Any, bundle_dir: str | Path | None = None, extra_steps: str = "") -> str:
        """Build (or find cached) the runtime image of one function. Blocking; called by the deploy route.

        Raises ImageBuildError with the tail of the build log: the deploy is then refused.
        """
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
        return tag

    def close(self) -> None:
        """Remove every container this backend started and its socket folders. Blocking; at gateway exit."""
        for box in list(self._boxes.values()):
            self._teardown(box)
        self._boxes.clear()
        concurrent.futures.wait(list(self._teardowns), timeout=60)
        if self._sock_root is not None:
            shutil.rmtree(self._sock_root, ignore_errors=True)

    # ------------------------------------------------------------------ the Backend protocol

    def bind(self, controller: Any) -> None:
        self.ctl = controller

    def start(self, inst: Instance) -> None:
        if self._sock_root is None:
            raise UserError("docker backend: prepare() was not called; the gateway calls it at start-up")
        box = _Box(inst, self._sock_root / f"i{inst.id}")
        self._boxes[inst.id] = box
        box.task = asyncio.get_running_loop().create_task(self._start(box))

    def submit(self, inst: Instance, batch: Batch) -> None:
        box = self._boxes.get(inst.id)
        if box is None or box.link is None:
            self.ctl.on_batch_done(inst, batch, None, "docker backend: instance has no live container")
            return
        hold_ms = (inst.batch_latency_ns(len(batch.jobs)) / 1e6
                   if self.emulate_latency else 0.0)
        if self.test_hold_ms is not None:
            hold_ms = self.test_hold_ms
        box.link.pending[batch.id] = batch
        self._sent_ns[batch.id] = perf_ns()
        box.link.send_batch(batch.id, batch.outputs or [None] * len(batch.jobs), hold_ms, self.test_alloc_mb)

    def stop(self, inst: Instance) -> None:
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
        env = {"GPUFAAS_SOCKET": SOCKET_IN_CONTAINER, "GPUFAAS_GPU_TYPE": inst.gpu.type_name,
               "GPUFAAS_SHARE": f"{inst.share:g}", "GPUFAAS_FUNCTION": inst.function.name,
               "GPUFAAS_MEMORY_LIMIT": f"{self.memory_mb_per_instance}m"}
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
        env = self._env(inst)
        volumes = {str(box.sock_dir): {"bind": "/run/gpufaas", "mode": "rw"}}
        command: list[str] = []
        if self.worker == "platform":
            # NOTE: the platform worker runs from the gateway's own install, mounted read-only at the same
            # paths (the editable install's finder holds absolute paths); the image's python3 is 3.11 like
            # the venv's, so its compiled wheels load. The runtime image stays base + entry + bundle.
            env["GPUFAAS_WORKER"] = "platform"
            env["GPUFAAS_SITE_PACKAGES"] = self._site_packages
            for path in self._install_mounts:
                volumes[path] = {"bind": path, "mode": "ro"}
            command = ["--bundle", "/opt/gpufaas/bundle", "--socket", HOST_SOCKET_IN_CONTAINER, "--token", str(inst.id),
                       "--execute", self.execute, "--gpu-type", inst.gpu.type_name, "--share", f"{inst.share:g}",
                       "--threads", "1"]
        return self.client.containers.create(
            image, command=command or None, name=f"gpufaas-{self.scope}-{inst.function.name}-{inst.id}", detach=True,
            environment=env,
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
            if self.worker == "platform":
                link, hello, t3, t4 = await self._connect_platform(box)
            else:
                link, hello, t3, t4 = await self._connect_builtin(box)
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
        worker_parts = {k: v for k, v in hello.items() if k.startswith("worker_") and k.endswith("_ms")}
        info = {"backend": "docker", "container": box.container.id[:12], "image": image, **box.parts_ms,
                **worker_parts, "worker": hello}
        self.ctl.on_instance_ready(inst, info)

    async def _connect_builtin(self, box: _Box) -> tuple[_Link, dict, int, int]:
        """Start the container; the built-in entry listens, we connect. Returns (link, hello, t_started, t_ready)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, box.container.start)
        t3 = perf_ns()
        sock = box.sock_dir / "worker.sock"
        deadline = t3 + int(self.ready_timeout_s * 1e9)
        while not sock.exists():
            if perf_ns() > deadline:
                raise TimeoutError(f"worker socket did not appear within {self.ready_timeout_s:g} s")
            await asyncio.sleep(0.002)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        link = _Link(reader, writer)
        hello, _ = await asyncio.wait_for(link.recv(), self.ready_timeout_s)
        t4 = perf_ns()
        link.send({"kind": "init"}, _output_template(box.inst.function.spec))
        return link, hello, t3, t4

    async def _connect_platform(self, box: _Box) -> tuple[_Link, dict, int, int]:
        """Listen on the mounted folder, start the container; the platform worker connects, says HELLO,
        builds its model and says READY (or FAILED with the reason)."""
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
            link = _WireLink(reader, writer)
            kind, hello = await asyncio.wait_for(link.next_message(), self.ready_timeout_s)
            kind, ready = await asyncio.wait_for(link.next_message(), self.ready_timeout_s)
            if kind == wire.Kind.FAILED:
                raise RuntimeError(f"the worker failed to start: {ready.get('error')}")
            if kind != wire.Kind.READY:
                raise RuntimeError(f"the worker sent {kind.name} instead of READY")
            t4 = perf_ns()
        finally:
            server.close()
        info = {**hello, **ready}
        info.update({f"worker_{k}_ms": v for k, v in (ready.get("parts_ms") or {}).items()})
        info.pop("parts_ms", None)
        return link, info, t3, t4

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
        inst = box.inst
        try:
            while True:
                batch_id, outputs, error = await link.next_result()
                batch = link.pending.pop(batch_id, None)
                if batch is None:
                    continue
                sent = self._sent_ns.pop(batch.id, None)
                if sent is not None:
                    self.round_trips_ns.append(perf_ns() - sent)
                if error:
                    self.ctl.on_batch_done(inst, batch, None, error)
                else:
                    self.ctl.on_batch_done(inst, batch, outputs)
        except asyncio.CancelledError:
            return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError, wire.WireError):
            pass
        if box.stopped:
            return
        for bid in link.pending:
            self._sent_ns.pop(bid, None)
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


def _output_template(spec: Any) -> bytes:
    """One output item of the function's declared shapes, zeros, msgpack-encoded (b"" when none declared)."""
    if not spec.outputs:
        return b""
    # NOTE: bfloat16 has no numpy dtype; float32 stands in, as in the inproc backend.
    item = {k: np.zeros(t.shape, dtype=np.float32 if t.dtype == "bfloat16" else np.dtype(t.dtype)) for k, t in spec.outputs.items()}
    return msgpack.packb(item, default=_pack_default, use_bin_type=True)


# NOTE: items cross the socket as msgpack with numpy arrays as an extension type (dtype, shape, raw
# bytes), never pickle; the built-in worker hands the blob back untouched in emulated mode.
_NDARRAY_EXT = 1


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return msgpack.ExtType(_NDARRAY_EXT, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} to a container; use JSON types, bytes or numpy arrays")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _NDARRAY_EXT:
        dtype, shape, raw = msgpack.unpackb(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    return msgpack.ExtType(code, data)


def encode_items(items: list) -> bytes:
    """A batch's items as one msgpack blob (numpy arrays kept as arrays)."""
    return msgpack.packb(items, default=_pack_default, use_bin_type=True)


def decode_items(blob: bytes) -> list:
    """The inverse of `encode_items`."""
    return msgpack.unpackb(blob, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def container_count(client: Any, scope: str) -> int:
    """Containers (running or not) labelled with `scope`; tests and `gpufaas ls` use it."""
    return len(client.api.containers(all=True, filters={"label": [f"{images.MANAGED_LABEL}=1", f"gpufaas.scope={scope}"]}))


async def measure_dispatch(backend: Any, *, num_warm: int = 300, prepare: bool = True) -> dict:
    """Warm round trip and cold start of the docker or ray backend, as `gpufaas bench dispatch` JSON (the
    same keys as the process backend's `measure_process`).

    Builds a controller on a one-GPU cluster (node `node-0`) with one single-stage workflow, lets the first
    invocation cold-start an instance, then sends `num_warm` invocations one after another to the warm
    instance with emulated latency off, so what is timed is dispatch: controller -> backend -> worker ->
    back. With `prepare`, calls the backend's `prepare()` (the ray backend's with the cluster) first.
    Who calls it: gateway/cli/bench_dispatch.py and the tests; the caller closes the backend.
    """
    from gpufaas.platform.backends.dispatch_probe import BENCH_CLUSTER, cold_then_warm, report
    from gpufaas.platform.clock import LoopClock
    from gpufaas.platform.controller import Controller
    from gpufaas.platform.policy.registry import builtin_registry
    from gpufaas.platform.profiles import Profiles
    from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec

    cluster = ClusterSpec.model_validate(BENCH_CLUSTER)
    fn = FunctionSpec.model_validate({"name": "bench-echo", "model": "preprocess", "batch_sizes": [1], "shares": [1.0],
                                      "outputs": {"y": {"dtype": "float32", "shape": [16]}}})
    wf = WorkflowSpec.model_validate({"name": "bench", "slo_ms": 60_000, "stages": [{"name": "echo", "function": "bench-echo"}]})
    loop = asyncio.get_running_loop()
    if prepare:
        if backend.name == "ray":
            await loop.run_in_executor(None, backend.prepare, cluster)
        else:
            await loop.run_in_executor(None, backend.prepare)
    backend.emulate_latency = False  # hold 0: the figures are the platform's own cost
    ctl = Controller(cluster, Profiles.shipped(), builtin_registry().make("batch1-wholegpu"), backend, LoopClock(),
                     live=True, keep_alive_s=600)
    if hasattr(backend, "prepare_function"):
        await loop.run_in_executor(None, backend.prepare_function, fn)
    ctl.deploy_function(fn)
    ctl.deploy_workflow(wf)
    try:
        inst, e2e_ns = await cold_then_warm(ctl, "bench", num_warm)
    finally:
        ctl.shutdown()
    cold = {k: v for k, v in inst.info.items() if k.endswith("_ms")}
    return report(backend.name, "emulated", fn.name, backend.round_trips_ns, e2e_ns, cold)
