"""Decisions a policy returns: plain immutable data that the controller applies through one `apply()` path.

Who makes them: policies (`policy/`). Who reads them: `Controller.apply()`, in simulation and live
alike. A decision that cannot be applied (a GPU without room, a job already taken) is refused and
counted, never half-applied.

NOTE: NamedTuples rather than frozen dataclasses: a frozen dataclass's __init__ sets each field through
object.__setattr__, which made building a Dispatch 1.8x slower (544 vs 308 ns here), and a simulated
second builds tens of thousands of them. They stay immutable and compare by value.
"""

from __future__ import annotations

from typing import NamedTuple


class Dispatch(NamedTuple):
    """Run `job_ids` (queued jobs of one function) as one batch on an existing instance.

    The instance may be busy or still cold-starting: the batch then waits on that instance, in order.
    """

    job_ids: tuple[int, ...]
    instance_id: int


class Start(NamedTuple):
    """Start an instance of `function` on `gpu_id` with `share_units` of it, sized for `max_batch`.

    `job_ids`, if any, form the instance's first batch; it runs as soon as the cold start ends.
    `reason`: which of the policy's rules asked for it, in a word or two (esg: "need", "consolidate",
    "backlog", "shed", with ", fragment" for a smaller share than planned; "" when the policy does not
    say); kept on the instance (`Instance.start_reason`) for whoever explains a pool: `GET /v1/cluster`
    and `gpufaas fidelity`'s `diagnostics.instances_started`.
    """

    function: str
    gpu_id: int
    share_units: int
    max_batch: int
    job_ids: tuple[int, ...] = ()
    reason: str = ""


class Stop(NamedTuple):
    """Stop an instance (after its current batch, if it is busy)."""

    instance_id: int


class Reject(NamedTuple):
    """End queued jobs' invocations as rejected (admission control), with a reason for the user."""

    job_ids: tuple[int, ...]
    reason: str


class Decisions(NamedTuple):
    """What one policy call decided. `wake_at_ns`: ask the policy again at that time (a batch-fill timer).

    Two standing rules let the controller skip calls that would decide nothing; both hold until the
    next call, and the controller drops them early on an event they do not cover (an instance stopping
    or failing, a queued job dropped):
    - `quiet_until_match`: the policy would act only where a queued job and an idle instance of the
      same function can meet, so the controller calls it only for a new job of a function that has an
      idle instance or no instance at all, an instance going idle (or finishing its cold start) while
      its function has queued jobs, and the wake time. A job joining a function whose instances are
      all busy waits in its queue for the next call.
    - `idle_pulls`: an instance going idle while its function has queued jobs and no other idle
      instance takes the oldest job it may run (first ready queue of its function, FIFO; a batch of
      one) without a call, the way an OpenWhisk invoker pulls its next activation. Otherwise the call
      happens as usual (a longer-idle instance is first in line).
    - `arrival_push`: the mirror of `idle_pulls`. A new job of a function that has an idle instance
      goes straight to its newest idle instance (the largest id: ids are issued in creation order; a
      batch of one) without a call, when no job is queued anywhere (so the call would have seen this
      job alone) and tenant shares are off (`Tenancy.active`: a call first rebalances). A retried job
      and any other new job go through the call as usual.
    The defaults (False) ask for a call on every event.
    """

    actions: tuple = ()
    wake_at_ns: int | None = None
    # NOTE: the Kubernetes scheduler's QueueingHint idea: a pod that could not be placed is retried only
    # on cluster events that could make it placeable. With both rules, batch1-wholegpu is called 51k
    # instead of 143k times on mixed.yaml, with the same results (tests/test_core_standing_rules.py).
    quiet_until_match: bool = False
    idle_pulls: bool = False
    # NOTE: the scale-per-request model (SimFaaS, AWS Lambda) decides "newest idle instance, else a cold
    # start" per request: with the push, `per-request` is called only for a job that finds no idle
    # instance, which is what makes the one-function simulation cheaper per request than SimFaaS's.
    arrival_push: bool = False

    @staticmethod
    def make_empty() -> "Decisions":
        return _EMPTY


_EMPTY = Decisions()

Action = Dispatch | Start | Stop | Reject
