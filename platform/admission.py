"""The workflow queue bound: admission control that refuses an invocation its workflow cannot serve within
its SLO, one implementation for the live gateway and the simulator.

`QueueBounds` keeps, per workflow, the invocations in flight, the drain rate (completions per busy
second, an EWMA over windows of busy time as long as the SLO) and the recent SLO miss fraction (a standing
queue: see the class); `check` answers a `QueueFull` (or None) for one more arrival, `add` counts one in,
`ended` (an invocation that ran) or `done` (one never submitted) counts one out. `queue_floor` is the
bound's floor for a workflow, from the controller's deployed functions and the cluster's share units
(`cluster_units`).

Who calls it: `gateway.service.Platform` (`_admit`, `record`, `_unadmit`; a `QueueFull` becomes a
`QuotaExceeded("queue", ...)`, HTTP 429 with Retry-After) and `loadgen.simdriver.run_scenario` with
`queue_bounds=True` (a `QueueFull` becomes `Controller.refuse_invocation(..., "queue", ...)`).
Times are the caller's clock's integer nanoseconds (`LoopClock` live, `VirtualClock` in simulation), so a
simulated run is deterministic. Nothing here reads a clock, imports the gateway, or changes the controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import math

from gpufaas.platform.runtime import FunctionRt, Gpu, Invocation, InvocationStatus, WorkflowRt
from gpufaas.platform.units import NS_PER_S

# The drain rate is measured over windows of busy time as long as the workflow's SLO (an EWMA across
# windows): the bound's own horizon, so that under a standing queue it adapts within a few SLOs, not seconds.
# A workflow's window takes this length until its first `check` says its SLO.
DRAIN_WINDOW_NS = NS_PER_S


@dataclass(frozen=True)
class QueueFull:
    """One refusal of `QueueBounds.check`: the invocations in flight, the bound they reached, the drain rate
    (per second) and SLO it was computed from, and when to retry (seconds)."""

    in_flight: int
    bound: int
    rate_rps: float
    slo_ms: float
    retry_after_s: float

    def message(self, workflow: str) -> str:
        """The one-line reason, naming the workflow as the caller shows it (the gateway: the tenant's own name)."""
        return (f"workflow {workflow!r} is full: {self.in_flight} invocations in flight, as many as it serves within its "
                f"SLO of {self.slo_ms:g} ms at its drain rate of {self.rate_rps:.1f}/s; retry later")


class QueueBounds:
    """Per-workflow admission bound: the invocations in flight may not exceed what the workflow can serve
    within its SLO at its observed drain rate, `max(floor, drain_rps * slo_s)`, where the floor is what the
    cluster could be executing of it at once (`queue_floor`); while the workflow has a *standing queue*, the
    floor is set aside and the bound is `drain_rps * slo_s` alone (at least 1).

    Who calls it: `Platform._admit` (`check` then `add`), `Platform.record` (`ended`), `Platform._unadmit`
    (`done`), and the simulator's arrivals (`run_scenario(queue_bounds=True)`) in the same order. Times are the caller's clock's ns.
    NOTE: Little's law: with `n` in flight and a drain of `r` per second, a new arrival waits about `n / r`;
    past `r * slo_s` it cannot meet its SLO, so it is refused at once (429, Retry-After = the time the
    excess needs to drain) instead of queueing for a timeout. Only completed invocations count as drained:
    shed or failed ones free a slot but say nothing of capacity. The rate is completions per *busy* second
    (time with at least one invocation in flight): idle time says nothing of capacity either, and counting it
    made a workflow that had been idle look slow and refuse its next burst. The scheduler's own shedding is
    the inner layer; this is the outer one.
    NOTE: the floor answers "how much could the cluster's GPUs hold", from the profiles; it says nothing of
    the gateway's own CPU, which live can be the bottleneck by far (image-classify on 4 A100s: a floor of
    1,280 in flight, a gateway on 2 cores that finishes 330-800/s, 33-80 within the SLO). So, as CoDel tells a good
    queue (a burst that drains) from a bad one (a standing queue; Nichols and Jacobson, "Controlling Queue
    Delay", ACM Queue 10(5), 2012), the bound watches outcomes: when more than half of the invocations that
    ended over about the last SLO interval missed their SLO (late, shed or timed out: `ended`), the queue is
    standing, the drain rate measured is the capacity, not the demand, and the floor no longer applies. It
    applies again once the workflow's in-flight count reaches 0 (the busy period ended: the backlog is gone),
    a hysteresis: under the drain bound the admitted invocations wait about one SLO, so their miss fraction
    sits near one half and would otherwise flip the floor on and off. Failures (a handler's error) say
    nothing of load and do not count."""

    def __init__(self) -> None:
        self.inflight: dict[str, int] = {}
        self._rate: dict[str, float] = {}  # workflow -> completions per busy second (EWMA over windows)
        self._window: dict[str, list[int]] = {}  # workflow -> [completions, busy ns, last update ns, length ns]
        # workflow -> [missed, ended, last update ns]: counts decayed with a time constant of the SLO
        self._miss: dict[str, list[float]] = {}
        self.standing: set[str] = set()  # workflows with a standing queue (the floor set aside)

    def _tick(self, wf: str, now_ns: int) -> list[int]:
        """Bring `wf`'s window up to `now_ns` (busy time accrues only while something is in flight)."""
        w = self._window.get(wf)
        if w is None:
            w = self._window[wf] = [0, 0, now_ns, DRAIN_WINDOW_NS]
        if self.inflight.get(wf, 0) > 0:
            w[1] += now_ns - w[2]
        w[2] = now_ns
        if w[1] >= w[3]:
            r = w[0] * NS_PER_S / w[1]
            old = self._rate.get(wf)
            self._rate[wf] = r if old is None else 0.5 * old + 0.5 * r
            w[0] = w[1] = 0
        return w

    def check(self, wf: str, slo_ms: float, now_ns: int, floor: int) -> QueueFull | None:
        """A `QueueFull` when `wf` holds as many invocations as it can serve within `slo_ms`, and at least
        `floor`; else None (the caller then admits it with `add`). Changes only the drain-rate window."""
        self._tick(wf, now_ns)[3] = max(1, int(slo_ms * 1e6))  # windows as long as the SLO
        n = self.inflight.get(wf, 0)
        standing = wf in self.standing
        if n < floor and not standing:
            return None
        rate = self._rate.get(wf, 0.0)
        drain = int(rate * slo_ms / 1e3)
        # no rate measured yet (a first window of busy time not over): nothing says what it drains; keep the floor
        bound = max(1, drain) if standing and rate > 0 else max(floor, drain)
        if n < bound:
            return None
        return QueueFull(n, bound, rate, slo_ms, (n - bound + 1) / rate if rate > 0 else slo_ms / 1e3)

    def add(self, wf: str, now_ns: int) -> None:
        """One invocation of `wf` admitted."""
        self._tick(wf, now_ns)
        self.inflight[wf] = self.inflight.get(wf, 0) + 1

    def done(self, wf: str, completed: bool, now_ns: int) -> None:
        """One invocation of `wf` out (`completed`: it counts toward the drain rate). An admitted invocation
        that was never submitted comes here directly; one that ran comes through `ended`."""
        w = self._tick(wf, now_ns)
        n = self.inflight[wf] = self.inflight.get(wf, 1) - 1
        if completed:
            w[0] += 1
        if n <= 0:
            self.standing.discard(wf)

    def ended(self, inv: Invocation, now_ns: int) -> None:
        """One admitted invocation ended, however (`Invocation.status`): counted out, into the drain rate when
        it completed, and into the workflow's recent SLO miss fraction, which decides its standing queue."""
        wf = inv.workflow.name
        status = inv.status
        if status != InvocationStatus.FAILED:
            m = self._miss.get(wf)
            if m is None:
                m = self._miss[wf] = [0.0, 0.0, float(now_ns)]
            slo_ns = inv.deadline_ns - inv.arrival_ns
            decay = math.exp(-(now_ns - m[2]) / slo_ns) if slo_ns > 0 else 0.0
            m[0] = m[0] * decay + (0.0 if inv.slo_met else 1.0)
            m[1] = m[1] * decay + 1.0
            m[2] = float(now_ns)
            if 2.0 * m[0] > m[1]:
                self.standing.add(wf)
        self.done(wf, status == InvocationStatus.COMPLETED, now_ns)


def cluster_units(gpus: Iterable[Gpu]) -> int:
    """Share units of the whole cluster (`Controller.gpus`); the cluster is fixed for a controller's life, so
    callers sum it once."""
    return sum(g.share_units for g in gpus)


def queue_floor(functions: Mapping[str, FunctionRt], wf: WorkflowRt, units_total: int) -> int:
    """The invocations of `wf` the cluster could be executing at once: every share unit (`units_total`,
    `cluster_units`) running a full batch (the largest batch size) of the workflow's entry stages, whose
    functions are looked up in `functions` (`Controller.functions`). Below it nothing can be said to queue
    beyond capacity, so the queue bound never refuses there, whatever the drain rate (unknown at first)."""
    batch = max((max(functions[wf.stages[e].function].batch_sizes, default=1) for e in wf.entries), default=1)
    return units_total * batch
