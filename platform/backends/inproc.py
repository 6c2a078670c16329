"""The in-process emulated backend: instances live inside the controller's process, timed by the profile.

Like the `sim` backend, but on a live clock (`LoopClock`): a cold start takes the profiled cold-start
time (times `cold_start_scale`), a batch takes the profiled latency for (GPU type, batch, share), and
the outputs are zero tensors of the function's declared output shapes. No process, no socket, no torch.

Who uses it: `gpufaas up --backend inproc`, the gateway tests (instant cold starts), and
`gpufaas bench gateway` (a 0 ms profile, so only the gateway's own cost is measured). Who calls it: the
controller (start/submit/stop, the Backend protocol) and the gateway (prepare/prepare_function/aclose,
the LiveBackend protocol: all three are no-ops here); it reports through `on_instance_ready` /
`on_batch_done`. A start never fails: nothing runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpufaas.platform.backends.interface import UNBOUND, BackendHost
from gpufaas.platform.clock import Clock
from gpufaas.platform.runtime import Batch, FunctionRt, Instance

if TYPE_CHECKING:
    from gpufaas.platform.specs import ClusterSpec, FunctionSpec


class InprocBackend:
    """Profile-timed instances on the running loop; outputs are zeros of the declared output shapes."""

    name = "inproc"
    takes_not_before = False

    def __init__(self, clock: Clock, *, cold_start_scale: float = 1.0, emulate_outputs: bool = True) -> None:
        if cold_start_scale < 0:
            raise ValueError("cold_start_scale must be >= 0")
        self.clock = clock
        self.cold_start_scale = cold_start_scale
        self.emulate_outputs = emulate_outputs
        self.ctl: BackendHost = UNBOUND
        self._live: set[int] = set()
        self._due: list[tuple[Instance, Batch, list]] = []  # zero-time batches that end on the next iteration
        self._flushing = False
        # NOTE: one read-only zero output per function, shared by every item: the gateway only reads
        # outputs (encodes them), so a copy per item would only cost time.
        self._outputs: dict[FunctionRt, dict[str, np.ndarray] | None] = {}  # keyed by the compiled function (a redeploy makes a new one)

    def bind(self, host: BackendHost) -> None:
        """Called once by the controller's constructor."""
        self.ctl = host

    def prepare(self, cluster: ClusterSpec | None = None) -> None:
        """Nothing to set up (the LiveBackend lifecycle)."""

    def prepare_function(self, spec: FunctionSpec, bundle_dir: Path) -> None:
        """Nothing to build: no handler runs here."""

    async def aclose(self) -> None:
        """Forget every instance: their pending timers fire as no-ops."""
        self._live.clear()
        self._due.clear()

    def start(self, inst: Instance) -> None:
        """Schedule `on_instance_ready` after the profiled cold start (scaled)."""
        self._live.add(inst.id)
        t = int(self.ctl.cold_start_ns(inst.function, inst.gpu) * self.cold_start_scale)
        self.clock.call_at(self.clock.now_ns() + t, self._ready, inst, t)

    def _ready(self, inst: Instance, cold_start_ns: int) -> None:
        if inst.id in self._live:
            self.ctl.on_instance_ready(inst, {"backend": self.name, "cold_start_ms": round(cold_start_ns / 1e6, 3)})

    def submit(self, inst: Instance, batch: Batch) -> None:
        """Schedule `on_batch_done` after the profiled batch latency."""
        n = len(batch.jobs)
        t = inst.batch_latency_ns(n)
        out = self._output_of(inst.function) if self.emulate_outputs else None
        outputs = [out] * n
        if t <= 0:
            # NOTE: batches that take no time (0 ms profile) end on the next loop iteration, all of them
            # from one callback (`_flush`): no closure and no loop handle per batch. This is the gateway
            # benchmark's hot path (issue #6).
            due = self._due
            due.append((inst, batch, outputs))
            if len(due) == 1 and not self._flushing:
                self.clock.call_soon(self._flush)
        else:
            self.clock.call_at(batch.start_ns + t, self._done, inst, batch, outputs)

    def _flush(self) -> None:
        """End the zero-time batches that are due, in submission order.

        NOTE: a zero-time batch that the controller dispatches while these end (an instance that went idle
        takes the next queued job) ends in this same call, not one loop iteration later: it takes no time
        either, and every batch still goes through `on_batch_done`. One batch per loop iteration made the
        gateway serve about one request per iteration under load; `gpufaas bench gateway` went from
        ~175 to ~125 us of server CPU per request with this. The loop ends once the controller dispatches no
        further zero-time batch: it dispatches only queued jobs, and no handler can queue more meanwhile."""
        due = self._due
        self._flushing = True
        i = 0
        try:
            while i < len(due):
                inst, batch, outputs = due[i]
                i += 1
                if inst.id in self._live:
                    self.ctl.on_batch_done(inst, batch, outputs)
        finally:
            self._flushing = False
            del due[:i]
            if due:
                self.clock.call_soon(self._flush)

    def _done(self, inst: Instance, batch: Batch, outputs: list) -> None:
        if inst.id in self._live:
            self.ctl.on_batch_done(inst, batch, outputs)

    def stop(self, inst: Instance) -> None:
        """Forget the instance; its pending callbacks become no-ops."""
        self._live.discard(inst.id)

    def _output_of(self, fn: FunctionRt) -> dict[str, np.ndarray] | None:
        try:
            return self._outputs[fn]  # one lookup on the hot path (a hit: every batch but the first)
        except KeyError:
            pass
        outs = fn.spec.outputs
        out = {k: np.zeros(t.shape, dtype=_np_dtype(t.dtype)) for k, t in outs.items()} if outs else None
        if out:
            for a in out.values():
                a.setflags(write=False)
        self._outputs[fn] = out
        return out


def _np_dtype(name: str) -> Any:
    """numpy dtype for a spec dtype name (bfloat16 has none: float32 stands in)."""
    return np.float32 if name == "bfloat16" else np.dtype(name)
