"""The `Clock` protocol, one suite for every clock: `VirtualClock` (simulation) and `LoopClock` (live,
on an asyncio loop). The controller and the backends use only these calls, so a clock that passes
here can be swapped in without touching them."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

from gpufaas.platform.clock import NS_PER_MS, Clock, LoopClock, VirtualClock


def suite(clock: Clock, run_for: Callable[[int], None]) -> None:
    """Order by time, cancel, call_at_fast, call_soon, past times at once. (Callbacks due at the same
    instant run in scheduling order on the VirtualClock only, below: asyncio does not promise it.)"""
    assert isinstance(clock, Clock)
    t0 = clock.now_ns()
    seen: list[str] = []
    clock.call_at(t0 + 30 * NS_PER_MS, seen.append, "c")
    clock.call_at(t0 + 10 * NS_PER_MS, seen.append, "a")
    clock.call_at_fast(t0 + 20 * NS_PER_MS, seen.append, "b")
    clock.call_at(t0 + 25 * NS_PER_MS, seen.append, "b2")
    gone = clock.call_at(t0 + 15 * NS_PER_MS, seen.append, "cancelled")
    gone.cancel()
    clock.call_at(t0 - NS_PER_MS, seen.append, "past")  # already due: runs first
    clock.call_soon(lambda: seen.append("soon"))
    run_for(60 * NS_PER_MS)
    assert seen[:2] in (["past", "soon"], ["soon", "past"])
    assert seen[2:] == ["a", "b", "b2", "c"]
    assert clock.now_ns() >= t0 + 30 * NS_PER_MS
    assert isinstance(clock.now_ns(), int)


def test_virtual_clock_conforms():
    clock = VirtualClock(start_ns=5 * NS_PER_MS)
    suite(clock, lambda d: clock.run(until_ns=clock.now_ns() + d))


def test_virtual_clock_runs_one_instant_in_scheduling_order():
    clock = VirtualClock()
    seen: list[int] = []
    for i in range(5):
        (clock.call_at if i % 2 else clock.call_at_fast)(NS_PER_MS, seen.append, i)
    clock.run()
    assert seen == [0, 1, 2, 3, 4]


def test_loop_clock_conforms():
    loop = asyncio.new_event_loop()
    try:
        clock = LoopClock(loop)
        suite(clock, lambda d: loop.run_until_complete(asyncio.sleep(d / 1e9)))
    finally:
        loop.close()


@pytest.mark.parametrize("cls", [VirtualClock, LoopClock])
def test_every_clock_has_every_protocol_member(cls):
    for member in ("now_ns", "call_at", "call_at_fast", "call_soon"):
        assert callable(getattr(cls, member)), member
