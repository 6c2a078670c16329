"""The process backend: one worker process per instance (`python -m gpufaas.platform.worker`), msgpack
frames over one Unix socket (the embedded default of `gpufaas up`).

Who calls what: the controller calls `start`, `submit` and `stop` (interface.py); this backend answers
through `on_instance_ready(inst, info)`, `on_batch_done(...)` and `on_instance_failed(inst, reason)` from
callbacks on the running asyncio loop. The gateway calls `aclose()` at shutdown.

How it works: the backend listens on one Unix socket in `workdir`; each worker connects, says HELLO with
its instance token, starts up and says READY with its measured parts. `info` (in ms) = spawn (fork/exec
and interpreter start, host-measured), imports, model_build, first_batch (worker-measured) and total
(host-measured, spawn to READY). Torch threads per worker are capped by `threads_per_worker` (and
OMP/MKL env vars). Failure handling: a worker that exits or closes its socket mid-batch, sends no
frame (not even a heartbeat) for `3 * heartbeat_s`, or holds a batch longer than `hang_timeout_s`
beyond its profiled latency, is killed and reported with `on_instance_failed`, so the controller
retries its jobs once on another instance or fails them with the reason: no invocation is lost or left
pending. An item whose payload does not match the function's input schema fails its own invocation
(`fail_invocation`, no retry: the same payload would fail again); the rest of the batch completes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from gpufaas.platform import wire
from gpufaas.platform.clock import Handle, NS_PER_S
from gpufaas.platform.runtime import Batch, Instance
from gpufaas.platform.wire import Kind

STOP_GRACE_S = 2.0


class _Worker:
    """What the backend holds for one instance: its process, socket streams and batches in flight."""

    __slots__ = ("inst", "proc", "reader", "writer", "spawn_ns", "hello_t0_ns", "last_frame_ns", "batch",
                 "hang", "stopped", "ready", "sent_ns", "watch")

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.spawn_ns = 0
        self.hello_t0_ns = 0
        self.last_frame_ns = 0
        self.batch: Batch | None = None
        self.hang: Handle | None = None
        self.stopped = False
        self.ready = False
        self.sent_ns = 0
        self.watch: asyncio.Task | None = None


class ProcessBackend:
    """A worker process per instance on this machine. See the module docstring for the call flow."""

    name = "process"

    def __init__(self, clock: Any, *, execute: str = "emulated", bundle_dir: Callable[[str], Path],
                 threads_per_worker: int = 1, hang_timeout_s: float = 30.0, heartbeat_s: float = 1.0,
                 workdir: Path | None = None, ready_timeout_s: float = 120.0, small_models: bool = False,
                 python: str | None = None) -> None:
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
        self.ctl: Any = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gpufaas-proc-"))
        self.socket_path = str(self.workdir / "host.sock")
        self._server: asyncio.AbstractServer | None = None
        self._server_lock = asyncio.Lock()
        self._workers: dict[int, _Worker] = {}
        self._watchdog: Handle | None = None
        self._conn_tasks: set[asyncio.Task] = set()
        self._spawn_tasks: set[asyncio.Task] = set()  # one per worker, until its process has been reaped
        self.round_trips_ns: deque[int] = deque(maxlen=100_000)  # submit -> result, for `bench dispatch`
        self.failures: list[tuple[int, str]] = []  # (instance id, reason), for tests and logs
        self.max_start_failures = 2
        self._start_failures: dict[str, int] = {}  # function -> consecutive failed start-ups

    # ------------------------------------------------------------------ the Backend protocol

    def bind(self, controller: Any) -> None:
        """Called once by the controller's constructor."""
        self.ctl = controller

    def start(self, inst: Instance) -> None:
        """Spawn the worker; READY -> on_instance_ready, a failed start -> on_instance_failed."""
        w = _Worker(inst)
        self._workers[inst.id] = w
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
            frame = wire.encode(Kind.BATCH, id=batch.id, items=items, hold_ns=hold_ns)
        except TypeError as e:
            why = f"payload cannot be sent: {e}"  # bound now: `e` is unset once the except block ends
            self.clock.call_soon(lambda: self.ctl.on_batch_done(inst, batch, None, why))
            return
        w.batch = batch
        w.sent_ns = time.perf_counter_ns()
        limit_ns = (hold_ns or 0) + int(self.hang_timeout_s * NS_PER_S)
        w.hang = self.clock.call_at(self.clock.now_ns() + limit_ns, self._on_hang, inst.id, batch.id)
        w.writer.write(frame)

    def stop(self, inst: Instance) -> None:
        """Ask the worker to exit (STOP), kill it after a grace period; no callback follows."""
        w = self._workers.pop(inst.id, None)
        if w is None:
            return
        self._shutdown(w)

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
            import shutil

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
                self._arm_watchdog()

    def worker_command(self, inst: Instance) -> list[str]:
        """The worker's argv (the docker and ray backends can run the same worker with other launchers)."""
        cmd = [self.python, "-m", "gpufaas.platform.worker", "--bundle", str(self.bundle_dir(inst.function.name)),
               "--socket", self.socket_path, "--token", str(inst.id), "--execute", self.execute,
               "--gpu-type", inst.gpu.type_name, "--share", f"{inst.share:g}", "--threads", str(self.threads_per_worker),
               "--heartbeat-s", f"{self.heartbeat_s:g}"]
        if self.small_models:
            cmd.append("--small")
        return cmd

    async def _spawn(self, w: _Worker) -> None:
        inst = w.inst
        try:
            await self._ensure_server()
            t = str(self.threads_per_worker)
            env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, PYTHONUNBUFFERED="1")
            w.spawn_ns = time.monotonic_ns()
            w.proc = await asyncio.create_subprocess_exec(*self.worker_command(inst), env=env, stdin=asyncio.subprocess.DEVNULL,
                                                          stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            self._fail(inst.id, f"cannot spawn worker: {e}")
            return
        w.last_frame_ns = time.monotonic_ns()
        proc = w.proc
        stderr_tail: deque[str] = deque(maxlen=5)

        async def drain() -> None:
            assert proc.stderr is not None
            async for line in proc.stderr:
                stderr_tail.append(line.decode(errors="replace").rstrip())

        drainer = asyncio.ensure_future(drain())
        try:
            code = await proc.wait()
        finally:
            await asyncio.gather(drainer, return_exceptions=True)
        if not w.stopped and self._workers.get(inst.id) is w:
            tail = f": {stderr_tail[-1]}" if stderr_tail else ""
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
        w = self._workers.get(int(m.get("token") or 0)) if kind == Kind.HELLO and str(m.get("token", "")).isdigit() else None
        if w is None or w.stopped:
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
        parts = {k: round(float(v), 3) for k, v in (m.get("parts_ms") or {}).items()}
        t0 = int(m.get("t0_ns") or w.hello_t0_ns)
        info = {"spawn": round((t0 - w.spawn_ns) / 1e6, 3) if t0 else 0.0, **parts,
                "total": round((now - w.spawn_ns) / 1e6, 3), "pid": w.proc.pid if w.proc else 0,
                "execute": m.get("execute", self.execute), "device": m.get("device", "cpu")}
        self.ctl.on_instance_ready(w.inst, info)

    def _on_result(self, w: _Worker, m: dict) -> None:
        batch = w.batch
        if batch is None or m.get("id") != batch.id:
            return
        self.round_trips_ns.append(time.perf_counter_ns() - w.sent_ns)
        w.batch = None
        if w.hang is not None:
            w.hang.cancel()
            w.hang = None
        inst = w.inst
        if m.get("error"):
            self.ctl.on_batch_done(inst, batch, None, f"{inst.function.name}: {m['error']}")
            return
        outputs = m.get("outputs") or [None] * len(batch.jobs)
        errors = m.get("errors") or []
        for job, err in zip(batch.jobs, errors):
            if err:
                self.ctl.fail_invocation(job.inv, f"stage '{job.stage.name}' ({inst.function.name}): bad input: {err}")
        self.ctl.on_batch_done(inst, batch, outputs)

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


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
