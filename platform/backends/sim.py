"""The simulation backend: instances are timed by their profiles on the virtual clock.

Cold start = the profile's container + runtime-init + model-load time; a batch takes the profiled
latency for (GPU type, batch size, share). Nothing runs and no payload is carried (`on_batch_done` gets
no outputs): this is Clockwork's dummy worker. It implements the `Backend` protocol (interface.py); the
simulator builds it directly, it is not in the live backends' registry.
"""

from __future__ import annotations

from typing import Any, Callable

from gpufaas.platform.backends.interface import UNBOUND, BackendHost
from gpufaas.platform.clock import Clock
from gpufaas.platform.runtime import Batch, Instance


class SimBackend:
    """Profile-timed instances on a `VirtualClock` (or any clock with `call_at_fast`)."""

    name = "sim"
    takes_not_before = True  # a batch starts at batch.not_before_ns (inputs in transfer until then)

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ctl: BackendHost = UNBOUND
        self._batch_done: Callable[..., Any] = UNBOUND.on_batch_done
        self._live: set[int] = set()  # started and not stopped: timers of a stopped instance fire as no-ops
        self._call_at = clock.call_at_fast  # bound once: submit runs once per batch
        self._done_cb = self._done

    def bind(self, host: BackendHost) -> None:
        """Called once by the controller's constructor."""
        self.ctl = host
        self._batch_done = host.on_batch_done  # bound once: submit runs once per batch

    def start(self, inst: Instance) -> None:
        """`on_instance_ready` after the profiled cold start."""
        self._live.add(inst.id)
        t = self.ctl.cold_start_ns(inst.function, inst.gpu)
        self.clock.call_at_fast(self.clock.now_ns() + t, self._ready, inst)

    def _ready(self, inst: Instance) -> None:
        if inst.id in self._live:
            self.ctl.on_instance_ready(inst)

    def submit(self, inst: Instance, batch: Batch) -> None:
        """`on_batch_done` (no outputs) at the batch's start plus its profiled latency."""
        self._call_at(batch.start_ns + inst.batch_latency_ns(len(batch.jobs)), self._done_cb, inst, batch)

    def _done(self, inst: Instance, batch: Batch) -> None:
        # NOTE: one set lookup per batch keeps the protocol's rule (no callback after stop) at the cost of
        # ~0.1 us; the controller itself never stops a busy instance, but the rule is the backend's.
        if inst.id in self._live:
            self._batch_done(inst, batch)

    def stop(self, inst: Instance) -> None:
        """Forget the instance: its pending timers fire as no-ops."""
        self._live.discard(inst.id)

