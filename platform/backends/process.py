"""The process backend: one worker process per instance (`python -m gpufaas.platform.worker`), msgpack
frames over one Unix socket (the embedded default of `gpufaas up`).

Who calls what: the controller calls `start`, `submit` and `stop` (interface.py); this backend answers
through `on_instance_ready(inst, info)`, `on_batch_done(...)` and `on_instance_failed(inst, reason)` from
callbacks on the running asyncio loop. The gateway calls `prepare`/`prepare_function` (no-ops: a worker
needs nothing set up beforehand) and `aclose()` at shutdown (the LiveBackend protocol).

How it works: the backend listens on one Unix socket in `workdir`; each worker connects, says HELLO with
its instance token, starts up and says READY with its measured parts. `info`: `spawn_ms` (fork/exec
and interpreter start, host-measured), `imports_ms`, `model_build_ms`, `first_batch_ms` (worker-measured)
and `cold_start_ms` (host-measured, spawn to READY; the name every live backend uses for it). Torch
threads per worker are capped by `threads_per_worker` (and OMP/MKL env vars). Failure handling: a worker that exits or closes its socket mid-batch, sends no
frame (not even a heartbeat) for `3 * heartbeat_s`, or holds a batch longer than `hang_timeout_s`
beyond its profiled latency, is killed and reported with `on_instance_failed`, so the controller
retries its jobs once on another instance or fails them with the reason: no invocation is lost or left
pending. An item whose payload does not match the function's input schema fails its own invocation
(`fail_invocation`, no retry: the same payload would fail again); the rest of the batch completes.
Every failure is logged (warning, with the worker's pid and the reason).

Containment (bundle code is untrusted; `bundle.Sandbox`): each worker runs in its own session with
rlimits (address space: `ADDRESS_SPACE_BASE_MB` + 2x the instance's profiled memory, none for real mode
on a CUDA host; open files; processes), `no_new_privs`, a private working dir, an allow-listed
environment, and, when the gateway is root, a uid of its own. It reads a world-readable copy of its
bundle in the backend's run folder (0711, not listable), never the gateway's data dir. When a worker
ends, its process group and every process of its uid are killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from gpufaas.platform import wire
from gpufaas.platform.bundle import BundleError, Sandbox, kill_sandbox, open_dir, require_spec_file, sandbox_uid, share_read_only
from gpufaas.platform.backends.interface import UNBOUND, BackendHost
from gpufaas.platform.clock import Clock, Handle, NS_PER_S
from gpufaas.platform.runtime import Batch, Instance
from gpufaas.platform.spawn import Spawned, spawn
from gpufaas.platform.wire import Kind
from gpufaas.platform.worker import worker_argv

if TYPE_CHECKING:
    from gpufaas.platform.specs import ClusterSpec, FunctionSpec

STOP_GRACE_S = 2.0
MAX_COST_SAMPLES = 100_000
ADDRESS_SPACE_BASE_MB = {"emulated": 1024, "real": 4096}  # interpreter + numpy (+ torch) before the model's own memory

log = logging.getLogger("gpufaas.process")


class Started(NamedTuple):
    """One instance a policy started: its function, share units, `Instance.start_reason` and start time (ns, on
    the clock of whoever records it; `Started.of` reads them off an instance). Who records it: the process
    backend (`Costs.started`) and fidelity's simulated backends. Who reads it: `loadgen.fidelity.pools`."""

    function: str
    share_units: int
    reason: str
    start_ns: int

    @classmethod
    def of(cls, inst: Instance) -> "Started":
        return cls(inst.function.name, inst.share_units, inst.start_reason, inst.start_ns)


