"""Child processes started off the event loop: `spawn` and the `Child` protocol the backends use.

`asyncio.create_subprocess_exec` forks and execs on the loop's own thread and waits there until the child
has exec'd. For a worker that is 8-58 ms of a held loop per start, measured in a `gpufaas fidelity` run of
mixed at load 1 on the 2-core development machine (a sandbox's `preexec_fn` rules out vfork, and the child
competes for the cores with the workers already starting), and a round of eight starts held the gateway's
loop for about a quarter of a second: requests, batch ends and policy ticks all waited. `spawn` runs
`subprocess.Popen` on a worker thread instead (only that thread waits for the exec) and watches the child
with a pidfd on the loop (`os.pidfd_open`, Linux 5.3+), so a start costs the loop next to nothing.

Who calls it: `bundle.Sandbox.spawn` and the process backend's uncontained start (each worker process).
It changes nothing but the process it starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from typing import IO, Callable, Protocol


class Child(Protocol):
    """What the backends use of a started process: `asyncio.subprocess.Process` (the deploy-time bundle
    check) and `Spawned` (workers) both have it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class Spawned:
    """A process started by `spawn`. `returncode` is None while it runs; `wait()` waits on the loop (a
    pidfd reader, no thread) and reaps it; `stderr` reads its stderr when `spawn` was asked for a pipe."""

    def __init__(self, popen: subprocess.Popen, stderr: asyncio.StreamReader | None) -> None:
        self._popen = popen
        self.stderr = stderr

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()  # reaps it if it has exited (waitpid WNOHANG)

    def kill(self) -> None:
        self._popen.kill()

    async def wait(self) -> int:
        """Its exit code, once it has exited. Several may wait at once."""
        rc = self._popen.poll()
        if rc is not None:
            return rc
        try:
            fd = os.pidfd_open(self._popen.pid)
        except ProcessLookupError:  # reaped by another waiter in between
            return self._popen.wait()
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return self._popen.wait()  # exited: reaps at once


async def spawn(argv: list[str], *, env: dict[str, str], cwd: str | None = None, stderr: int | IO = subprocess.PIPE,
                preexec_fn: Callable[[], None] | None = None, pass_fds: tuple[int, ...] = ()) -> Spawned:
    """Start `argv` in its own session (process group), stdin and stdout on /dev/null, `stderr` to a file
    or (`subprocess.PIPE`) to `Spawned.stderr`; `preexec_fn` runs in the child before exec. The fork and
    exec happen on a worker thread (the module's reason). OSError when it cannot start."""
    started = asyncio.ensure_future(asyncio.to_thread(
        subprocess.Popen, argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        preexec_fn=preexec_fn, pass_fds=pass_fds, start_new_session=True))
    try:
        popen = await asyncio.shield(started)
    except asyncio.CancelledError:
        # NOTE: the thread cannot be stopped mid-fork: the process it starts is killed, group and all, and reaped
        started.add_done_callback(_kill_started)
        raise
    reader = None
    if popen.stderr is not None:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), popen.stderr)
    return Spawned(popen, reader)


def _kill_started(started: asyncio.Future) -> None:
    """Kill and reap the process of a `spawn` that was cancelled while its thread started it."""
    if started.cancelled() or started.exception() is not None:
        return
    popen: subprocess.Popen = started.result()
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    asyncio.get_running_loop().run_in_executor(None, popen.wait)
