"""The residency seam: which idle instances stay resident on the GPUs, for how long, and which go first.

A scheduling policy (`platform/policy/`) decides what runs where; a residency policy decides what an
idle instance costs to keep. The controller asks it at three moments, and only these:

- an instance goes idle: `idle_ttl_ns` says how long it may stay idle before it is released;
- a Start finds no room on its GPU: `victims` orders the idle instances there that may be evicted to
  make room (never a busy or starting one: the controller filters them out before asking);
- an instance is released on keep-alive expiry: `prewarm_at_ns` may ask for a new instance of its
  function shortly before the next predicted arrival.

It learns only through `observe_arrival` (a job of a function joined its queue). Every residency policy
works beside every scheduling policy: they share no state, and the controller applies both.

NOTE: unlike a scheduling policy, a residency policy keeps its learned state on itself (per-function
arrival statistics, the greedy-dual clock), the way `AfwQueue` keeps its rate estimate: the state is a
summary of what the controller has seen, updated in O(1) per arrival, and a replay rebuilds it exactly.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

from gpufaas.platform.runtime import FunctionRt, Instance


@runtime_checkable
class Residency(Protocol):
    """What the controller calls. Implementations: `residency.policies` (registered in `residency.registry`)."""

    name: str
    evicts: bool
    """False: a Start without room is refused as before (`fixed`); True: `victims` is asked."""
    learns: bool
    """False: `observe_arrival` is never called (the controller skips it on its hot path)."""

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Called by the controller when a new job of `fn` joins its queue. May change only this policy."""

    def idle_ttl_ns(self, inst: Instance, now_ns: int) -> int:
        """Called by the controller when `inst` goes idle: how long (ns, >= 0) it may stay idle before it
        is released. Changes nothing."""

    def victims(self, candidates: Iterable[Instance], now_ns: int) -> list[Instance]:
        """Called by the controller when a Start lacks room on one GPU: `candidates` (idle instances on that
        GPU that may go) in the order to evict them; the controller evicts from the front until the Start
        fits. May update this policy's own bookkeeping (the greedy-dual clock); changes no instance."""

    def prewarm_at_ns(self, fn: FunctionRt, now_ns: int) -> int | None:
        """Called by the controller when an idle instance of `fn` was released on expiry: when to start one
        again ahead of the next predicted arrival (None: do not). Changes nothing."""
