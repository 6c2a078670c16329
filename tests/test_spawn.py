"""platform.spawn: a child started off the loop is waited on through a pidfd, its stderr read on the loop,
and one whose start was cancelled is killed and reaped, not left running."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from gpufaas.platform.spawn import spawn


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_wait_returns_the_exit_code_to_every_waiter_and_stderr_is_read_on_the_loop():
    async def main():
        child = await spawn([sys.executable, "-c", "import sys, time; time.sleep(0.2); print('bye', file=sys.stderr); sys.exit(3)"],
                            env=dict(os.environ))
        assert child.returncode is None
        codes = await asyncio.gather(child.wait(), child.wait())
        assert child.stderr is not None
        line = await child.stderr.readline()
        return codes, child.returncode, line

    codes, rc, line = asyncio.run(main())
    assert codes == [3, 3] and rc == 3
    assert line.strip() == b"bye"


def test_the_loop_runs_while_a_child_lives_and_kill_ends_it():
    async def main():
        child = await spawn(["sleep", "30"], env=dict(os.environ), stderr=subprocess.DEVNULL)
        ticks = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.2:
            await asyncio.sleep(0.01)
            ticks += 1
        child.kill()
        return ticks, await child.wait()

    ticks, rc = asyncio.run(main())
    assert ticks >= 5
    assert rc == -9


def _running(arg: str) -> list[int]:
    """Pids of live (not zombie) processes with `arg` in their argv."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if arg.encode() in f.read().split(b"\0") and _alive(int(d)):
                        out.append(int(d))
            except OSError:
                pass
    return out


def test_a_start_cancelled_midway_leaves_no_process():
    arg = f"{30 + os.getpid() % 1000 / 1000:.3f}"  # a sleep no other process has

    async def main():
        task = asyncio.ensure_future(spawn(["sleep", arg], env=dict(os.environ), stderr=subprocess.DEVNULL))
        await asyncio.sleep(0)  # the thread has been asked to start it: it cannot be stopped midway
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.5)  # the thread's Popen returns (the process then runs) and the callback kills it
        deadline = time.monotonic() + 10
        while _running(arg) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return _running(arg)

    assert asyncio.run(main()) == []
