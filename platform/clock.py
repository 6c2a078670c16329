"""The one injected clock: integer nanoseconds, live (`LoopClock`) or simulated (`VirtualClock`).

Every component that needs time takes a `Clock` in its constructor. No code outside this module reads
wall time; the only other wall-time read, `perf_ns()`, measures how long code takes (policy decision
time, simulator speed) and never feeds a decision.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any, Callable, Protocol, runtime_checkable

from gpufaas.platform.units import NS_PER_MS, NS_PER_S, ms_to_ns, s_to_ns  # noqa: F401 (re-exported)


# Monotonic wall time for measuring code duration only (decision time, benchmark speed); an alias, not a
# wrapper, because the controller reads it twice per scheduling pass.
perf_ns = time.perf_counter_ns


class Handle:
    """A scheduled callback; `cancel()` stops it from running. Returned by `Clock.call_at`."""

    __slots__ = ("cancelled", "_inner")

    def __init__(self, inner: Any = None) -> None:
        self.cancelled = False
        self._inner = inner

    def cancel(self) -> None:
        self.cancelled = True
        if self._inner is not None:
            self._inner.cancel()


@runtime_checkable
class Clock(Protocol):
    """What the controller and backends need from time. Implemented by LoopClock and VirtualClock."""

    def now_ns(self) -> int:
        """Current time in integer nanoseconds since the clock's epoch."""
        ...

    def call_at(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run `callback(*args)` at `when_ns` (or at once if that is in the past)."""
        ...

    def call_at_fast(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> None:
        """`call_at` without a Handle (not cancellable): the hot path of timers that always fire."""
        ...

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback()` once the callbacks due now have run (end of the current instant)."""
        ...


class VirtualClock:
    """Discrete-event simulated time: a heap of callbacks ordered by (time_ns, seq).

    The simulator's event loop. `run()` pops callbacks in time order and advances `now_ns` to each;
    callbacks at the same instant run in the order they were scheduled (seq is a global counter, the
    SimPy `_eid` idea), which makes a run deterministic for a given seed.
    """

    __slots__ = ("_now_ns", "_heap", "_seq", "events_run", "_soon")

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns
        self._heap: list[tuple[int, int, Handle | None, Callable[..., Any], tuple]] = []
        self._seq = 0
        self.events_run = 0
        self._soon: list[Callable[[], Any]] = []

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback()` at the end of the current instant: after every callback already scheduled
        for `now_ns`, before time advances (the controller's scheduling pass uses it to coalesce)."""
        self._soon.append(callback)

    def now_ns(self) -> int:
        return self._now_ns

    def call_at(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> Handle:
        handle = Handle()
        self._seq += 1
        heapq.heappush(self._heap, (max(when_ns, self._now_ns), self._seq, handle, callback, args))
        return handle

    def call_at_fast(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> None:
        """Like `call_at` but not cancellable: no Handle is allocated (the simulator's hot path)."""
        self._seq += 1
        heapq.heappush(self._heap, (when_ns if when_ns > self._now_ns else self._now_ns, self._seq, None, callback, args))

    def pending(self) -> int:
        """Number of scheduled (possibly cancelled) callbacks."""
        return len(self._heap)

    def run(self, until_ns: int | None = None) -> None:
        """Run callbacks in time order until none are left, or the next one is after `until_ns`."""
        heap = self._heap
        soon = self._soon
        pop = heapq.heappop
        limit = math.inf if until_ns is None else until_ns
        now = self._now_ns
        n = 0
        while heap or soon:
            if soon and (not heap or heap[0][0] > now):
                batch = soon[:]
                soon.clear()
                for cb in batch:
                    cb()
                continue
            if heap[0][0] > limit:
                self._now_ns = int(limit)  # finite here: a callback lies after it
                break
            when_ns, _, handle, callback, args = pop(heap)
            if handle is not None and handle.cancelled:
                continue
            self._now_ns = now = when_ns
            callback(*args)
            n += 1
        self.events_run += n


class _LazyLoop:
    """Stands for "the loop running at each call" (see LoopClock.__init__)."""

    def __getattr__(self, name: str) -> Any:
        import asyncio

        return getattr(asyncio.get_running_loop(), name)


class LoopClock:
    """Live time (`time.monotonic_ns()`), with callbacks scheduled on the running asyncio loop.

    Used by the gateway and live backends. The epoch is the monotonic clock, so values are only
    comparable within one process.
    """

    def __init__(self, loop: Any | None = None) -> None:
        import asyncio

        # NOTE: without `loop`, the running loop; built outside one (a test's set-up), the running loop is looked
        # up at every call instead (asyncio.get_event_loop() without a running loop is deprecated and may raise).
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = _LazyLoop()
        self._loop = loop

    # NOTE(gateway): uvloop's loop.time() is libuv's cached uv_now(): millisecond resolution, refreshed once
    # per loop iteration, so every live latency and stage time came out as whole milliseconds. The clock
    # reads time.monotonic_ns() instead (the same clock asyncio's default loop.time() uses) and schedules
    # with call_later relative to it, which works with either loop.
    def now_ns(self) -> int:
        return time.monotonic_ns()

    def call_at(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> Handle:
        inner = self._loop.call_later(max(0, when_ns - time.monotonic_ns()) / NS_PER_S, callback, *args)
        return Handle(inner)

    def call_at_fast(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> None:
        self._loop.call_later(max(0, when_ns - time.monotonic_ns()) / NS_PER_S, callback, *args)

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback()` on the next loop iteration (after the callbacks already ready)."""
        self._loop.call_soon(callback)

    async def sleep_until(self, when_ns: int) -> None:
        """Suspend the calling coroutine until `when_ns`."""
        import asyncio

        delay_s = (when_ns - self.now_ns()) / NS_PER_S
        if delay_s > 0:
            await asyncio.sleep(delay_s)
