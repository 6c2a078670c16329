"""`esg`: pipeline-conscious scheduling of DNN workflows on shareable GPUs (DESIGN section 4).

Per policy call, queues are served earliest head deadline first. For the head of one AFW queue:

1. its budget is the time left to its deadline, split by the workflow's dominator segments
   (`slo.stage_budget_ns`, recomputed from the time actually left), minus a safety `slack`;
2. ESG_1Q searches (batch, share) for this stage and the rest of its segment (`search.astar`); the root
   stage's options carry their real start delay (warm, busy, or cold start, from `dispatch.Capacity`),
   the transfer of the head's inputs to that placement's GPU, and their batch-fill wait at the queue's
   arrival-rate EWMA; later stages carry an estimate of their input transfer (`transfer_estimates_ns`);
3. only this stage's choice is committed (receding horizon): if its batch is not yet full and waiting
   still fits, the policy asks to be woken at the latest time it can wait; otherwise ESG_Dispatch places
   it (warm idle instance, local first; a busy one that frees in time; a best-fit GPU and a cold start).

When no configuration fits the budget, the head runs best effort (fastest available configuration) and,
if that meant queueing or a cold start, one more instance of the cheapest configuration that would fit
warm is started; a head that can no longer meet its deadline even on the fastest warm path is rejected
(it is a miss either way, and running it would delay others). Idle instances beyond one per function are
stopped after `idle_stop_s` (scale-down; the last one lives out the keep-alive).

Who calls it: the controller, through `schedule()`. It changes nothing it reaches through the view; its
memory is the `state` dict it returns (see `initial_state`).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Any, Callable

from gpufaas.platform.decisions import Decisions, Dispatch, Reject, Start, Stop
from gpufaas.platform.errors import UserError
from gpufaas.platform.policy import search as S
from gpufaas.platform.policy.dispatch import NEW, Capacity
from gpufaas.platform.policy.slo import SloPlan, critical_path_ns, make_plan, stage_budget_ns
from gpufaas.platform.profiles import LatencyTable
from gpufaas.platform.runtime import AfwQueue, FunctionRt, InstanceState, WorkflowRt
from gpufaas.platform.views import ClusterView

NS_PER_S = 1_000_000_000


@lru_cache(maxsize=512)
def warm_options(table: LatencyTable, batches: tuple[int, ...], units: tuple[int, ...], units_per_gpu: int,
                 usd_per_unit_ns: float) -> tuple[tuple[int, int, int, float], ...]:
    """(batch, share units, latency_ns, cost per request in USD) for every configuration of a function on
    one GPU type, warm, without waits.

    NOTE: memoized here (module level) because every argument is immutable: a `LatencyTable` never
    changes after it is loaded (it hashes by identity), and the rest are tuples and numbers. The cost per
    request is latency x share x price / batch, the measure the search, the oracle and the bench share.
    """
    out = []
    for b in batches:
        for u in units:
            lat_ns = int(round(table.latency_ms(b, u / units_per_gpu) * 1_000_000))
            out.append((b, u, lat_ns, lat_ns * u * usd_per_unit_ns / b))
    return tuple(out)


class _WfMemo:
    """What a workflow needs per decision, computed once per deployed workflow object."""

    __slots__ = ("wf", "plan", "preds", "fastest_rest_ns", "stage_opts", "nominal_opts", "transfer_ns")

    def __init__(self, wf: WorkflowRt, plan: SloPlan, preds: list, fastest_rest_ns: list, stage_opts: list,
                 nominal_opts: list, transfer_ns: list) -> None:
        self.transfer_ns = transfer_ns  # per stage: estimated transfer of its inputs (`transfer_estimates_ns`)
        self.nominal_opts = nominal_opts  # per stage: the Option of the cheapest SLO-feasible warm configuration
        self.wf = wf
        self.plan = plan
        self.preds = preds
        self.fastest_rest_ns = fastest_rest_ns
        self.stage_opts = stage_opts  # per stage: warm Options over every GPU type (search tables)


class EsgPolicy:
    """ESG. Parameters (keyword, frozen after construction):

    - `epsilon`: the search stops when its best path is within (1 + epsilon) of the optimum (0 = exact);
    - `slack`: fraction of each budget held back for prediction error (arrival bursts, cross-node transfers);
    - `idle_stop_s`: an idle instance beyond one per function is stopped after this long (NOTE: 2 s,
      not 10: on the shipped scenarios it cut allocated cost 3-30% at loads 0.5-4 and raised SLO hit
      rate at load 4 from 0.77 to 0.83 (video) and 0.72 to 0.82 (mixed), the freed shares going to the
      stages that need them; at load 0.5 the hit rate moved by at most 0.0005);
    - `eager_scale`: also start one more instance when a feasible choice has to queue behind a busy one;
    - `host_gbps`: the bandwidth assumed for the input transfers of a segment's later stages (default:
      the cluster's host bandwidth; 0: leave them out); the root stage's transfer is the controller's
      own figure for its placement.
    """

    name = "esg"

    def __init__(self, epsilon: float = 0.05, slack: float = 0.1, idle_stop_s: float = 2.0, eager_scale: bool = False,
                 host_gbps: float | None = None) -> None:
        if not (epsilon >= 0 and math.isfinite(epsilon)):
            raise UserError(f"policy esg: epsilon must be a finite number >= 0 (0 = exact), got {epsilon}")
        if not 0 <= slack < 1:
            raise UserError(f"policy esg: slack must be a fraction in [0, 1), got {slack}")
        if idle_stop_s < 0:
            raise UserError(f"policy esg: idle_stop_s must be >= 0 seconds, got {idle_stop_s}")
        if host_gbps is not None and not (host_gbps >= 0 and math.isfinite(host_gbps)):
            raise UserError(f"policy esg: host_gbps must be a finite number >= 0 (0 = no transfer estimate), got {host_gbps}")
        self.epsilon = float(epsilon)
        self.slack = float(slack)
        self.idle_stop_ns = int(idle_stop_s * NS_PER_S)
        self.eager_scale = bool(eager_scale)
        self.host_gbps = None if host_gbps is None else float(host_gbps)

    # NOTE: esg and oracle differ only here: the same tables, budgets and placement, another search.
    def search(self, problem: list[S.StageTable], budget_ns: int) -> S.Result:
        """ESG_1Q's search (the oracle overrides this with the exhaustive one)."""
        return S.astar(problem, budget_ns, self.epsilon)

    def initial_state(self, view: ClusterView) -> dict:
        """`wf`: per workflow name, its `_WfMemo`; `waits`: per queue key, the batch-fill wait in progress
        (capacity epoch, wake time, target batch, head job id); `next_scan_ns`: next scale-down scan.

        NOTE: the state dict is the policy's own and is updated in place and returned (the controller
        stores it and hands it back); nothing of the controller's is ever kept in it except workflow
        objects, which are immutable once deployed and only compared by identity."""
        return {"wf": {}, "waits": {}, "next_scan_ns": 0}

    # ------------------------------------------------------------------ the pass

    def schedule(self, view: ClusterView, now_ns: int, state: dict) -> tuple[Decisions, dict]:
        """One scheduling pass over every non-empty queue (see the module docstring)."""
        actions: list = []
        wake: int | None = None
        waits = state["waits"]
        cap: Capacity | None = None
        queues = list(view.ready_queues())
        if len(queues) > 1:
            queues.sort(key=lambda q: q.jobs[0].inv.deadline_ns)
        epoch = view.capacity_epoch
        for q in queues:
            memo = waits.get(q.key)
            # NOTE: a queue that is waiting for its batch to fill is not searched again on every arrival:
            # while the head is the same and the target batch is not yet reached, the decision would
            # mostly repeat (arrivals make waiting more, not less, attractive; capacity freed elsewhere
            # does not make the chosen placement worse). This is a shortcut, not an exact memo: the rate
            # EWMA moves meanwhile, and capacity may be taken by another queue; the search runs again at
            # the wake time at the latest, the last moment the wait was judged safe.
            if (memo is not None and now_ns < memo[1] and len(q.jobs) < memo[2]
                    and memo[3] == q.jobs[0].id):
                wake = memo[1] if wake is None else min(wake, memo[1])
                continue
            waits.pop(q.key, None)
            if cap is None:
                cap = Capacity(view, now_ns)
            pos = 0
            jobs = q.jobs
            while pos < len(jobs):
                kind, val, batch = self._decide(view, q, pos, cap, now_ns, actions, state)
                if kind == "took":
                    pos += val
                elif kind == "wait":
                    wake = val if wake is None else min(wake, val)
                    if pos == 0:
                        waits[q.key] = (epoch, val, batch, jobs[0].id)
                    break
                else:  # blocked: nothing can run now; the controller asks again when capacity frees
                    break
        if queues:
            if cap is None:
                cap = Capacity(view, now_ns)
            self._prewarm(view, queues, cap, actions, state)
        if now_ns >= state["next_scan_ns"]:
            state["next_scan_ns"] = now_ns + SCAN_EVERY_NS
            self._scale_down(view, now_ns, cap, actions)
        if wake is not None and wake <= now_ns:
            wake = now_ns + 1
        return Decisions(tuple(actions), wake), state

    def _decide(self, view: ClusterView, q: AfwQueue, pos: int, cap: Capacity, now_ns: int, actions: list,
                state: dict) -> tuple[str, int, int]:
        """Decide for the job at `pos` of `q`: ('took', n jobs, 0), ('wait', wake_at_ns, batch) or
        ('blocked', 0, 0). Appends actions and books capacity."""
        stage = q.stage
        wm = self._memo(view, q.workflow, state)
        head = q.jobs[pos]
        time_left = head.inv.deadline_ns - now_ns
        if time_left < wm.fastest_rest_ns[stage.index]:
            actions.append(Reject((head.id,), f"deadline cannot be met: stage '{stage.name}' and what follows need at "
                                              f"least {wm.fastest_rest_ns[stage.index] / 1e6:.1f} ms"))
            return "took", 1, 0
        queued = len(q.jobs) - pos
        budget = int(stage_budget_ns(wm.plan, stage.index, time_left) * (1.0 - self.slack))
        fn = view.functions[stage.function]
        opts, places = self._root_options(view, fn, q, head, queued, budget, cap)
        if not opts:
            self._make_room(view, fn, cap, actions)
            return "blocked", 0, 0
        problem = [S.StageTable(tuple(opts))]
        scope = wm.plan.scope[stage.index]
        if len(scope) > 1:
            local = {s: k for k, s in enumerate(scope)}
            # NOTE: later stages of the segment are planned warm (their placement is decided when their own
            # queue comes up), with the pipeline's fill model (jobs reach them in batches of the root's
            # size, so a larger batch waits for the extra items at that queue's rate; this queue's if it has
            # none yet; unknown rates plan no wait) and with their estimated input transfer
            for s in scope[1:]:
                rate = q.workflow.stages[s].queue.rate_per_s or q.rate_per_s
                fill = int(NS_PER_S / rate) if rate > 0 else 0
                problem.append(S.StageTable(wm.stage_opts[s], tuple(local[p] for p in wm.preds[s] if p in local), fill,
                                            wm.transfer_ns[s]))
        res = self.search(problem, budget)
        if res.choice is None:
            return self._best_effort(view, fn, q, pos, queued, opts, places, problem, budget, cap, actions)
        o = opts[res.choice[0]]
        pl, fill, lat, x = places[o.tag]
        if o.batch > queued:
            extra = max(fill + x, pl.delay_ns) - max(x, pl.delay_ns)  # the part of the root's time that is the fill wait
            return "wait", now_ns + max(1, budget - res.latency_ns + extra), o.batch
        n = self._place(view, fn, q, pos, o.batch, pl, lat, cap, actions)
        if n and self.eager_scale and pl.kind != NEW and pl.delay_ns > 0 and not any(
                i.state == InstanceState.STARTING for i in cap.instances(fn.name)):
            # NOTE: queueing behind a busy instance fits this time, but the instances are saturated:
            # start one more now, so the next burst finds it warm (a cold start takes seconds)
            self._scale_out(view, fn, q, problem, budget, cap, actions)
        return ("took", n, 0) if n else ("blocked", 0, 0)

    def _root_options(self, view: ClusterView, fn: FunctionRt, q: AfwQueue, head, queued: int, budget: int,
                      cap: Capacity) -> tuple[list[S.Option], list]:
        """The root stage's options with their real start delay, input transfer and batch-fill wait, and per
        option (in `Option.tag`) its (placement, fill wait, run time, transfer)."""
        opts: list[S.Option] = []
        places: list = []
        rate = q.rate_per_s
        ns_per_item = NS_PER_S / rate if rate > 0 else math.inf
        max_b = fn.batch_sizes[-1]
        xfer: dict[int, int] = {}

        def transfer(gpu_id: int) -> int:  # the controller's transfer time of the head's inputs onto a GPU
            x = xfer.get(gpu_id)
            if x is None:
                x = xfer[gpu_id] = view.transfer_ns(head, view.gpus[gpu_id]) if head.stage.preds else 0
            return x

        for g0 in _gpu_types(view):
            t = g0.type_name
            table = fn.tables.get(t)
            if table is None:
                continue
            start_mb = table.memory_mb(max_b)
            cold = view.cold_start_ns(fn.name, g0)
            by_u = cap.placements_by_units(fn, t, fn.share_units[t], start_mb, cold, head)
            for b, u, lat, cost in warm_options(table, fn.batch_sizes, fn.share_units[t], g0.share_units, g0.usd_per_unit_ns):
                fill = 0 if b <= queued else (b - queued) * ns_per_item
                if fill + lat > budget:
                    continue
                fill = int(fill)
                pl = cap.pick(by_u[u], u, b)
                if pl is None:
                    continue
                x = transfer(pl.gpu_id)
                # the batch is sent when it is full; its inputs move while the instance is still busy or starting
                opts.append(S.Option(cost, max(fill + x, pl.delay_ns) + lat, b, u, len(places)))
                places.append((pl, fill, lat, x))
        # with the budget already overrun by every option, the best-effort path still needs the fastest
        if not opts:
            for g0 in _gpu_types(view):
                t = g0.type_name
                table = fn.tables.get(t)
                if table is None:
                    continue
                cold = view.cold_start_ns(fn.name, g0)
                by_u = cap.placements_by_units(fn, t, fn.share_units[t], table.memory_mb(max_b), cold, head)
                for b, u, lat, cost in warm_options(table, fn.batch_sizes, fn.share_units[t], g0.share_units, g0.usd_per_unit_ns):
                    if b > queued:
                        continue
                    pl = cap.pick(by_u[u], u, b)
                    if pl is not None:
                        x = transfer(pl.gpu_id)
                        opts.append(S.Option(cost, max(x, pl.delay_ns) + lat, b, u, len(places)))
                        places.append((pl, 0, lat, x))
        return opts, places

    def _best_effort(self, view, fn, q, pos, queued, opts, places, problem, budget, cap, actions) -> tuple[str, int, int]:
        """No configuration fits: run the head now on the fastest available configuration (larger batches
        win within a millisecond), and if that means queueing or a cold start, start one more instance of
        the cheapest configuration that would have fit warm."""
        runnable = [o for o in opts if o.batch <= queued]
        if not runnable:
            return "blocked", 0, 0
        o = min(runnable, key=lambda o: (o.time_ns // 1_000_000, -o.batch, o.cost))
        pl, _, lat, _ = places[o.tag]
        n = self._place(view, fn, q, pos, o.batch, pl, lat, cap, actions)
        if not n:
            return "blocked", 0, 0
        if pl.kind != NEW and pl.delay_ns > 0 and not any(i.state == InstanceState.STARTING for i in cap.instances(fn.name)):
            self._scale_out(view, fn, q, problem, budget, cap, actions)
        return "took", n, 0

    def _scale_out(self, view, fn, q, problem, budget, cap, actions) -> None:
        """Start one instance of the configuration the search picks when every option is warm and idle."""
        rest = problem[1:]
        best = None
        for g0 in _gpu_types(view):
            t = g0.type_name
            table = fn.tables.get(t)
            if table is None:
                continue
            cand = [S.Option(c, lat, b, u, k) for k, (b, u, lat, c) in enumerate(
                warm_options(table, fn.batch_sizes, fn.share_units[t], g0.share_units, g0.usd_per_unit_ns))]
            res = self.search([S.StageTable(tuple(cand))] + rest, budget)
            o = cand[res.choice[0]] if res.choice is not None else min(cand, key=lambda o: (o.time_ns, o.cost))
            mem = table.memory_mb(fn.batch_sizes[-1])
            gpu_id = cap.best_fit_gpu(t, o.units, mem, None)
            if gpu_id is not None:
                best = (gpu_id, o.units, mem)
                break
        if best is not None:
            gpu_id, units, mem = best
            cap.take_gpu(gpu_id, units, mem)
            cap.started.add(fn.name)
            actions.append(Start(fn.name, gpu_id, units, fn.batch_sizes[-1]))

    def _place(self, view, fn: FunctionRt, q: AfwQueue, pos: int, batch: int, pl, lat: int, cap: Capacity,
               actions: list) -> int:
        """ESG_Dispatch: send `batch` jobs from `pos` to the placement; returns how many were taken."""
        jobs = list(itertools.islice(q.jobs, pos, pos + batch))
        # NOTE: a new instance is sized for the function's largest batch: the memory per item is small next
        # to the model's, and a warm instance can then take any batch size the search picks later
        if pl.kind == NEW:
            gpu = view.gpus[pl.gpu_id]
            mem = fn.tables[gpu.type_name].memory_mb(fn.batch_sizes[-1])
            cap.take_gpu(pl.gpu_id, pl.units, mem)
            cap.started.add(fn.name)
            actions.append(Start(fn.name, pl.gpu_id, pl.units, fn.batch_sizes[-1], tuple(j.id for j in jobs)))
            return len(jobs)
        # a job that already failed on this instance stays queued for another pass
        ids = tuple(j.id for j in jobs if j.excluded != pl.instance_id)
        if not ids:
            return 0
        inst = view.instance(pl.instance_id)
        cap.take_instance(inst, lat)
        actions.append(Dispatch(ids, pl.instance_id))
        return len(jobs)

    def _prewarm(self, view: ClusterView, queues: list, cap: Capacity, actions: list, state: dict) -> None:
        """Pipeline-conscious prewarming: once a workflow has work, every later stage whose function has no
        instance gets one now, at its nominal configuration, so the cold starts of a workflow's stages
        overlap instead of adding up as each stage's first job arrives."""
        for q in queues:
            wm = self._memo(view, q.workflow, state)
            for s in q.workflow.stages:
                fname = s.function
                if fname in cap.started or cap.instances(fname):
                    continue
                fn = view.functions[fname]
                o = wm.nominal_opts[s.index]
                for g0 in _gpu_types(view):
                    table = fn.tables.get(g0.type_name)
                    if table is None or o.units not in fn.share_units[g0.type_name]:
                        continue
                    mem = table.memory_mb(fn.batch_sizes[-1])
                    gpu_id = cap.best_fit_gpu(g0.type_name, o.units, mem, None)
                    if gpu_id is not None:
                        cap.take_gpu(gpu_id, o.units, mem)
                        cap.started.add(fname)
                        actions.append(Start(fname, gpu_id, o.units, fn.batch_sizes[-1]))
                        break

    def _make_room(self, view: ClusterView, fn: FunctionRt, cap: Capacity, actions: list) -> None:
        """Nothing can host `fn` and it has no instance: stop the longest-idle instance of another function
        (it frees capacity; the controller asks again when it is released)."""
        if cap.instances(fn.name):
            return
        victims = []
        for other in view.functions:
            if other == fn.name:
                continue
            for i in cap.instances(other):
                if i.state == InstanceState.IDLE and not i.backlog and i.id not in cap.used:
                    victims.append(i)
        if victims:
            v = min(victims, key=lambda i: i.idle_since_ns)
            cap.used.add(v.id)
            actions.append(Stop(v.id))

    def _scale_down(self, view: ClusterView, now_ns: int, cap: Capacity | None, actions: list) -> None:
        """Stop instances idle for longer than `idle_stop_s`, keeping one live instance per function."""
        used = cap.used if cap is not None else set()
        for fname in view.functions:
            live = [i for i in view.instances(fname) if not i.stopping and i.id not in used]
            if len(live) <= 1:
                continue
            idle = sorted((i for i in live if i.state == InstanceState.IDLE and not i.backlog
                           and now_ns - i.idle_since_ns > self.idle_stop_ns), key=lambda i: i.idle_since_ns)
            keep = len(live) - len(idle)
            for i in idle:
                if keep == 0:
                    keep = 1  # the most recently used idle one stays
                    continue
                actions.append(Stop(i.id))
                used.add(i.id)

    # ------------------------------------------------------------------ per-workflow memo

    def _memo(self, view: ClusterView, wf: WorkflowRt, state: dict) -> _WfMemo:
        m = state["wf"].get(wf.name)
        if m is None or m.wf is not wf:
            gbps = view.network.host_gbps if self.host_gbps is None else self.host_gbps
            m = state["wf"][wf.name] = build_memo(view, wf, self.search, 8.0 / gbps if gbps > 0 else 0.0)
        return m


SCAN_EVERY_NS = 250_000_000


def _gpu_types(view: ClusterView) -> list:
    """One representative GPU per GPU type (the option tables are per type)."""
    seen: dict[str, Any] = {}
    for g in view.gpus:
        seen.setdefault(g.type_name, g)
    return list(seen.values())


def build_memo(view: ClusterView, wf: WorkflowRt, search: Callable, host_ns_per_byte: float) -> _WfMemo:
    """Segments, nominal latencies (the cheapest SLO-feasible warm configuration of the whole workflow,
    found with the policy's own search, transfers included), warm option tables per stage, the transfer
    estimates and the fastest remaining path (without transfers: it decides rejections, so it stays
    optimistic)."""
    preds = [s.preds for s in wf.stages]
    n = len(preds)
    transfer = transfer_estimates_ns(view, wf, host_ns_per_byte)
    stage_opts = []
    for s in wf.stages:
        fn = view.functions[s.function]
        opts = []
        for g0 in _gpu_types(view):
            table = fn.tables.get(g0.type_name)
            if table is None:
                continue
            for b, u, lat, c in warm_options(table, fn.batch_sizes, fn.share_units[g0.type_name], g0.share_units, g0.usd_per_unit_ns):
                opts.append(S.Option(c, lat, b, u))
        stage_opts.append(tuple(opts))
    # NOTE: the whole workflow as one search problem: a virtual root (one free option) feeds the entries
    problem = [S.StageTable((S.Option(0.0, 0, 1, 0),))]
    for i in range(n):
        problem.append(S.StageTable(stage_opts[i], tuple(p + 1 for p in preds[i]) or (0,), 0, transfer[i]))
    res = search(problem, wf.slo_ns)
    if res.choice is not None:
        nominal_opts = [problem[i + 1].options[res.choice[i + 1]] for i in range(n)]
    else:  # no warm configuration meets the SLO: weigh segments by their fastest latencies instead
        nominal_opts = [min(stage_opts[i], key=lambda o: (o.time_ns, o.cost)) for i in range(n)]
    nominal = [o.time_ns for o in nominal_opts]
    fastest = [min(o.time_ns for o in stage_opts[i]) for i in range(n)]
    fastest_rest = []
    for i in range(n):
        below = [j for j in range(n) if j == i or _reaches(preds, i, j)]
        fastest_rest.append(critical_path_ns(preds, tuple(below), fastest))
    return _WfMemo(wf, make_plan(preds, nominal), preds, fastest_rest, stage_opts, nominal_opts, transfer)


def transfer_estimates_ns(view: ClusterView, wf: WorkflowRt, host_ns_per_byte: float) -> list[int]:
    """Per stage of `wf`, the time to move one job's inputs to it: its largest predecessor output at
    `host_ns_per_byte` (0 for entry stages). Who calls it: `build_memo`.

    NOTE: a conservative estimate of a same-node move made before the placement is known: the controller
    charges nothing on the same GPU, host bandwidth on one node and network latency + bandwidth across
    nodes (`Controller.transfer_ns`). Across nodes this underestimates; dispatch prefers the GPU and then
    the node that holds the inputs, so that is the rare case. The bandwidth is the policy's `host_gbps`
    (by default the cluster's). Per job, not per batch: the controller moves each
    job's inputs on its own and a batch waits for the slowest."""
    out = []
    for s in wf.stages:
        nbytes = max((view.functions[wf.stages[p].function].output_bytes for p in s.preds), default=0)
        out.append(int(nbytes * host_ns_per_byte))
    return out


def _reaches(preds: list, a: int, b: int) -> bool:
    """True when stage b is a descendant of stage a."""
    if b <= a:
        return False
    seen = {a}
    for j in range(a + 1, b + 1):
        if any(p in seen for p in preds[j]):
            seen.add(j)
    return b in seen
