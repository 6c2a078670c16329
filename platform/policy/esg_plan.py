"""ESG's plan: per workflow, the cheapest (GPU type, batch, share) per stage that meets the SLO at the
observed load, found with the A*-search; per function, the pool that serves it.

The cost model sees the whole bill, not only the busy time. A provider pays for the share an
instance holds over its life (waiting, idle, cold-starting), so the cost of a configuration is the
share the function must hold to serve its observed rate with it, per request:

    capacity         c    = what keeps P(wait > w) <= eps           (`capacity_needed_rps`)
    instances        n    = ceil(c x latency(b, share) / b), at least 1
    cost per request      = n x share x price / rate    (+ the cold starts of instances not yet warm)

A configuration is (GPU type, batch b, share, wait w): a job may wait up to w and then runs, so a
stage's planned time is w + latency(b, share), plus the transfer of its inputs; w is a number of the
stage's own rounds (batch run times) or a fraction of the SLO.
The capacity follows from the observed rate and index of dispersion D of the arrivals (`esg_rates`)
by the heavy-traffic approximation of the queue; `eps` follows from the policy's `target_hit` (the
share of invocations that should meet their SLO), applied at each stage (`miss_budget`). Nothing is
tuned per scenario.

The search is `search.astar` (ESG_1Q with the dual blades) over the whole workflow (a virtual root
feeds the entry stages), with the end-to-end SLO as budget. The stages' planned times feed the
dominator-based SLO split (`slo.make_plan`): the dispatcher orders and sheds jobs by the budget their
segment gets from the time actually left (`slo.stage_budget_ns`).

Who calls it: `esg.EsgPolicy` (on a tick, when a workflow's observed load moved by a planning step),
tests. Pure: reads the view, returns new values.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gpufaas.platform.policy import search as S
from gpufaas.platform.policy.slo import SloPlan, make_plan
from gpufaas.platform.runtime import Gpu, WorkflowRt
from gpufaas.platform.views import ClusterView

NS_PER_S = 1_000_000_000
# NOTE: a workflow with no observed rate yet is planned for this rate: every option then needs one
# instance, and the cheapest is the smallest share that meets the SLO (the cost ordering does not
# depend on the value, only that it is small and positive).
MIN_RATE_RPS = 1e-3
# NOTE: the waits a plan may allow a stage (see `stage_options`), in two families: rounds of the
# stage's own batch run time (a slow stage absorbs bursts over its own rounds) and powers-of-two
# fractions of the workflow's SLO (a fast stage can hold a share of the SLO that has nothing to do
# with its run time; otherwise a 0.3 ms stage would be sized to keep waits under a millisecond). Powers
# of two cover each range with few options; the Pareto filter drops those that buy nothing.
ROUNDS = (1, 2, 4, 8)
SLO_FRACTIONS = (4, 8, 16, 32, 64)


@dataclass(frozen=True, slots=True)
class StageChoice:
    """The configuration planned for one stage: where (`gpu_type`), `batch`, `units` of share, its
    batch latency, the instances its rate needs on its own, its planned time (its wait, its own run
    and its input transfer) and the wait its pool is sized for (after the plan, its share of the
    SLO's slack too)."""

    gpu_type: str
    batch: int
    units: int
    latency_ns: int
    instances: int
    time_ns: int
    wait_ns: int


@dataclass(frozen=True, slots=True)
class WorkflowPlan:
    """A workflow's plan at one observed load. `budget_weight[i]`: stage i's share of the time left to
    its deadline under the dominator split (its segment's remaining planned time over everything still
    ahead); `fastest_after_ns[i]`: the least time any job needs after stage i (fastest configurations,
    transfers included): the test for an invocation that can no longer meet its deadline;
    `planned_after_ns[i]`: the time the planned configurations take after stage i (a full planned
    batch's run and its transfer per stage, no wait): what a job needs after it when the pools are
    busy, the test for shedding under contention."""

    key: tuple
    choices: tuple[StageChoice, ...]
    slo: SloPlan
    budget_weight: tuple[float, ...]
    fastest_ns: tuple[int, ...]
    fastest_after_ns: tuple[int, ...]
    planned_after_ns: tuple[int, ...]
    feasible: bool


def miss_budget(target_hit: float) -> float:
    """The probability a stage may let a job wait past its planned wait: the target miss rate
    (1 - target_hit), at each stage.

    NOTE: not divided over the workflow's stages (since 7b40718; this docstring had kept the old
    rule): each stage's wait already holds its share of the SLO's slack, and a job late at one stage
    is often early at another, so a union bound over the stages sizes every pool for a thinner tail
    than the workflow's target asks."""
    return max(1e-9, (1.0 - target_hit))


def capacity_needed_rps(rate_rps: float, dispersion: float, wait_ns: int, eps: float) -> float:
    """The service rate (jobs/s) a pool needs so that a job waits longer than `wait_ns` with
    probability at most `eps`, for arrivals of rate `rate_rps` and index of dispersion `dispersion`.

    The heavy-traffic (reflected Brownian motion) approximation of the queue: its content exceeds x
    with probability exp(-2 (c - r) x / (D r)) (Kingman, "On queues in heavy traffic", J. R. Stat. Soc.
    B 24, 1962; Harrison, "Brownian Motion and Stochastic Flow Systems", 1985). A job behind x jobs
    waits x / c; setting x = c x wait and solving (c - r) c = D r ln(1/eps) / (2 wait) for c."""
    if rate_rps <= 0:
        return 0.0
    return _capacity(rate_rps, max(dispersion, 0.0) * rate_rps * math.log(1.0 / eps), max(wait_ns, 1), math.sqrt)


def _capacity(rate_rps, drl, wait_ns, sqrt):  # floats, or numpy arrays of waits
    """`capacity_needed_rps`'s formula, `drl` = D r ln(1/eps), `wait_ns` >= 1: written once for one wait (math)
    and for many (`stage_options`, numpy; the same operations in the same order, so the same doubles)."""
    a = drl / (2.0 * (wait_ns / NS_PER_S))
    return (rate_rps + sqrt(rate_rps * rate_rps + 4.0 * a)) / 2.0


def instances_needed(rate_rps: float, dispersion: float, latency_ns: int, batch: int, wait_ns: int, eps: float) -> int:
    """Instances of (batch, latency) whose full-batch throughput is the capacity needed to keep a job's
    wait within `wait_ns` (`capacity_needed_rps`); at least 1."""
    return max(1, math.ceil(_batches(capacity_needed_rps(rate_rps, dispersion, wait_ns, eps), latency_ns, batch)))


def _batches(capacity_rps, latency_ns, batch):  # floats, or numpy arrays
    """Full batches running at once to serve `capacity_rps` (rounded up by `instances_needed`)."""
    return capacity_rps * latency_ns / NS_PER_S / batch - 1e-9


def gpu_types(view: ClusterView) -> list[Gpu]:
    """One representative GPU per GPU type of the cluster (option tables are per type)."""
    seen: dict[str, Gpu] = {}
    for g in view.gpus:
        seen.setdefault(g.type_name, g)
    return list(seen.values())


def transfer_estimates_ns(view: ClusterView, wf: WorkflowRt, host_ns_per_byte: float) -> list[int]:
    """Per stage of `wf`, the time to move one job's inputs to it: its largest predecessor output at
    `host_ns_per_byte` (0 for entry stages).

    NOTE: a same-node move, estimated before the placement is known: the controller charges nothing on
    the same GPU, host bandwidth on one node, network latency + bandwidth across nodes
    (`Controller.transfer_ns`); the pool places a stage's instances near its predecessors' first."""
    out = []
    for s in wf.stages:
        nbytes = max((view.functions[wf.stages[p].function].output_bytes for p in s.preds), default=0)
        out.append(int(nbytes * host_ns_per_byte))
    return out


def warm_counts(view: ClusterView, function: str) -> dict[tuple[str, int], list[int]]:
    """The largest batches of the live (not stopping) instances of `function`, per (GPU type, share)."""
    out: dict[tuple[str, int], list[int]] = {}
    for i in view.instances(function):
        if not i.stopping:
            out.setdefault((i.gpu.type_name, i.share_units), []).append(i.max_batch)
    return out


def stage_options(view: ClusterView, function: str, rate_rps: float, dispersion: float, eps: float,
                  slo_ns: int) -> list[tuple]:
    """The Pareto front (no option both cheaper and faster) of `function`'s configurations on the
    cluster, as (cost per request, planned time without transfer, StageChoice), at the observed load.

    A configuration is (GPU type, batch, share, wait): a job may wait up to `wait` before its batch
    runs, so a burst is absorbed over that time: a longer wait needs fewer instances and plans a longer
    time for the stage (`ROUNDS`, `SLO_FRACTIONS`). The search then trades queueing time against held
    share where the SLO leaves room.

    Reusing warm instances is cheaper than starting new ones: each instance a configuration needs
    beyond the live ones of that configuration also pays for the move, two cold starts' worth of its
    share (it holds share while it starts; the instance it replaces is held as long again before it
    is released, `esg_pool`), spread over the function's keep-alive, the platform's horizon for holding share on
    speculation. So a plan moves to another configuration only when that saves more than the move.

    NOTE: the configurations of a function on a GPU type under an SLO never change (`_grid`, memoized), and
    each call weighs them all at once in numpy, building StageChoice objects for the front alone: weighed
    one by one, as StageChoice objects through two calls each, they took 6 ms a plan (36 plans in the first
    2 s of mixed at load 1), which held the live gateway's loop while the first seconds' rate estimates
    moved. The arithmetic is the scalar code's, in the same order, so the front is the same."""
    fn = view.functions[function]
    rate = max(rate_rps, MIN_RATE_RPS)
    drl = max(dispersion, 0.0) * rate * math.log(1.0 / eps)
    warm = warm_counts(view, function)
    horizon_ns = max(fn.keep_alive_ns, 1)
    parts = []
    for g in gpu_types(view):
        t = g.type_name
        if t not in fn.tables:
            continue
        shares, batches = tuple(fn.share_units[t]), tuple(fn.batch_sizes)
        lats = tuple(fn.latency_ns(t, b, u, g.share_units) for u in shares for b in batches)
        u, b, lat, w = _grid(shares, batches, lats, slo_ns)
        if not len(w):
            continue
        n = np.maximum(1, np.ceil(_batches(_capacity(rate, drl, np.maximum(w, 1), np.sqrt), lat, b))).astype(np.int64)
        have = np.zeros(len(w), dtype=np.int64)
        for (wt, wu), max_batches in warm.items():
            if wt == t:
                for mb in max_batches:
                    have += (u == wu) & (b <= mb)
        cost = (n + np.maximum(0, n - have) * (2 * view.cold_start_ns(function, g)) / horizon_ns) * u * g.usd_per_unit_ns * NS_PER_S / rate
        parts.append((t, cost, w + lat, u, b, lat, n, w))
    if not parts:
        return []
    cost = np.concatenate([p[1] for p in parts])
    time_ns = np.concatenate([p[2] for p in parts])
    order = np.lexsort((time_ns, cost))  # by cost, then time; stable, as a sort by the key (cost, time)
    t_sorted = time_ns[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = t_sorted[1:] < np.minimum.accumulate(t_sorted)[:-1]  # faster than every cheaper option
    front = []
    types = np.concatenate([np.full(len(p[1]), k) for k, p in enumerate(parts)])
    cols = [np.concatenate([p[c] for p in parts]) for c in (3, 4, 5, 6, 7)]
    for i in order[keep].tolist():
        k = int(types[i])
        uu, bb, ll, nn, ww = (int(c[i]) for c in cols)
        front.append((float(cost[i]), int(time_ns[i]), StageChoice(parts[k][0], bb, uu, ll, nn, ww + ll, ww)))
    return front


@functools.lru_cache(maxsize=4096)
def _grid(shares: tuple[int, ...], batches: tuple[int, ...], lats: tuple[int, ...], slo_ns: int) -> tuple[np.ndarray, ...]:
    """The configurations (share units, batch, latency, wait) of one function on one GPU type whose
    planned time fits `slo_ns`, as arrays, in `stage_options`'s order (shares, then batches, then each
    wait of `ROUNDS` and `SLO_FRACTIONS`); `lats`: the latency of each (share, batch), shares outer.
    Pure (memoized on its arguments)."""
    slo_waits = {slo_ns // f for f in SLO_FRACTIONS}
    rows = []
    it = iter(lats)
    for u in shares:
        for b in batches:
            lat = next(it)
            for w in {k * lat for k in ROUNDS} | slo_waits:
                if w + lat <= slo_ns:
                    rows.append((u, b, lat, w))
    cols = tuple(np.ascontiguousarray(np.array(rows, dtype=np.int64).reshape(-1, 4)[:, c]) for c in range(4))
    for c in cols:
        c.flags.writeable = False  # shared by every call that hits the memo
    return cols


def function_loads(view: ClusterView, loads: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Per function, the (rate, dispersion) its pool serves: the rates of every workflow stage that uses
    it summed, the largest dispersion among them. `loads`: per workflow name, (rate, dispersion)."""
    out: dict[str, tuple[float, float]] = {}
    for name, (rate, disp) in loads.items():
        wf = view.workflows.get(name)
        if wf is None:
            continue
        for s in wf.stages:
            r0, d0 = out.get(s.function, (0.0, 0.0))
            out[s.function] = (r0 + rate, max(d0, disp))
    return out


def plan_workflow(view: ClusterView, wf: WorkflowRt, fn_loads: dict[str, tuple[float, float]], target_hit: float,
                  transfer_ns: list[int], search: Callable[[list[S.StageTable], int], S.Result], key: tuple) -> WorkflowPlan:
    """The cheapest per-stage configurations whose critical path (planned times + transfers) meets the
    SLO, by ESG's A*-search; the fastest ones when none does (`feasible` False). `fn_loads`: per
    function, the load its pool serves (`function_loads`): a function that other workflows use too is
    priced at the load it really carries, so a plan does not take a wait that its shared pool cannot
    keep."""
    n = len(wf.stages)
    eps = miss_budget(target_hit)
    per_stage = [stage_options(view, s.function, *fn_loads.get(s.function, (0.0, 1.0)), eps, wf.slo_ns)
                 for s in wf.stages]
    problem = [S.StageTable((S.Option(0.0, 0, 1, 0),))]  # a virtual root feeds the entry stages
    for i, s in enumerate(wf.stages):
        opts = tuple(S.Option(c, t, ch.batch, ch.units, k) for k, (c, t, ch) in enumerate(per_stage[i]))
        problem.append(S.StageTable(opts, tuple(p + 1 for p in s.preds) or (0,), 0, transfer_ns[i]))
    res = search(problem, wf.slo_ns)
    fastest = [min(per_stage[i], key=lambda o: (o[2].latency_ns, o[0])) for i in range(n)]
    if res.choice is not None:
        picked = [per_stage[i][problem[i + 1].options[res.choice[i + 1]].tag] for i in range(n)]
    else:
        picked = fastest
    preds = [s.preds for s in wf.stages]
    times = [ch.time_ns + transfer_ns[i] for i, (_, _, ch) in enumerate(picked)]
    slo = make_plan(preds, times)
    # NOTE: the plan's critical path is usually shorter than the SLO; the dominator split hands each
    # segment its share of the whole SLO, so a stage's budget is its planned time scaled by SLO / critical
    # path, and the queueing its pool is sized for is that budget less its own run and transfer. That
    # is where the SLO's slack goes: fewer instances, not idle time.
    cp = sum(slo.weights_ns)
    scale = wf.slo_ns / cp if cp > 0 and res.choice is not None else 1.0
    choices = tuple(StageChoice(ch.gpu_type, ch.batch, ch.units, ch.latency_ns, ch.instances, times[i],
                                max(ch.wait_ns, int(times[i] * scale) - ch.latency_ns - transfer_ns[i]))
                    for i, (_, _, ch) in enumerate(picked))
    weights = []
    for i in range(n):
        rest = slo.rest_ns[i]
        later = slo.later_ns[slo.segment_of[i]]
        weights.append(rest / (rest + later) if rest + later > 0 else 1.0)
    # the least time a job needs from a stage's start on: one batch of one at the fastest configuration
    fastest_ns = [fastest[i][2].latency_ns + transfer_ns[i] for i in range(n)]
    run_ns = [ch.latency_ns + transfer_ns[i] for i, ch in enumerate(choices)]
    return WorkflowPlan(key, choices, slo, tuple(weights), tuple(fastest_ns), _after(wf, fastest_ns),
                        _after(wf, run_ns), res.choice is not None)


def _after(wf: WorkflowRt, stage_ns: list[int]) -> tuple[int, ...]:
    """Per stage, the longest path of `stage_ns` through the stages after it."""
    after = [0] * len(wf.stages)
    for s in reversed(wf.stages):
        after[s.index] = max((stage_ns[c] + after[c] for c in s.succs), default=0)
    return tuple(after)


# a plan is searched again when the observed rate leaves [r0 / 2^(1/4), r0 x 2^(1/4)] (see `needs_replan`)
RATE_BAND_LOG2 = 0.25


def needs_replan(plan: "WorkflowPlan | None", wf: WorkflowRt, rate_rps: float, dispersion: float) -> bool:
    """Whether the observed load has moved far enough from the one `plan` was made for to search again:
    the rate by more than 2^(1/4) (19 %) or the dispersion by more than 2, either way.

    NOTE: the steps are the sizing formula's sensitivity: capacity moves about linearly with the rate
    and at most with the square root of the dispersion (its burst term), so both steps move it by
    under about 19-41 %, and a dispersion estimate (a second moment) is noisier than a rate; a band
    around the planned load, not a grid, so noise at a cell boundary does not search again and again."""
    if plan is None or plan.key[0] is not wf:
        return True
    r0, d0 = plan.key[1], plan.key[2]
    r, r0 = max(rate_rps, MIN_RATE_RPS), max(r0, MIN_RATE_RPS)
    return (abs(math.log2(r / r0)) > RATE_BAND_LOG2
            or abs(math.log2(max(dispersion, 1e-3) / max(d0, 1e-3))) > 1.0)


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """What one function's pool should be: instances of (`gpu_type`, `batch`, `units`) whose combined
    full-batch throughput covers `need_rps` (its rate plus the burst headroom), and at least one;
    surplus is released only down to `keep_rps`; a job may wait `wait_ns` before its batch runs. New
    instances take batches up to `max_batch`: the largest whose run fits half the stage's budget (a
    round's wait and its own run), so a burst makes batches larger within the budget."""

    function: str
    gpu_type: str
    batch: int
    units: int
    latency_ns: int
    need_rps: float
    mid_rps: float
    keep_rps: float
    wait_ns: int
    max_batch: int
    rate_rps: float  # the arrival rate estimate itself, no headroom (what a saturated pipeline compares)


def pool_targets(view: ClusterView, plans: dict[str, WorkflowPlan], loads: dict[str, tuple[float, float, float]],
                 target_hit: float) -> dict[str, PoolTarget]:
    """Per function, one target: the planned configuration of its tightest stage (the shortest planned
    time: it also meets every looser stage's plan), sized for the summed rate of every stage that
    uses it, with the largest dispersion among them. `loads`: per workflow (rate, dispersion, the
    variance of the rate estimate, `esg_rates.rate_variance`).

    `need_rps` and `keep_rps` are the capacity needed at the lower and the upper end of the rate's
    confidence interval (two standard errors either way): the pool grows only when even the lower end
    needs more than it has, and releases share of the planned configuration only below the upper end,
    so noise in the estimate does not start and stop instances in turn (a real surge shows as a
    backlog, which the pool answers at once, `esg_pool`). An instance of a configuration the plan has
    left is released down to `mid_rps`, the need at the estimate itself: holding it against the upper
    end would keep the old configuration beside the new one for as long as the rate sits there."""
    acc: dict[str, list] = {}
    for wname, plan in plans.items():
        wf = view.workflows.get(wname)
        if wf is None:
            continue
        rate, disp, var = loads.get(wname, (0.0, 1.0, 0.0))
        for s in wf.stages:
            ch = plan.choices[s.index]
            a = acc.get(s.function)
            if a is None:
                acc[s.function] = [ch, rate, disp, var]
            else:
                if ch.wait_ns + ch.latency_ns < a[0].wait_ns + a[0].latency_ns:
                    a[0] = ch
                a[1] += rate
                a[2] = max(a[2], disp)
                a[3] += var
    out = {}
    eps = miss_budget(target_hit)
    for f, (ch, rate, disp, var) in acc.items():
        wait_ns = ch.wait_ns
        sd = math.sqrt(var)
        need = capacity_needed_rps(max(rate - 2.0 * sd, MIN_RATE_RPS), disp, wait_ns, eps)
        mid = capacity_needed_rps(max(rate, MIN_RATE_RPS), disp, wait_ns, eps)
        keep = capacity_needed_rps(max(rate + 2.0 * sd, MIN_RATE_RPS), disp, wait_ns, eps)
        fn = view.functions[f]
        units_per_gpu = next(g.share_units for g in gpu_types(view) if g.type_name == ch.gpu_type)
        half_ns = (wait_ns + ch.latency_ns) // 2
        top = max((b for b in fn.batch_sizes if b >= ch.batch
                   and fn.latency_ns(ch.gpu_type, b, ch.units, units_per_gpu) <= half_ns), default=ch.batch)
        out[f] = PoolTarget(f, ch.gpu_type, ch.batch, ch.units, ch.latency_ns, need, mid, keep, wait_ns, top, rate)
    return out