class Costs:
    """What the backend's own path costs, measured on every batch and start (`gpufaas fidelity` feeds them
    to the simulator's model; the last `MAX_COST_SAMPLES` of each are kept).

    `dispatch_ns`: (function, batch size, start_ns, extra_ns) per batch: its start on the backend's clock,
    and its round trip as the controller sees it (handed to the backend -> on_batch_done) less its emulated
    hold (`emulated`) or the worker's measured execution (`real`): framing, the socket both ways, the
    worker's wake-up and its hold's overshoot, the event loop's hops. `cold_start_ns`: (function, start_ns,
    cold_ns) per instance: its start on the backend's clock and its cold start as the controller sees it,
    Start -> READY (sandbox set-up, spawn, imports, first batch). `started`: a `Started` per instance asked
    for, in order (what the policy started and why: fidelity compares the pools of both sides).
    Who writes it: the process backend. Who reads it: `loadgen.fidelity`."""

    __slots__ = ("dispatch_ns", "cold_start_ns", "started")

    def __init__(self) -> None:
        self.dispatch_ns: deque[tuple[str, int, int, int]] = deque(maxlen=MAX_COST_SAMPLES)
        self.cold_start_ns: deque[tuple[str, int, int]] = deque(maxlen=MAX_COST_SAMPLES)
        self.started: deque[Started] = deque(maxlen=MAX_COST_SAMPLES)


class _Worker:
    """What the backend holds for one instance: its process, socket streams and batches in flight."""

    __slots__ = ("inst", "token", "proc", "reader", "writer", "spawn_ns", "hello_t0_ns", "last_frame_ns", "batch",
                 "hold_ns", "hang", "stopped", "ready", "watch")

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        # NOTE: id plus a secret: the socket is reachable by the sandbox uids, so HELLO must prove which worker it is
        self.token = f"{inst.id}.{secrets.token_hex(8)}"
        self.proc: Spawned | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.spawn_ns = 0
        self.hello_t0_ns = 0
        self.last_frame_ns = 0
        self.batch: Batch | None = None
        self.hold_ns: int | None = None  # the batch's emulated hold (None in real mode)
        self.hang: Handle | None = None
        self.stopped = False
        self.ready = False
        self.watch: asyncio.Task | None = None


