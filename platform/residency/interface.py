"""The residency seam: which idle instances stay resident on the GPUs, for how long, and which go first.

A scheduling policy (`platform/policy/`) decides what runs where; a residency policy decides what an
idle instance costs to keep. The controller asks it at three moments, and only these:

- an instance goes idle: `idle_ttl_ns` says how long it may stay idle before it is released;
- a Start finds no room: `victims` picks and orders the idle instances that may be evicted to make room
  (never a busy or starting one: the controller filters them out before asking);
- an instance is released on keep-alive expiry: `prewarm_at_ns` may ask for a new instance of its
  function shortly before the next predicted arrival.

It learns only through `observe_arrival` (a job of a function joined its queue) and `evicted` (the
controller evicted one of the instances `victims` ranked). A scheduling policy that keeps pools warm on
its own reads `keeps_warm` through `ClusterView.keeps_warm`, so it does not start again at once what the
residency policy released on purpose (a histogram release ahead of its pre-warm). Every residency policy
works beside every scheduling policy: they share no state, and the controller applies both.

NOTE: unlike a scheduling policy, a residency policy keeps its learned state on itself (per-function
arrival statistics, the greedy-dual clock), the way `AfwQueue` keeps its rate estimate: the state is a
summary of what the controller has seen, updated in O(1) per arrival, and a replay rebuilds it exactly.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

from gpufaas.platform.runtime import FunctionRt, Instance
from gpufaas.platform.units import ms_to_ns


def cold_start_ns(fn: FunctionRt, gpu_type: str | None = None) -> int:
    """The profiled cold start of `fn` on `gpu_type` (else on its first GPU type): what a release costs when
    the function is wanted again. The one formula the controller (`Controller.cold_start_ns`) and the
    residency policies share; the live backends measure the real one."""
    table = fn.tables[gpu_type] if gpu_type is not None else next(iter(fn.tables.values()))
    return ms_to_ns(table.cold_start.total_ms)


@runtime_checkable
class Residency(Protocol):
    """What the controller calls. Implementations: `residency.policies` (registered in `residency.registry`)."""

    name: str
    evicts: bool
    """False: a Start without room waits until some keep-alive ends (no in-tree policy); True: `victims` is asked."""
    learns: bool
    """False: `observe_arrival` is never called (the controller skips it on its hot path)."""

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Called by the controller when a new job of `fn` joins its queue. May change only this policy."""

    def idle_ttl_ns(self, inst: Instance, now_ns: int) -> int:
        """Called by the controller when `inst` goes idle: how long (ns, >= 0) it may stay idle before it
        is released. Changes nothing."""

    def victims(self, candidates: Iterable[Instance], fn: FunctionRt | None, now_ns: int) -> list[Instance]:
        """Called by the controller when a Start of `fn` lacks room: of `candidates` (idle instances that may
        go), those worth less than making room for `fn`, in the order to evict them; the controller evicts
        from the front until the Start fits, and evicts nothing when the answer cannot make room (the Start
        then waits for room until some keep-alive ends). Changes nothing."""

    def prewarm_at_ns(self, fn: FunctionRt, now_ns: int) -> int | None:
        """Called by the controller when an idle instance of `fn` was released on expiry: when to start one
        again ahead of the next predicted arrival (None: do not). Changes nothing."""

    def evicted(self, inst: Instance, live_left: int, now_ns: int) -> None:
        """Called by the controller after it evicted `inst` (one of `victims`' answer) for a Start; `live_left`:
        the instances of its function still live. May change only this policy (the greedy-dual clock)."""

    def keeps_warm(self, fn: FunctionRt, now_ns: int) -> bool:
        """Called by a scheduling policy through `ClusterView.keeps_warm`: whether `fn`, with no queued work,
        should have an instance now. False only while this policy has released it on purpose (ahead of a
        pre-warm, or past the keep-alive window it learned). Changes nothing."""
