"""The backend protocol: how the controller starts, feeds and stops instances.

Every backend (sim, process, docker, ray, and the test fake) implements these four calls and reports
back only through the controller's callbacks: `on_instance_ready(inst, info)`,
`on_batch_done(inst, batch, outputs, error)` and `on_instance_failed(inst, reason)`. Calls never block:
a live backend starts its own tasks on the running loop and calls back from there.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from gpufaas.platform.runtime import Batch, Instance


@runtime_checkable
class Backend(Protocol):
    """Runs instances. Who calls it: the `Controller` only."""

    name: str

    def bind(self, controller: Any) -> None:
        """Called once by the controller's constructor: remember where to report."""
        ...

    def start(self, inst: Instance) -> None:
        """Begin a cold start; report `on_instance_ready` or `on_instance_failed` later."""
        ...

    def submit(self, inst: Instance, batch: Batch) -> None:
        """Run one batch (inputs in `batch.outputs` in live mode); report `on_batch_done` later."""
        ...

    def stop(self, inst: Instance) -> None:
        """Stop the instance and free what it holds; no callback follows."""
        ...