class ProcessBackend:
    """A worker process per instance on this machine. See the module docstring for the call flow."""

    name = "process"
    takes_not_before = False

    def __init__(self, clock: Clock, *, execute: str = "emulated", bundle_dir: Callable[[str], Path],
                 threads_per_worker: int = 1, hang_timeout_s: float = 30.0, heartbeat_s: float = 1.0,
                 workdir: Path | None = None, ready_timeout_s: float = 120.0, small_models: bool = False,
                 python: str | None = None, contain: bool = True) -> None:
        if execute not in ("emulated", "real"):
            raise ValueError(f"execute must be 'emulated' or 'real', not {execute!r}")
        if threads_per_worker < 1 or hang_timeout_s <= 0 or heartbeat_s <= 0:
            raise ValueError("threads_per_worker >= 1, hang_timeout_s > 0 and heartbeat_s > 0 are required")
        self.clock = clock
        self.execute = execute
        self.bundle_dir = bundle_dir
        self.threads_per_worker = threads_per_worker
        self.hang_timeout_s = hang_timeout_s
        self.heartbeat_s = heartbeat_s
        self.ready_timeout_s = ready_timeout_s
        self.small_models = small_models  # reduced-width models (tests); real mode only
        self.python = python or sys.executable
        self.ctl: BackendHost = UNBOUND
        self.contain = contain  # sandbox the workers (bundle.Sandbox); off only for trusted code
        # NOTE: as root, workers run as other uids, which must reach the socket and their bundle copy: those
        # live in a fresh 0711 folder under the system temp dir (a given `workdir` may sit below a 0700 one).
        self._own_workdir = workdir is None or (contain and os.geteuid() == 0)
        self.workdir = Path(tempfile.mkdtemp(prefix="gpufaas-proc-")) if self._own_workdir else Path(workdir)  # type: ignore[arg-type]
        self.socket_path = str(self.workdir / "host.sock")
        self._bundles: dict[str, asyncio.Future[Path]] = {}  # function -> the copy of its bundle in workdir (`_bundle_copy`)
        self._server: asyncio.AbstractServer | None = None
        self._server_lock = asyncio.Lock()
        self._workers: dict[int, _Worker] = {}
        self._watchdog: Handle | None = None
        self._conn_tasks: set[asyncio.Task] = set()
        self._spawn_tasks: set[asyncio.Task] = set()  # one per worker, until its process has been reaped
        self.failures: list[tuple[int, str]] = []  # (instance id, reason), for tests and logs
        self.max_start_failures = 2
        self._start_failures: dict[str, int] = {}  # function -> consecutive failed start-ups
        self.costs = Costs()

    # ------------------------------------------------------------------ the Backend protocol

    def bind(self, host: BackendHost) -> None:
        """Called once by the controller's constructor."""
        self.ctl = host

    def start(self, inst: Instance) -> None:
        """Spawn the worker; READY -> on_instance_ready, a failed start -> on_instance_failed."""
        w = _Worker(inst)
        self._workers[inst.id] = w
        self.costs.started.append(Started.of(inst))
        w.watch = asyncio.get_running_loop().create_task(self._spawn(w))
        self._spawn_tasks.add(w.watch)
        w.watch.add_done_callback(self._spawn_tasks.discard)

    def submit(self, inst: Instance, batch: Batch) -> None:
        """Send the batch (items = the per-job payloads the controller put in batch.outputs)."""
        w = self._workers.get(inst.id)
        if w is None or w.writer is None or w.stopped:
            self.clock.call_soon(lambda: self._fail(inst.id, "worker is gone"))
            return
        hold_ns = None
        if self.execute == "emulated":
            hold_ns = inst.batch_latency_ns(len(batch.jobs))
        items = batch.outputs if batch.outputs is not None else [None] * len(batch.jobs)
        try:
            frame = wire.encode_parts(Kind.BATCH, id=batch.id, items=items, hold_ns=hold_ns)
        except TypeError as e:
            why = f"payload cannot be sent: {e}"  # bound now: `e` is unset once the except block ends
            self.clock.call_soon(lambda: self.ctl.on_batch_done(inst, batch, None, why))
            return
        w.batch = batch
        w.hold_ns = hold_ns
        limit_ns = (hold_ns or 0) + int(self.hang_timeout_s * NS_PER_S)
        w.hang = self.clock.call_at(self.clock.now_ns() + limit_ns, self._on_hang, inst.id, batch.id)
        w.writer.writelines(frame)

    def stop(self, inst: Instance) -> None:
        """Ask the worker to exit (STOP), kill it after a grace period; no callback follows."""
        w = self._workers.pop(inst.id, None)
        if w is None:
            return
        self._shutdown(w)

    # ------------------------------------------------------------------ the LiveBackend lifecycle

    def prepare(self, cluster: ClusterSpec | None = None) -> None:
        """Nothing to set up: the socket server starts with the first worker."""

    def prepare_function(self, spec: FunctionSpec, bundle_dir: Path) -> None:
        """Forget the function's bundle copy: its next worker copies the (new) bundle folder when it starts.
        The gateway checks the bundle at deploy (`bundle.BundleChecker`)."""
        self._bundles.pop(spec.name, None)

    async def aclose(self) -> None:
        """Stop every worker and wait for the processes to exit; remove the socket folder we made."""
        workers = list(self._workers.values())
        self._workers.clear()
        for w in workers:
            self._shutdown(w)
        for w in workers:
            if w.proc is not None and w.proc.returncode is None:
                try:
                    await asyncio.wait_for(w.proc.wait(), STOP_GRACE_S + 1)
                except asyncio.TimeoutError:
                    w.proc.kill()
                    await w.proc.wait()
        if self._spawn_tasks:
            # NOTE: also the workers that failed earlier: their transports close once they are reaped
            # (an unreaped one would warn at garbage collection after the loop is closed).
            await asyncio.wait(list(self._spawn_tasks), timeout=STOP_GRACE_S + 2)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for t in list(self._conn_tasks):
            t.cancel()
        if self._conn_tasks:
            await asyncio.wait(list(self._conn_tasks), timeout=2.0)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ start-up

    async def _ensure_server(self) -> None:
        async with self._server_lock:
            if self._server is None:
                self.workdir.mkdir(parents=True, exist_ok=True)
                try:
                    os.unlink(self.socket_path)
                except FileNotFoundError:
                    pass
                self._server = await asyncio.start_unix_server(self._on_connect, path=self.socket_path)
                if self.contain:
                    open_dir(self.workdir)
                    os.chmod(self.socket_path, 0o666)  # sandbox uids connect; HELLO's token says who they are
                self._arm_watchdog()

    def worker_command(self, inst: Instance, token: str, bundle: Path) -> list[str]:
        """The worker's argv (the docker backend runs the same worker, with the same `worker_argv`, in a container)."""
        return [self.python, "-m", "gpufaas.platform.worker", *worker_argv(
            bundle=str(bundle), socket_path=self.socket_path, token=token,
            execute=self.execute, gpu_type=inst.gpu.type_name, share=inst.share, threads=self.threads_per_worker,
            heartbeat_s=self.heartbeat_s, small=self.small_models)]

    async def _bundle_copy(self, function: str) -> Path:
        """The function's bundle as its workers read it: a world-readable copy, made once per deploy.
        NOTE: one copy even when several instances of a function start at once: the first spawn's copy is a
        task the others await (a redeploy drops it; a failed copy is tried again by the next spawn)."""
        task = self._bundles.get(function)
        if task is None or task.get_loop() is not asyncio.get_running_loop() or (task.done() and (
                task.cancelled() or task.exception() is not None or not task.result().is_dir())):
            src = self.bundle_dir(function)
            require_spec_file(src)
            dst = self.workdir / f"bundle-{len(self._bundles)}-{secrets.token_hex(4)}"

            async def copy() -> Path:
                await asyncio.to_thread(share_read_only, src, dst)
                return dst

            task = self._bundles[function] = asyncio.ensure_future(copy())
        return await asyncio.shield(task)

    async def _sandbox(self, inst: Instance) -> Sandbox:
        cuda = self.execute == "real" and Path("/dev/nvidiactl").exists()
        # NOTE: no address-space limit for real mode on a CUDA host: the driver reserves far more virtual memory than it uses
        mem = None if cuda else ADDRESS_SPACE_BASE_MB[self.execute] + 2 * int(inst.memory_mb)
        box = Sandbox(self.workdir / f"inst-{inst.id}", address_space_mb=mem, open_files=256, processes=128,
                      uid=await sandbox_uid(self.python))
        await asyncio.to_thread(box.prepare)
        return box

    async def _spawn(self, w: _Worker) -> None:
        inst = w.inst
        box: Sandbox | None = None
        try:
            await self._ensure_server()
            t = str(self.threads_per_worker)
            threads = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "PYTHONUNBUFFERED": "1"}
            if self.contain:
                box = await self._sandbox(inst)
                argv = self.worker_command(inst, w.token, await self._bundle_copy(inst.function.name))
                if w.stopped:
                    return
                w.spawn_ns = time.monotonic_ns()
                w.proc = await box.spawn(argv, box.env(threads))
            else:
                w.spawn_ns = time.monotonic_ns()
                w.proc = await spawn(self.worker_command(inst, w.token, self.bundle_dir(inst.function.name)),
                                     env=dict(os.environ, **threads))
        except OSError as e:
            self._fail(inst.id, f"cannot spawn worker: {e}")
            return
        except BundleError as e:
            self._fail(inst.id, f"worker failed to start: {e}")
            return
        w.last_frame_ns = time.monotonic_ns()
        proc = w.proc
        stderr_tail: deque[str] = deque(maxlen=5)

        async def drain() -> None:  # uncontained workers only: a sandbox writes its stderr to a file
            if proc.stderr is not None:
                async for line in proc.stderr:
                    stderr_tail.append(line.decode(errors="replace").rstrip())

        drainer = asyncio.ensure_future(drain())
        try:
            code = await proc.wait()
        finally:
            if box is not None:
                await kill_sandbox(proc, box)  # what it forked goes with it
                stderr_tail.append(box.stderr_tail())
                shutil.rmtree(box.workdir, ignore_errors=True)
                box.stderr_path.unlink(missing_ok=True)
            await asyncio.gather(drainer, return_exceptions=True)
        if not w.stopped and self._workers.get(inst.id) is w:
            tail = f": {stderr_tail[-1]}" if stderr_tail and stderr_tail[-1] else ""
            phase = "mid-batch" if w.batch is not None else ("while idle" if w.ready else "during start-up")
            self._fail(inst.id, f"worker pid {proc.pid} exited with code {code} {phase}{tail}")

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)
        try:
            kind, m = await asyncio.wait_for(wire.read_message(reader), self.ready_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, wire.WireError, OSError):
            writer.close()
            return
        token = str(m.get("token", "")) if kind == Kind.HELLO else ""
        head = token.partition(".")[0]
        w = self._workers.get(int(head)) if head.isdigit() else None
        if w is None or w.stopped or not secrets.compare_digest(w.token, token):
            writer.close()
            return
        w.reader, w.writer = reader, writer
        w.hello_t0_ns = int(m.get("t0_ns") or 0)
        w.last_frame_ns = time.monotonic_ns()
        iid = w.inst.id
        try:
            while True:
                kind, m = await wire.read_message(reader)
                w.last_frame_ns = time.monotonic_ns()
                if kind == Kind.RESULT:
                    self._on_result(w, m)
                elif kind == Kind.READY:
                    self._on_ready(w, m)
                elif kind == Kind.FAILED:
                    self._fail(iid, f"worker failed to start: {m.get('error', '?')}")
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the process watcher reports the exit (with its code)
        except wire.WireError as e:
            self._fail(iid, f"malformed frame from worker: {e}")
        except asyncio.CancelledError:
            pass  # the backend is closing
        finally:
            writer.close()

    def _on_ready(self, w: _Worker, m: dict) -> None:
        if w.stopped or w.ready:
            return
        w.ready = True
        self._start_failures.pop(w.inst.function.name, None)
        now = time.monotonic_ns()
        self.costs.cold_start_ns.append((w.inst.function.name, w.inst.start_ns, now - w.inst.start_ns))
        t0 = int(m.get("t0_ns") or w.hello_t0_ns)
        info = {"spawn_ms": round((t0 - w.spawn_ns) / 1e6, 3) if t0 else 0.0, **wire.ready_parts_ms(m),
                "cold_start_ms": round((now - w.spawn_ns) / 1e6, 3), "pid": w.proc.pid if w.proc else 0,
                "execute": m.get("execute", self.execute), "device": m.get("device", "cpu")}
        self.ctl.on_instance_ready(w.inst, info)

    def _on_result(self, w: _Worker, m: dict) -> None:
        batch = w.batch
        if batch is None or m.get("id") != batch.id or w.stopped:
            return  # NOTE: a stopped worker finishes its batch before exiting; no callback follows a stop
        w.batch = None
        if w.hang is not None:
            w.hang.cancel()
            w.hang = None
        model_ns = w.hold_ns if w.hold_ns is not None else int(m.get("exec_ns") or 0)
        self.costs.dispatch_ns.append((w.inst.function.name, len(batch.jobs), batch.start_ns,
                                       self.clock.now_ns() - batch.start_ns - model_ns))
        report_result(self.ctl, w.inst, batch, m)

    # ------------------------------------------------------------------ failures

    def _arm_watchdog(self) -> None:
        period_ns = int(self.heartbeat_s * NS_PER_S)
        self._watchdog = self.clock.call_at(self.clock.now_ns() + period_ns, self._watch)

    def _watch(self) -> None:
        """Every heartbeat period: a worker that has sent nothing for 3 periods is declared hung."""
        now = time.monotonic_ns()
        limit = 3 * self.heartbeat_s * NS_PER_S
        for iid, w in list(self._workers.items()):
            if w.writer is not None and not w.stopped and now - w.last_frame_ns > limit:
                self._fail(iid, f"worker pid {w.proc.pid if w.proc else '?'} hung: no heartbeat for {(now - w.last_frame_ns) / 1e9:.1f} s")
            elif w.writer is None and not w.stopped and w.spawn_ns and now - w.spawn_ns > self.ready_timeout_s * NS_PER_S:
                self._fail(iid, f"worker did not connect within {self.ready_timeout_s:g} s")
        self._arm_watchdog()

    def _on_hang(self, iid: int, batch_id: int) -> None:
        w = self._workers.get(iid)
        if w is not None and w.batch is not None and w.batch.id == batch_id:
            self._fail(iid, f"worker pid {w.proc.pid if w.proc else '?'} hung: batch {batch_id} not done "
                            f"within its profiled latency + {self.hang_timeout_s:g} s")

    def _fail(self, iid: int, reason: str) -> None:
        """Kill the worker and report the instance failed (once)."""
        w = self._workers.pop(iid, None)
        if w is None:
            return
        self.failures.append((iid, reason))
        log.warning("instance %d (%s) failed: %s; its jobs are retried once or failed with this reason", iid, w.inst.function.name, reason)
        self._shutdown(w, kill=True)
        self.ctl.on_instance_failed(w.inst, reason)
        if not w.ready:
            self._start_failed(w.inst.function.name, reason)

    def _start_failed(self, function: str, reason: str) -> None:
        # NOTE: jobs wait in the queue while their instance starts, so a start-up failure retries nothing by
        # itself and the policy would start the next instance forever. After `max_start_failures` failed
        # start-ups in a row, the function's queued invocations end as FAILED with the reason instead.
        n = self._start_failures[function] = self._start_failures.get(function, 0) + 1
        if n < self.max_start_failures:
            return
        self._start_failures.pop(function, None)
        for job in [j for j in self.ctl.jobs.values() if j.stage.function == function]:
            self.ctl.fail_invocation(job.inv, f"stage '{job.stage.name}' ({function}): {n} instances failed to start: {reason}")

    def _shutdown(self, w: _Worker, kill: bool = False) -> None:
        w.stopped = True
        if w.hang is not None:
            w.hang.cancel()
            w.hang = None
        proc = w.proc
        if proc is None:
            if w.watch is not None and not w.watch.done():
                w.watch.cancel()
            return
        if proc.returncode is not None:
            return
        if kill or not w.ready:
            _kill(proc)
            return
        if w.writer is not None:
            try:
                w.writer.write(wire.encode(Kind.STOP))
            except (ConnectionError, RuntimeError):
                pass
        asyncio.get_running_loop().call_later(STOP_GRACE_S, _kill, proc)


def report_result(host: BackendHost, inst: Instance, batch: Batch, m: dict) -> None:
    """Report a worker's RESULT message for `batch` to the host: a whole-batch `error` fails the batch
    (the controller retries it once); an item the worker refused (`errors`) fails its own invocation
    (`fail_invocation`, no retry: the same payload would fail again) and the rest completes.
    Who calls it: the process and docker backends (the same worker answers both)."""
    if m.get("error"):
        host.on_batch_done(inst, batch, None, f"{inst.function.name}: {m['error']}")
        return
    outputs = m.get("outputs") or [None] * len(batch.jobs)
    for job, err in zip(batch.jobs, m.get("errors") or []):
        if err:
            host.fail_invocation(job.inv, f"stage '{job.stage.name}' ({inst.function.name}): bad input: {err}")
    host.on_batch_done(inst, batch, outputs)


def _kill(proc: Spawned) -> None:
    """SIGKILL the worker's process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
