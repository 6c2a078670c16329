"""The in-process emulated backend: instances live inside the controller's process, timed by the profile.

Like the `sim` backend, but on a live clock (`LoopClock`): a cold start takes the profiled cold-start
time (times `cold_start_scale`), a batch takes the profiled latency for (GPU type, batch, share), and
the outputs are zero tensors of the function's declared output shapes. No process, no socket, no torch.

Who uses it: `gpufaas up --backend inproc`, the gateway tests (instant cold starts), and
`gpufaas bench gateway` (a 0 ms profile, so only the gateway's own cost is measured). Who calls it: the
controller only (the Backend protocol); it reports through `on_instance_ready` / `on_batch_done`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpufaas.platform.runtime import Batch, FunctionRt, Instance


class InprocBackend:
    """Profile-timed instances on the running loop; outputs are zeros of the declared output shapes."""

    name = "inproc"

    def __init__(self, clock: Any, *, cold_start_scale: float = 1.0, emulate_outputs: bool = True) -> None:
        if cold_start_scale < 0:
            raise ValueError("cold_start_scale must be >= 0")
        self.clock = clock
        self.cold_start_scale = cold_start_scale
        self.emulate_outputs = emulate_outputs
        self.ctl: Any = None
        self._live: set[int] = set()
        # NOTE: one read-only zero output per function, shared by every item: the gateway only reads
        # outputs (encodes them), so a copy per item would only cost time.
        self._outputs: dict[FunctionRt, dict[str, np.ndarray] | None] = {}  # keyed by the compiled function (a redeploy makes a new one)

    def bind(self, controller: Any) -> None:
        """Called once by the controller's constructor."""
        self.ctl = controller

    def start(self, inst: Instance) -> None:
        """Schedule `on_instance_ready` after the profiled cold start (scaled)."""
        self._live.add(inst.id)
        t = int(self.ctl.cold_start_ns(inst.function, inst.gpu) * self.cold_start_scale)
        self.clock.call_at(self.clock.now_ns() + t, self._ready, inst)

    def _ready(self, inst: Instance) -> None:
        if inst.id in self._live:
            self.ctl.on_instance_ready(inst, {"backend": self.name})

    def submit(self, inst: Instance, batch: Batch) -> None:
        """Schedule `on_batch_done` after the profiled batch latency."""
        t = inst.batch_latency_ns(len(batch.jobs))
        out = self._output_of(inst.function) if self.emulate_outputs else None
        outputs = [out] * len(batch.jobs)
        if t <= 0:
            self.clock.call_soon(lambda: self._done(inst, batch, outputs))
        else:
            self.clock.call_at(batch.start_ns + t, self._done, inst, batch, outputs)

    def _done(self, inst: Instance, batch: Batch, outputs: list) -> None:
        if inst.id in self._live:
            self.ctl.on_batch_done(inst, batch, outputs)

    def stop(self, inst: Instance) -> None:
        """Forget the instance; its pending callbacks become no-ops."""
        self._live.discard(inst.id)

    def _output_of(self, fn: FunctionRt) -> dict[str, np.ndarray] | None:
        out = self._outputs.get(fn, False)
        if out is False:
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
