"""Decisions a policy returns: plain frozen data that the controller applies through one `apply()` path.

Who makes them: policies (`policy/`). Who reads them: `Controller.apply()`, in simulation and live
alike. A decision that cannot be applied (a GPU without room, a job already taken) is refused and
counted, never half-applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run `job_ids` (queued jobs of one function) as one batch on an existing instance.

    The instance may be busy or still cold-starting: the batch then waits on that instance, in order.
    """

    job_ids: tuple[int, ...]
    instance_id: int


@dataclass(frozen=True, slots=True)
class Start:
    """Start an instance of `function` on `gpu_id` with `share_units` of it, sized for `max_batch`.

    `job_ids`, if any, form the instance's first batch; it runs as soon as the cold start ends.
    """

    function: str
    gpu_id: int
    share_units: int
    max_batch: int
    job_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop an instance (after its current batch, if it is busy)."""

    instance_id: int


@dataclass(frozen=True, slots=True)
class Reject:
    """End queued jobs' invocations as rejected (admission control), with a reason for the user."""

    job_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Decisions:
    """What one policy call decided. `wake_at_ns`: ask the policy again at that time (a batch-fill timer)."""

    actions: tuple = ()
    wake_at_ns: int | None = None

    @staticmethod
    def make_empty() -> "Decisions":
        return _EMPTY


_EMPTY = Decisions()

Action = Dispatch | Start | Stop | Reject
