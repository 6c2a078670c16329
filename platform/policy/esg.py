"""`esg`: pipeline-conscious scheduling of DNN workflows on shareable GPUs (DESIGN section 4).

One pass, in three parts:

1. **Observe and plan** (on a tick, the ticks on a grid: `_next_tick_ns`): per workflow, the arrival rate and its burstiness
   (`esg_rates`); when they move out of the band around the load the current plan was made for, ESG_1Q's A*-search with
   the dual blades picks the cheapest (GPU type, batch, share) per stage whose planned critical path
   meets the SLO, under a cost model that sees the whole bill: the share a stage must *hold* to serve
   its rate with that configuration, with headroom for its bursts (`esg_plan`). The planned stage
   times cut the workflow along its dominators into segments that split the time a job has left.
2. **Dispatch late** (every pass): jobs wait in their AFW queues; an idle instance takes the function's
   jobs earliest segment deadline first, a batch as large as it holds; nothing queues behind a busy or
   starting instance. A job that can no longer meet its deadline is shed under contention (or when its
   workflow says `on_deadline_miss: reject`), else it runs and counts as a miss (`esg_dispatch`).
3. **Size the pools** (on a tick, or at once when a function with work has no instance): start what a
   function's plan lacks, release what its rate no longer needs after an idle time equal to its cold
   start (ski rental), take share back from idle instances of other functions when there is no room
   (`esg_pool`). A workflow's first invocation starts every stage's pool (pipeline-conscious prewarm).

NOTE: this replaces an earlier design that searched per queue head and committed each batch at once to
the placement with the earliest projected start, busy and cold-starting instances included. Measured
on the shipped scenarios, that design lost to the baselines that bind late: jobs piled up behind busy
instances with no way back, instances were sized one batch at a time and held far beyond their work
(allocated cost 9-12x busy), and under 2x overload it collapsed. Binding late, sizing to the observed
rate and shedding what cannot make it keeps the A*-search and the dominator split where they pay:
choosing configurations for the whole pipeline.

Who calls it: the controller, through `schedule()`. It changes nothing it reaches through the view; its
memory is the `state` dict it returns (see `initial_state`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pydantic import Field

from gpufaas.platform.decisions import Decisions
from gpufaas.platform.policy import search as S
from gpufaas.platform.policy.esg_dispatch import by_function, dispatch, shed_backlog
from gpufaas.platform.policy.esg_plan import (PoolTarget, WorkflowPlan, function_loads, miss_budget, needs_replan,
                                              plan_workflow, pool_targets, transfer_estimates_ns)
from gpufaas.platform.policy.esg_pool import Room, reconcile
from gpufaas.platform.policy.esg_rates import Load, beyond_chance, entry_arrivals, observe, rate_variance, upper_rate_rps
from gpufaas.platform.policy.params import PolicyParams, validate
from gpufaas.platform.runtime import InstanceState, WorkflowRt
from gpufaas.platform.views import ClusterView

__all__ = ["EsgPolicy", "transfer_estimates_ns"]

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


class _WfInfo:
    """Per deployed workflow, what does not change while it is deployed: input-transfer estimates, the
    longest rate-averaging time (its longest cold start) and its keep-alive horizon."""

    __slots__ = ("wf", "transfer_ns", "tau_s", "active_ns")

    def __init__(self, view: ClusterView, wf: WorkflowRt, host_ns_per_byte: float) -> None:
        self.wf = wf
        self.transfer_ns = transfer_estimates_ns(view, wf, host_ns_per_byte)
        first: dict = {}
        for g in view.gpus:
            first.setdefault(g.type_name, g)
        cold = [view.cold_start_ns(s.function, g) for s in wf.stages for g in first.values()
                if g.type_name in view.functions[s.function].tables]
        self.tau_s = max(cold, default=NS_PER_S) / NS_PER_S
        # a workflow counts as active (its pools are kept) while an arrival came within its functions'
        # longest keep-alive: the platform's own horizon for holding an idle instance
        self.active_ns = max(view.functions[s.function].keep_alive_ns for s in wf.stages)


class EsgPolicy:
    """ESG. Parameters (`Params`; keyword, frozen after construction):

    - `epsilon`: the A*-search stops when its best plan is within (1 + epsilon) of the optimum (0: exact);
    - `target_hit`: the share of invocations the pools are sized to serve in time (sets the burst
      headroom, `esg_plan.miss_budget`); an objective, not a tuned constant;
    - `host_gbps`: the bandwidth assumed for inter-stage input transfers when planning (default: the
      cluster's host bandwidth; 0: leave them out).
    """

    name = "esg"

    class Params(PolicyParams):
        """ESG's parameters (see the class docstring)."""

        epsilon: float = Field(0.05, ge=0, allow_inf_nan=False, description="A* stops within (1 + epsilon) of the optimum")
        target_hit: float = Field(0.99, ge=0.5, lt=1, description="share of invocations the pools are sized to serve in time")
        host_gbps: float | None = Field(None, ge=0, allow_inf_nan=False, description="inter-stage bandwidth for planning")

    def __init__(self, **params: Any) -> None:
        p = validate(self.name, EsgPolicy.Params, params)
        self.params: PolicyParams = p
        self.epsilon = p.epsilon
        self.target_hit = p.target_hit
        self.host_gbps = p.host_gbps

    # NOTE: esg and oracle differ only here: the same tables, budgets and placement, another search.
    def search(self, problem: list[S.StageTable], budget_ns: int) -> S.Result:
        """ESG_1Q's search (the oracle overrides this with the exhaustive one)."""
        return S.astar(problem, budget_ns, self.epsilon)

    def initial_state(self, view: ClusterView) -> dict:
        """`info`: per workflow name, its `_WfInfo`; `loads`: per workflow, its observed `Load`;
        `plans`: per workflow, its current `WorkflowPlan`; `next_tick_ns`: when to observe and size next;
        `draining`: instance ids surplus to their pool at the last sizing (`esg_pool.reconcile`);
        `surplus_since`: per function, since when it has had a surplus; `shed`: per function, (time, jobs) of
        each pass that shed jobs for contention that are evidence of a short pool
        (`esg_dispatch.shed_evidence`), within its evidence window (`_shed_short`).

        NOTE: the state dict is the policy's own and is updated in place and returned (the controller
        stores it and hands it back); nothing of the controller's is kept in it except workflow objects,
        which are immutable once deployed and only compared by identity."""
        return {"info": {}, "loads": {}, "plans": {}, "next_tick_ns": 0, "draining": set(), "surplus_since": {},
                "shed": {}}

    def schedule(self, view: ClusterView, now_ns: int, state: dict) -> tuple[Decisions, dict]:
        """One pass (see the module docstring)."""
        actions: list = []
        plans: dict[str, WorkflowPlan] = state["plans"]
        grouped = by_function(view.ready_queues())
        queued = {f: sum(len(q.jobs) for q in qs) for f, qs in grouped.items()}
        tick = now_ns >= state["next_tick_ns"]
        if tick:
            state["next_tick_ns"] = self._next_tick_ns(view, now_ns, state["next_tick_ns"])
            self._observe(view, now_ns, state)
        for qs in grouped.values():  # a workflow's first invocation: plan it before the first tick
            for q in qs:
                if q.workflow.name not in plans or plans[q.workflow.name].key[0] is not q.workflow:
                    self._observe_one(view, now_ns, state, q.workflow)
        used: set[int] = set()
        shed: dict[str, deque[tuple[int, int]]] = state["shed"]  # per function, (when, jobs) shed for contention
        idle_less = []
        for f, qs in grouped.items():
            if view.idle_by_function.get(f):
                n = dispatch(view, now_ns, f, qs, queued[f], plans, used, state["draining"], actions)
                if n:
                    shed.setdefault(f, deque()).append((now_ns, n))
            else:
                idle_less.append(f)
        starved = any(not view.instances_by_function.get(f) for f in idle_less)
        if tick or starved:
            if tick:
                for f in idle_less:
                    n = shed_backlog(view, now_ns, f, grouped[f], queued[f], plans, actions)
                    if n:
                        shed.setdefault(f, deque()).append((now_ns, n))
            busy_wfs = {q.workflow.name for qs in grouped.values() for q in qs}
            targets = pool_targets(view, self._active_plans(now_ns, state, busy_wfs), self._loads(state), self.target_hit)
            waited = {f: (now_ns - min(q.jobs[0].enq_ns for q in qs), queued[f]) for f, qs in grouped.items()}
            short = self._shed_short(view, now_ns, shed, targets)
            state["draining"] = reconcile(view, now_ns, targets, waited, short, Room(view), used, actions,
                                          state["surplus_since"])
        # NOTE: quiet_until_match: late binding acts only where a queued job and an idle instance of
        # one function meet; everything else (sizing, shedding) waits for the tick
        return Decisions(tuple(actions), state["next_tick_ns"], quiet_until_match=True), state

    def _shed_short(self, view: ClusterView, now_ns: int, shed: dict[str, deque[tuple[int, int]]],
                    targets: dict[str, PoolTarget]) -> set[str]:
        """The functions whose pools shed more jobs than their plan allows: over the last cold start of the
        function (the time a start made now takes to serve), more sheds than a Poisson count of mean
        `miss_budget x its rate x that time` gives by chance (`esg_rates.beyond_chance`). Updates `shed`:
        drops what fell out of the window, and everything of a function whose pool has an instance
        starting (jobs shed while capacity cold-starts are not evidence that it lacks more; nor, as
        `esg_dispatch.shed_evidence` counts them, are jobs that queued through a cold start).

        NOTE: the pools are sized so that a job waits past its plan with probability at most the miss
        budget, so that many sheds are the plan working, not the pool short. Growing on any one shed
        made the pool bistable wherever one instance covers the need at the lower end of the rate's
        interval but not at the estimate: a single unlucky job started the second instance, and whether
        it came decided p50 (video at load 1: 30 against 65 ms, live and simulated runs splitting on it)."""
        eps = miss_budget(self.target_hit)
        short: set[str] = set()
        for f in list(shed):
            passes = shed[f]
            tg = targets.get(f)
            insts = view.instances_by_function.get(f, ())
            if tg is None or any(i.state == InstanceState.STARTING for i in insts):
                del shed[f]
                continue
            window_ns = view.cold_start_ns(f, next(g for g in view.gpus if g.type_name == tg.gpu_type))
            while passes and now_ns - passes[0][0] >= window_ns:
                passes.popleft()
            if not passes:
                del shed[f]
            elif beyond_chance(sum(n for _, n in passes), eps * tg.rate_rps * window_ns / NS_PER_S):
                short.add(f)
        return short

    # ------------------------------------------------------------------ load and plans

    @classmethod
    def _next_tick_ns(cls, view: ClusterView, now_ns: int, due_ns: int) -> int:
        """When the tick after the one due at `due_ns` (0: none yet) and run at `now_ns` is due: one period
        after `due_ns`, or after `now_ns` for the first tick and for one run a whole period late.

        NOTE: a grid, not a period after each pass. A live tick runs when its wake gets the loop, after the
        callbacks ahead of it (0.05-0.4 ms on average on the development machine, tens of ms in a stall),
        and `now + period` carried every such delay into all later ticks: after a few seconds the live
        ticks counted arrivals over other windows than the simulator's, whose wakes run on time. The rate
        barely notices, but the dispersion is a second moment of those per-tick counts and sets every
        pool's headroom, so the two sides' pools parted on where the windows happened to fall (`gpufaas
        fidelity`; docs/fidelity-runs.md). On the grid a live tick's window is the simulated one's shifted
        by that tick's own delay alone. In the simulator, whose tick passes run at their wakes, the two
        rules give the same times."""
        period_ns = cls._tick_ns(view)
        nxt = due_ns + period_ns
        return nxt if due_ns and nxt > now_ns else now_ns + period_ns

    @staticmethod
    def _tick_ns(view: ClusterView) -> int:
        """A quarter of the tightest deployed SLO (a queued job is looked at about four times before its
        deadline), within [1 ms, 1 s]."""
        slo = min((wf.slo_ns for wf in view.workflows.values()), default=NS_PER_S)
        return min(NS_PER_S, max(NS_PER_MS, slo // 4))

    def _info(self, view: ClusterView, wf: WorkflowRt, state: dict) -> _WfInfo:
        info = state["info"].get(wf.name)
        if info is None or info.wf is not wf:
            gbps = view.network.host_gbps if self.host_gbps is None else self.host_gbps
            info = state["info"][wf.name] = _WfInfo(view, wf, 8.0 / gbps if gbps > 0 else 0.0)
        return info

    def _observe_one(self, view: ClusterView, now_ns: int, state: dict, wf: WorkflowRt) -> None:
        info = self._info(view, wf, state)
        load = state["loads"].get(wf.name)
        if load is None or load.wf is not wf:
            load = state["loads"][wf.name] = Load(wf, 0, now_ns)
            if entry_arrivals(wf):
                load.last_arrival_ns = now_ns
        else:
            observe(load, entry_arrivals(wf), now_ns, self._tick_ns(view) / NS_PER_S, info.tau_s)
        if needs_replan(state["plans"].get(wf.name), wf, load.rate_rps, load.dispersion):
            # NOTE: configurations are chosen for the upper end of the rate's confidence interval (the
            # rate the pool keeps capacity for, `esg_plan.pool_targets`), so a plan does not sit on
            # the edge where noise in the estimate adds and removes an instance in turn
            loads = {n: (upper_rate_rps(ld), ld.dispersion) for n, ld in state["loads"].items()}
            state["plans"][wf.name] = plan_workflow(view, wf, function_loads(view, loads), self.target_hit,
                                                    info.transfer_ns, self.search, (wf, load.rate_rps, load.dispersion))

    def _observe(self, view: ClusterView, now_ns: int, state: dict) -> None:
        for wf in view.workflows.values():
            self._observe_one(view, now_ns, state, wf)
        for name in [n for n in state["plans"] if n not in view.workflows]:
            del state["plans"][name]
            state["loads"].pop(name, None)
            state["info"].pop(name, None)

    @staticmethod
    def _active_plans(now_ns: int, state: dict, with_work: set[str]) -> dict[str, WorkflowPlan]:
        """Plans of the workflows that have queued work (`with_work`) or had an arrival within their
        keep-alive horizon."""
        out = {}
        for name, plan in state["plans"].items():
            load = state["loads"].get(name)
            info = state["info"].get(name)
            if load is None or info is None:
                continue
            if name in with_work or (load.last_arrival_ns >= 0 and now_ns - load.last_arrival_ns <= info.active_ns):
                out[name] = plan
        return out

    @staticmethod
    def _loads(state: dict) -> dict[str, tuple[float, float, float]]:
        info = state["info"]
        return {n: (ld.rate_rps, ld.dispersion, rate_variance(ld)) for n, ld in state["loads"].items() if n in info}
