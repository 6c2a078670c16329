"""A fake backend for unit tests: the test decides when instances become ready and batches finish.

Named a fake on purpose: it runs nothing and times nothing. Tests call `ready(inst)`, `finish(batch)`,
`fail_batch(batch, why)` and `crash(inst, why)` to drive the controller step by step. It implements the
`Backend` protocol (interface.py), not `LiveBackend`: nothing is prepared or closed.
"""

from __future__ import annotations

from typing import Any

from gpufaas.platform.backends.interface import UNBOUND, BackendHost
from gpufaas.platform.runtime import Batch, Instance


class FakeBackend:
    """Records what the controller asked; the test drives the callbacks."""

    name = "fake"
    takes_not_before = False

    def __init__(self) -> None:
        self.ctl: BackendHost = UNBOUND
        self.started: list[Instance] = []
        self.submitted: list[Batch] = []
        self.stopped: list[Instance] = []

    def bind(self, host: BackendHost) -> None:
        """Called once by the controller's constructor."""
        self.ctl = host

    def start(self, inst: Instance) -> None:
        """Record the start; the test calls `ready` or `crash`."""
        self.started.append(inst)

    def submit(self, inst: Instance, batch: Batch) -> None:
        """Record the batch; the test calls `finish` or `fail_batch`."""
        self.submitted.append(batch)

    def stop(self, inst: Instance) -> None:
        """Record the stop."""
        self.stopped.append(inst)

    # driven by tests
    def ready(self, inst: Instance) -> None:
        self.ctl.on_instance_ready(inst, {"fake": True})

    def finish(self, batch: Batch, outputs: list[Any] | None = None) -> None:
        self.ctl.on_batch_done(batch.instance, batch, outputs)

    def fail_batch(self, batch: Batch, why: str) -> None:
        self.ctl.on_batch_done(batch.instance, batch, None, why)

    def crash(self, inst: Instance, why: str) -> None:
        self.ctl.on_instance_failed(inst, why)
