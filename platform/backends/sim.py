"""The simulation backend: instances are timed by their profiles on the virtual clock.

Cold start = the profile's container + runtime-init + model-load time; a batch takes the profiled
latency for (GPU type, batch size, share). Nothing runs: this is Clockwork's dummy worker.
"""

from __future__ import annotations

from typing import Any

from gpufaas.platform.runtime import Batch, Instance


class SimBackend:
    """Profile-timed instances on a `VirtualClock` (or any clock with `call_at_fast`)."""

    name = "sim"
    takes_not_before = True  # a batch starts at batch.not_before_ns (inputs in transfer until then)

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.ctl: Any = None

    def bind(self, controller: Any) -> None:
        self.ctl = controller
        self._batch_done = controller.on_batch_done  # bound once: submit runs once per batch

    def start(self, inst: Instance) -> None:
        t = self.ctl.cold_start_ns(inst.function, inst.gpu)
        self.clock.call_at_fast(self.clock.now_ns() + t, self.ctl.on_instance_ready, inst)

    def submit(self, inst: Instance, batch: Batch) -> None:
        t = inst.batch_latency_ns(len(batch.jobs))
        self.clock.call_at_fast(batch.start_ns + t, self._batch_done, inst, batch)

    def stop(self, inst: Instance) -> None:
        pass
