"""A fake backend for unit tests: the test decides when instances become ready and batches finish.

Named a fake on purpose: it runs nothing and times nothing. Tests call `ready(inst)`, `finish(batch)`,
`fail_batch(batch, why)` and `crash(inst, why)` to drive the controller step by step.
"""

from __future__ import annotations

from typing import Any

from gpufaas.platform.runtime import Batch, Instance


class FakeBackend:
    """Records what the controller asked; the test drives the callbacks."""

    name = "fake"

    def __init__(self) -> None:
        self.ctl: Any = None
        self.started: list[Instance] = []
        self.submitted: list[Batch] = []
        self.stopped: list[Instance] = []

    def bind(self, controller: Any) -> None:
        self.ctl = controller

    def start(self, inst: Instance) -> None:
        self.started.append(inst)

    def submit(self, inst: Instance, batch: Batch) -> None:
        self.submitted.append(batch)

    def stop(self, inst: Instance) -> None:
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
