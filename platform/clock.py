"""The one injected clock: integer nanoseconds, live (`LoopClock`) or simulated (`VirtualClock`).

Every component that needs time takes a `Clock` in its constructor. No code outside this module reads
wall time; the only other wall-time read, `perf_ns()`, measures how long code takes (policy decision
time, simulator speed) and never feeds a decision.
"""

from __future__ import annotations

import ctypes
import heapq
import math
import os
import time
from typing import Any, Callable, Protocol, runtime_checkable

from gpufaas.platform.units import NS_PER_MS, NS_PER_S, ms_to_ns, s_to_ns  # noqa: F401 (re-exported)


# Monotonic wall time for measuring code duration only (decision time, benchmark speed); an alias, not a
# wrapper, because the controller reads it twice per scheduling pass.
perf_ns = time.perf_counter_ns
_heappush = heapq.heappush  # VirtualClock.call_at_fast: a global read instead of a global and an attribute read


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
        seq = self._seq = self._seq + 1
        now = self._now_ns
        _heappush(self._heap, (when_ns if when_ns > now else now, seq, None, callback, args))

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


# Timers further ahead than this use the loop's own timer: its rounding (below 1 ms) is then under 0.1 %
# of the wait, and the long ones (keep-alive, hang watch, created and cancelled once per batch) stay out
# of the precise heap.
PRECISE_HORIZON_NS = NS_PER_S
_CLOCK_MONOTONIC = 1  # <time.h>; time.monotonic_ns() reads the same clock
_TFD_TIMER_ABSTIME = 1  # <sys/timerfd.h>


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """Precise timers on an asyncio loop: one Linux timerfd (CLOCK_MONOTONIC, absolute, nanoseconds) armed
    for the earliest of a heap of callbacks, watched with `loop.add_reader`.

    NOTE(fidelity): asyncio's selector loop rounds every timer's wait up to the next whole millisecond
    (epoll_wait takes milliseconds) and libuv (uvloop) keeps its timers in milliseconds too, so each
    emulated wait (an inter-stage transfer of a few microseconds, a batch window) ended 0.5 ms late on
    average and a sub-millisecond one a whole millisecond late: `gpufaas fidelity` measured this as live
    minus sim. A timerfd wakes epoll within tens of microseconds of its deadline. Python 3.11 has no
    os.timerfd_create, hence ctypes; where libc has no timerfd (not Linux) `create` returns None and
    LoopClock keeps the loop's timers.

    Who calls it: LoopClock only. It changes nothing but its fd, its heap and its reader on the loop."""

    __slots__ = ("loop", "fd", "heap", "seq", "armed_ns", "_settime", "_spec", "__weakref__")

    @classmethod
    def create(cls, loop: Any) -> "_TimerFd | None":
        """The timers of `loop`, or None where libc has no timerfd."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            make, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return None
        fd = make(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        return cls(loop, fd, settime)

    def __init__(self, loop: Any, fd: int, settime: Any) -> None:
        import weakref

        self.loop = loop
        self.fd = fd
        self.heap: list[tuple[int, int, Handle | None, Callable[..., Any], tuple]] = []
        self.seq = 0
        self.armed_ns = 0  # the deadline the fd is armed for (0: disarmed)
        self._settime = settime
        self._spec = _Itimerspec()
        weakref.finalize(self, os.close, fd)
        loop.add_reader(fd, self._fire)

    def add(self, when_ns: int, handle: Handle | None, callback: Callable[..., Any], args: tuple) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when_ns, self.seq, handle, callback, args))
        if self.armed_ns == 0 or when_ns < self.armed_ns:
            self._arm(when_ns)

    def _arm(self, when_ns: int) -> None:
        spec = self._spec
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(max(when_ns, 1), NS_PER_S)
        self._settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None)
        self.armed_ns = when_ns

    def _fire(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass  # re-armed earlier after it expired: nothing to read yet
        self.armed_ns = 0
        heap = self.heap
        now = time.monotonic_ns()
        while heap and heap[0][0] <= now:
            _, _, handle, callback, args = heapq.heappop(heap)
            if handle is not None and handle.cancelled:
                continue
            try:
                callback(*args)
            except Exception as e:  # noqa: BLE001 - as the loop's own timers do: report it, keep the others running
                self.loop.call_exception_handler({"message": f"exception in clock callback {callback!r}", "exception": e})
            now = time.monotonic_ns()
        # NOTE: a callback above may have armed the fd for a later deadline than an entry already waiting
        # (`add` arms only when the fd is disarmed or the new deadline is earlier): arm for the earliest
        if heap and (self.armed_ns == 0 or heap[0][0] < self.armed_ns):
            self._arm(heap[0][0])


class LoopClock:
    """Live time (`time.monotonic_ns()`), with callbacks scheduled on the running asyncio loop.

    Used by the gateway and live backends. The epoch is the monotonic clock, so values are only
    comparable within one process. Built with a loop, callbacks due within `PRECISE_HORIZON_NS` run
    within tens of microseconds of their time (`_TimerFd`); later ones, and every callback of a clock
    built without a loop, use the loop's own timers (rounded up to the next millisecond).
    """

    def __init__(self, loop: Any | None = None) -> None:
        import asyncio

        # NOTE: without `loop`, the running loop; built outside one (a test's set-up), the running loop is looked
        # up at every call instead (asyncio.get_event_loop() without a running loop is deprecated and may raise).
        precise = True
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = _LazyLoop()
                precise = False  # a timerfd is registered on one loop; the lazy one may be several
        self._loop = loop
        self._precise = precise
        self._timers: _TimerFd | None = None  # made at the first precise timer (an fd only for clocks that use it)

    # NOTE(gateway): uvloop's loop.time() is libuv's cached uv_now(): millisecond resolution, refreshed once
    # per loop iteration, so every live latency and stage time came out as whole milliseconds. The clock
    # reads time.monotonic_ns() instead (the same clock asyncio's default loop.time() uses) and schedules
    # relative to it, which works with either loop.
    def now_ns(self) -> int:
        return time.monotonic_ns()

    def _precise_timers(self, when_ns: int) -> _TimerFd | None:
        """The precise timers when `when_ns` is within the horizon and this clock can have them."""
        if not self._precise or when_ns - time.monotonic_ns() > PRECISE_HORIZON_NS:
            return None
        if self._timers is None:
            self._timers = _TimerFd.create(self._loop)
            if self._timers is None:
                self._precise = False
                return None
        return self._timers

    def call_at(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> Handle:
        timers = self._precise_timers(when_ns)
        if timers is not None:
            handle = Handle()
            timers.add(when_ns, handle, callback, args)
            return handle
        inner = self._loop.call_later(max(0, when_ns - time.monotonic_ns()) / NS_PER_S, callback, *args)
        return Handle(inner)

    def call_at_fast(self, when_ns: int, callback: Callable[..., Any], *args: Any) -> None:
        timers = self._precise_timers(when_ns)
        if timers is not None:
            timers.add(when_ns, None, callback, args)
        else:
            self._loop.call_later(max(0, when_ns - time.monotonic_ns()) / NS_PER_S, callback, *args)

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run `callback()` on the next loop iteration (after the callbacks already ready)."""
        self._loop.call_soon(callback)

    async def sleep_until(self, when_ns: int) -> None:
        """Suspend the calling coroutine until `when_ns` (a precise timer, as `call_at`)."""
        import asyncio

        if when_ns <= self.now_ns():
            return
        done = asyncio.get_running_loop().create_future()
        handle = self.call_at(when_ns, _resolve, done)
        try:
            await done
        finally:
            handle.cancel()


def _resolve(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)
