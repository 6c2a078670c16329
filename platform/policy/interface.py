"""The policy contract: a pure function over a frozen view that returns decisions as data.

    schedule(view: ClusterView, now_ns: int, state: S) -> tuple[Decisions, S]

Who calls it: `Controller._pass()`, whenever a queue gains a job, an instance frees up, capacity is
released, or a timer the policy asked for (`Decisions.wake_at_ns`) fires. What it may change:
nothing it reaches through the view. Its memory between calls lives in `state`, which it returns and
the controller stores and hands back, so a restart, a replay or the simulator can feed it again (Ray
Serve's `(decision, policy_state)` autoscaling contract).

This package imports only `gpufaas.platform` spec/view/decision types: no asyncio, aiohttp, torch or
wall clock (checked by import-linter, see .importlinter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from gpufaas.platform.decisions import Decisions
from gpufaas.platform.policy.params import PolicyParams
from gpufaas.platform.views import ClusterView


@runtime_checkable
class Policy(Protocol):
    """A scheduling policy. Instances hold configuration only (frozen parameters, `params`, an instance
    of the class's `Params`), never run-time state."""

    @property
    def name(self) -> str:
        """The registered name."""
        ...

    @property
    def params(self) -> PolicyParams:
        """The validated parameters (an instance of the class's `Params`)."""
        ...

    def initial_state(self, view: ClusterView) -> Any:
        """State before the first call (called once, when the controller starts)."""
        ...

    def schedule(self, view: ClusterView, now_ns: int, state: Any) -> tuple[Decisions, Any]:
        """Decide what to run now. Pure: read the view, return decisions and the next state."""
        ...


@dataclass(frozen=True)
class RegisteredPolicy:
    """What the registry holds for one policy: the class (a callable that builds a `Policy` from validated
    keyword parameters) and the pydantic model of its parameters (`Params`, a `PolicyParams`).

    NOTE: a record, not a Protocol over the class object: a protocol that mixes `__call__` with a
    class attribute cannot be matched by a class object in mypy, and the registry should be checked."""

    build: Callable[..., Policy]
    Params: type[PolicyParams]
