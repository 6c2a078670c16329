"""The live driver in a process of its own, for a caller that serves the gateway in this process.

A load generator does not share its server's event loop: on the gateway's loop, the driver's own work
(its timers, sending, reading and parsing every answer) was about 17 % of that loop in chain at load 1
(py-spy, this project's 2-core development machine), time the gateway's requests, timers and policy
passes waited for. `DriverProcess` runs `loadgen.driver.Driver` in a child interpreter
(`python -m gpufaas.loadgen.driver_process`) on uvloop, as `gpufaas loadgen` runs it; the child reports its
schedule's time 0 on the monotonic clock as soon as it is set (`Driver.on_start`), then its whole `LiveRun`.

The child reads the driver's arguments from its stdin and writes its messages to its stdout, each a 4-byte
big-endian length and a pickle of (kind, value): a private pipe between two processes of the same install,
never a network peer. NOTE: a fresh interpreter, not `multiprocessing`: its spawn start re-runs the caller's
main script, which fails for any script that starts a run at import (no `if __name__ == "__main__"`).

Who calls it: `loadgen.fidelity.run_live`. It changes nothing but the gateway's state, through its HTTP
API (the child's driver); it starts one child process and ends it (`close`, also on error or cancel).
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from typing import Any, BinaryIO

from gpufaas.loadgen.driver import Driver, LiveRun, run_blocking
from gpufaas.platform.errors import UserError

_STARTED, _RUN, _ERROR = "started", "run", "error"
JOIN_TIMEOUT_S = 5.0  # how long `close` waits for a child that sent its last message to exit before it kills it


class DriverProcess:
    """One driver run in a child process: `await start()`, `await started()` (its time 0, ns on the
    monotonic clock), `await finished()` (its `LiveRun`), `await close()` (always; kills a child still
    running). The keyword arguments are `Driver`'s, without `progress` and `on_start` (they cannot cross
    processes). A driver that refuses to start (its preflight) raises its one-line UserError from `started`."""

    def __init__(self, **driver_kw: Any) -> None:
        self._kw = driver_kw
        self._proc: asyncio.subprocess.Process | None = None
        self._last = False  # the child sent its last message (its run or its error)

    async def start(self) -> None:
        """Start the child (about a second of imports before it sends anything) and hand it the arguments."""
        self._proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gpufaas.loadgen.driver_process",
                                                          stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._proc.stdin is not None
        self._proc.stdin.write(pickle.dumps(self._kw))
        await self._proc.stdin.drain()
        self._proc.stdin.close()

    async def _recv(self, expect: str) -> Any:
        assert self._proc is not None and self._proc.stdout is not None, "start() first"
        try:
            n = int.from_bytes(await self._proc.stdout.readexactly(4), "big")
            kind, value = pickle.loads(await self._proc.stdout.readexactly(n))
        except asyncio.IncompleteReadError:
            code = await self._proc.wait()
            raise RuntimeError(f"the driver process exited (code {code}) before it sent its {expect}; its stderr is above") from None
        if kind == _ERROR:
            self._last = True
            raise UserError(value)
        if kind != expect:
            raise RuntimeError(f"the driver process sent {kind!r} where its {expect} was due")
        return value

    async def started(self) -> int:
        """The schedule's time 0 (ns, monotonic clock), once the child's preflight passed."""
        return int(await self._recv(_STARTED))

    async def finished(self) -> LiveRun:
        """The child's `LiveRun`, once every answer is in (or timed out)."""
        run = await self._recv(_RUN)
        self._last = True
        assert isinstance(run, LiveRun)
        return run

    async def close(self) -> None:
        """End the child: once it sent its last message, wait for it to exit (up to JOIN_TIMEOUT_S); before
        (the caller failed or was cancelled), kill it at once."""
        p = self._proc
        if p is None or p.returncode is not None:
            return
        if self._last:
            try:
                await asyncio.wait_for(p.wait(), JOIN_TIMEOUT_S)
                return
            except TimeoutError:
                pass
        p.kill()
        await p.wait()

    @property
    def returncode(self) -> int | None:
        """The child's exit status once it ended (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.returncode


def _send(out: BinaryIO, kind: str, value: Any) -> None:
    data = pickle.dumps((kind, value))
    out.write(len(data).to_bytes(4, "big") + data)
    out.flush()


def main() -> None:
    """The child: read the driver's arguments (stdin), run it on uvloop, write (started, t0_ns) then (run,
    LiveRun), or (error, one line) when the driver refuses to start (its preflight) or fails."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the message pipe
    kw = pickle.load(sys.stdin.buffer)
    try:
        run = run_blocking(Driver(**kw, on_start=lambda t0_ns: _send(out, _STARTED, t0_ns)))
    except UserError as e:
        _send(out, _ERROR, str(e))
        return
    except Exception as e:  # noqa: BLE001 (reported to the parent as one line; the traceback goes to stderr)
        _send(out, _ERROR, f"the driver process failed: {type(e).__name__}: {e}")
        raise
    _send(out, _RUN, run)


if __name__ == "__main__":
    main()
