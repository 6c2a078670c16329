"""Shared machinery of the provisioned baselines `infless`, `fastgshare` and `static`.

All three follow the same mechanism and differ only in *what* they provision:

- a per-function instance pool, every instance one fixed `Config` (batch, share), placed best-fit on
  the GPUs (several instances share one GPU, as MPS/MIG shares);
- one central FIFO queue per function (its AFW queues merged by stage-enqueue time), dispatched to idle
  instances of the pool, full batches at once and partial ones after the config's batch-fill timeout;
- a scaling tick (default 500 ms) that measures each function's arrival rate from the AFW queues'
  arrival counters and asks the policy's `_scale()` hook which instances to add and which may go.

Who calls it: the three policy modules subclass `PoolPolicy`; tests call the helpers directly
(`function_budgets_ns`, `configs_for`). What it may change: nothing it reaches through the view; its
memory is the `PoolState` it returns.

NOTE: the per-stage SLO budgets here are deliberately pipeline-unaware: each stage gets a fixed slice
of the end-to-end SLO (by latency weight or evenly), measured from the moment the job entered that
stage's queue. That is the INFless-style reading DESIGN section 4 gives the baselines; ESG's point is
that budgets that move with the slack actually left do better.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import Field

from gpufaas.platform.decisions import Decisions, Dispatch, Reject, Start, Stop
from gpufaas.platform.policy.params import PolicyParams, validate
from gpufaas.platform.runtime import FunctionRt, Instance, InstanceState
from gpufaas.platform.views import ClusterView

# NOTE: policies may not import the clock module (import-linter contract `policy-is-pure`: it reads wall
# time); these are the same integer constants as gpufaas.platform.clock's.
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Config:
    """One instance configuration of a function on one GPU type: batch size and share, with its
    profiled batch latency, the memory it reserves and its batch-fill timeout."""

    batch: int
    share_units: int
    latency_ns: int
    memory_mb: float
    max_wait_ns: int = 0

    def capacity_rps(self, utilisation: float = 1.0) -> float:
        """Requests per second one instance serves with full batches, at `utilisation` of its time."""
        return self.batch * NS_PER_S / self.latency_ns * utilisation

    def cost_units_per_request(self) -> float:
        """ESG's cost measure without the price constant: latency x share / batch (unit-seconds)."""
        return self.latency_ns / NS_PER_S * self.share_units / self.batch


@dataclass(slots=True)
class PoolState:
    """What a pool policy remembers between calls (returned, never kept on the policy object).

    `budget_ns`: per-function latency budget; `types`: per function, the GPU type its pool is planned
    and placed on, with that type's share units (`planning_types`); `rate_rps`: smoothed arrival rate per function;
    `counts`: AFW-queue arrival counters at the last tick; `low_since_ns`: when each function first had
    surplus instances (scale-down hysteresis); `plan`: policy-specific data (static: the fixed plan).
    """

    budget_ns: dict[str, int]
    types: dict[str, tuple[str, int]]
    next_tick_ns: int = 0
    last_tick_ns: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    rate_rps: dict[str, float] = field(default_factory=dict)
    low_since_ns: dict[str, int] = field(default_factory=dict)
    plan: Any = None


# ---------------------------------------------------------------------- pure helpers


def planning_types(view: ClusterView) -> dict[str, tuple[str, int]]:
    """Per function, the GPU type (and its share units) its pool is planned for: the first GPU's type when
    the function has a profile there, else the type of the first GPU (in cluster order) it has one for.

    NOTE: one type per function keeps the baselines' planning as their papers describe it (a config is a
    (batch, share) of one kind of GPU); in a heterogeneous cluster a function is not spread across types.
    `FunctionRt` guarantees every deployed function can run on some GPU type of the cluster."""
    order = list(dict.fromkeys((g.type_name, g.share_units) for g in view.gpus))
    return {f: next(t for t in order if t[0] in fn.tables) for f, fn in view.functions.items()}


def stage_weights(view: ClusterView, types: dict[str, tuple[str, int]], mode: str) -> dict[str, float]:
    """Weight of each function when the SLO is split: the latency of its fastest offered config on its
    planning type, batch 1 on the whole GPU where the profile has them ('latency'), or 1 ('even')."""
    if mode == "even":
        return {f: 1.0 for f in view.functions}
    return {f: float(fastest_config(fn, *types[f], 0).latency_ns) for f, fn in view.functions.items()}


def function_budgets_ns(view: ClusterView, types: dict[str, tuple[str, int]], mode: str = "latency") -> dict[str, int]:
    """Per-function latency budget: each stage gets `slo x w / W`, where W is the heaviest entry-to-exit
    path through the stage (so the budgets along any path add up to at most the SLO); a function used by
    several stages or workflows takes its tightest budget. `types`: `planning_types(view)`."""
    w = stage_weights(view, types, mode)
    out: dict[str, int] = {}
    for wf in view.workflows.values():
        st = wf.stages
        up = [0.0] * len(st)  # heaviest path from an entry up to and including the stage
        for s in st:  # topological order
            up[s.index] = w[s.function] + max((up[p] for p in s.preds), default=0.0)
        down = [0.0] * len(st)
        for s in reversed(st):
            down[s.index] = w[s.function] + max((down[c] for c in s.succs), default=0.0)
        for s in st:
            path = up[s.index] + down[s.index] - w[s.function]
            b = int(wf.slo_ns * w[s.function] / path)
            out[s.function] = min(out.get(s.function, b), b)
    return out


def configs_for(fn: FunctionRt, gpu_type: str, units_per_gpu: int, limit_ns: int) -> list[Config]:
    """Every (batch, share) `fn` offers on `gpu_type` (the ones its profile covers) whose batch latency
    fits in `limit_ns`; max_wait = limit - latency."""
    out = []
    for units in fn.share_units.get(gpu_type, ()):
        for b in fn.batch_sizes:
            lat = fn.latency_ns(gpu_type, b, units, units_per_gpu)
            if lat <= limit_ns:
                out.append(Config(b, units, lat, fn.tables[gpu_type].memory_mb(b), limit_ns - lat))
    return out


def fills_in_time(c: Config, rate_rps: float, limit_ns: int) -> bool:
    """INFless's lower rate bound: at `rate_rps`, a batch of `c.batch` fills and runs within `limit_ns`."""
    if c.batch == 1:
        return c.latency_ns <= limit_ns
    if rate_rps <= 0:
        return False
    return (c.batch - 1) / rate_rps * NS_PER_S + c.latency_ns <= limit_ns


def instance_config(inst: Instance, cfgs: dict[tuple[int, int], Config]) -> Config | None:
    """The pool config an instance was started with, or None (an instance of another plan)."""
    return cfgs.get((inst.max_batch, inst.share_units))


# ---------------------------------------------------------------------- the pool policy


class PoolPolicy:
    """Base of the provisioned baselines. Subclasses implement `_scale()` (and may override `_setup()`).

    Parameters (`Params`, all frozen configuration, set per scenario under `params:` or with
    `--set infless.tick_ms=250`):
    `tick_ms` scaling period; `slack` fraction of a stage budget the config search may use (the rest
    absorbs queueing and transfers); `target_utilisation` fraction of an instance's full-batch
    throughput the sizing counts on; `scale_down_delay_s` how long a surplus must last before idle
    instances are stopped; `rate_alpha` EWMA weight of the newest tick's rate; `split` 'latency' or
    'even' SLO split; `drop_late` reject queued jobs whose invocation is already past its deadline.
    """

    name = "pool"
    batch_fill = True  # False: dispatch whatever is queued at once (no batch-fill wait)

    class Params(PolicyParams):
        """The pool baselines' parameters (see the class docstring)."""

        tick_ms: float = Field(500.0, gt=0, allow_inf_nan=False, description="scaling period")
        slack: float = Field(0.8, gt=0, le=1, description="fraction of a stage budget the config search may use")
        target_utilisation: float = Field(0.8, gt=0, le=1, description="fraction of full-batch throughput counted on")
        scale_down_delay_s: float = Field(15.0, ge=0, allow_inf_nan=False, description="surplus time before idle instances stop")
        rate_alpha: float = Field(0.5, gt=0, le=1, description="EWMA weight of the newest tick's rate")
        split: Literal["latency", "even"] = Field("latency", description="SLO split across stages")
        drop_late: bool = Field(True, description="reject queued jobs already past their deadline")

    def __init__(self, **params: Any) -> None:
        p = validate(self.name, type(self).Params, params)
        self.params = p
        self.tick_ns = int(p.tick_ms * NS_PER_MS)
        self.slack = p.slack
        self.target_utilisation = p.target_utilisation
        self.scale_down_delay_ns = int(p.scale_down_delay_s * NS_PER_S)
        self.rate_alpha = p.rate_alpha
        self.split = p.split
        self.drop_late = p.drop_late

    # -- hooks

    def _setup(self, view: ClusterView, st: PoolState) -> Any:
        """The policy's `plan` data, computed once on the first call (when functions are deployed)."""
        return None

    def _scale(self, view: ClusterView, now_ns: int, st: PoolState, fname: str, live: list[Instance]) -> tuple[list[Config], list[Instance]]:
        """Which configs to start for `fname` and which of its `live` instances are surplus. Pure.
        Default: size the pool for the function's measured rate (`_scale_for_rate`)."""
        return self._scale_for_rate(view, st, fname, st.rate_rps.get(fname, 0.0), live)

    def _scale_for_rate(self, view: ClusterView, st: PoolState, fname: str, rate_rps: float,
                        live: list[Instance]) -> tuple[list[Config], list[Instance]]:
        """Configs to start and surplus instances for `fname` at `rate_rps`. Pure."""
        raise NotImplementedError

    # -- contract

    def initial_state(self, view: ClusterView) -> Any:
        """No state until the first call: functions are deployed after the controller is built."""
        return None

    def schedule(self, view: ClusterView, now_ns: int, state: Any) -> tuple[Decisions, Any]:
        """Tick (rates + scaling) when due, bootstrap functions with work and no instance, dispatch."""
        st: PoolState | None = state
        if st is None or set(st.budget_ns) != set(view.functions):
            st = self._init(view, now_ns)
        actions: list = []
        if now_ns >= st.next_tick_ns:
            st = self._tick(view, now_ns, st)
            self._reconcile(view, now_ns, st, actions, list(st.budget_ns))
        else:
            starved = self._starved(view)
            if starved:
                self._reconcile(view, now_ns, st, actions, starved)
        wake = self._dispatch(view, now_ns, st, actions)
        wake = st.next_tick_ns if wake is None else min(wake, st.next_tick_ns)
        return Decisions(tuple(actions), wake_at_ns=wake if wake > now_ns else now_ns + 1), st

    # -- internals

    def _init(self, view: ClusterView, now_ns: int) -> PoolState:
        types = planning_types(view)
        st = PoolState(budget_ns=function_budgets_ns(view, types, self.split), types=types,
                       next_tick_ns=now_ns, last_tick_ns=now_ns)
        for f in view.functions:
            st.budget_ns.setdefault(f, 0)
        st.counts = view.arrivals_by_function()
        st.plan = self._setup(view, st)
        return st

    def limit_ns(self, st: PoolState, fname: str) -> int:
        """The part of `fname`'s budget that batch-fill wait + execution may use."""
        return int(st.budget_ns[fname] * self.slack)

    def offered_configs(self, view: ClusterView, st: PoolState, fname: str) -> list[Config]:
        """`fname`'s configs on its planning type that fit its limit; else its fastest offered one alone
        (it misses the budget, but least)."""
        fn = view.functions[fname]
        gpu_type, units_per_gpu = st.types[fname]
        limit = self.limit_ns(st, fname)
        return configs_for(fn, gpu_type, units_per_gpu, limit) or [fastest_config(fn, gpu_type, units_per_gpu, limit)]

    def _tick(self, view: ClusterView, now_ns: int, st: PoolState) -> PoolState:
        counts = view.arrivals_by_function()
        dt_s = (now_ns - st.last_tick_ns) / NS_PER_S
        rate = dict(st.rate_rps)
        if dt_s > 0:
            a = self.rate_alpha
            for f, c in counts.items():
                inst = (c - st.counts.get(f, 0)) / dt_s
                rate[f] = inst if f not in st.rate_rps else a * inst + (1 - a) * st.rate_rps[f]
        return replace(st, counts=counts, rate_rps=rate, last_tick_ns=now_ns, next_tick_ns=now_ns + self.tick_ns,
                       low_since_ns=dict(st.low_since_ns))

    def _reconcile(self, view: ClusterView, now_ns: int, st: PoolState, actions: list, fnames: list[str]) -> None:
        """Start what `_scale` asks for (round-robin across functions, best-fit on GPUs) and stop surplus
        idle instances whose surplus has lasted `scale_down_delay`."""
        free_u = {g.id: g.free_units for g in view.gpus}
        free_m = {g.id: g.free_mb for g in view.gpus}
        starved_now = set(self._starved(view))
        pending: dict[str, list[Config]] = {}
        stopped: set[int] = set()
        for fname in fnames:
            live = [i for i in view.instances(fname) if not i.stopping]
            starts, surplus = self._scale(view, now_ns, st, fname, live)
            if not live and not starts and fname in starved_now:
                starts = self._bootstrap(view, st, fname)
            if starts:
                pending[fname] = list(starts)
            idle_surplus = [i for i in surplus if i.state == InstanceState.IDLE and not i.backlog]
            if surplus:
                since = st.low_since_ns.setdefault(fname, now_ns)
                if now_ns - since >= self.scale_down_delay_ns:
                    for inst in idle_surplus:
                        actions.append(Stop(inst.id))
                        stopped.add(inst.id)
                        free_u[inst.gpu.id] += inst.share_units
                        free_m[inst.gpu.id] += inst.memory_mb
                    if idle_surplus:
                        st.low_since_ns.pop(fname, None)
            else:
                st.low_since_ns.pop(fname, None)
        # NOTE: one start per function per round, functions with the fewest live instances first, so a
        # function that needs many instances cannot take the whole cluster from one that needs one.
        order = sorted(pending, key=lambda f: len(view.instances(f)))
        while order:
            nxt = []
            for fname in order:
                cfg = pending[fname].pop(0)
                gpu_type = st.types[fname][0]
                gpu = self._best_fit(view, gpu_type, cfg, free_u, free_m)
                if gpu is None and not view.instances(fname):
                    gpu = self._make_room(view, fname, gpu_type, cfg, free_u, free_m, stopped, actions)
                if gpu is None:
                    continue  # no room for this function this tick
                free_u[gpu] -= cfg.share_units
                free_m[gpu] -= cfg.memory_mb
                actions.append(Start(fname, gpu, cfg.share_units, cfg.batch, reason="need"))
                if pending[fname]:
                    nxt.append(fname)
            order = nxt

    @staticmethod
    def _starved(view: ClusterView) -> list[str]:
        """Functions without any instance in a workflow that has queued work.

        NOTE: every function of such a workflow counts, not only the one whose queue holds the job: a
        workflow platform knows the DAG it was invoked for and pre-warms its functions on the first
        invocation (INFless pre-warms from its invocation history). Without it, each stage of a
        6-stage DAG would wait for its predecessor's cold start in turn, which no deployed system does.
        """
        out: dict[str, None] = {}
        for wf in {q.workflow.name: q.workflow for q in view.ready_queues()}.values():
            for s in wf.stages:
                if s.function not in out and not view.instances(s.function):
                    out[s.function] = None
        return list(out)

    def _bootstrap(self, view: ClusterView, st: PoolState, fname: str) -> list[Config]:
        """A function with queued work, no instance and no rate yet: one instance of its cheapest config
        at the rate observed so far (at least 1 rps)."""
        starts, _ = self._scale_for_rate(view, st, fname, max(st.rate_rps.get(fname, 0.0), 1.0), [])
        return starts[:1]

    @staticmethod
    def _best_fit(view: ClusterView, gpu_type: str, cfg: Config, free_u: dict[int, int], free_m: dict[int, float]) -> int | None:
        """The GPU of `gpu_type` (the config's planning type) with the least free share that still fits
        `cfg` (then the least free memory)."""
        best = None
        best_key = None
        for g in view.gpus:
            if g.type_name != gpu_type:
                continue
            u, m = free_u[g.id], free_m[g.id]
            if u >= cfg.share_units and m >= cfg.memory_mb:
                key = (u, m)
                if best_key is None or key < best_key:
                    best, best_key = g.id, key
        return best

    def _make_room(self, view: ClusterView, fname: str, gpu_type: str, cfg: Config, free_u, free_m, stopped: set[int],
                   actions: list) -> int | None:
        """A function with no instance and no room: stop idle instances of the function that holds the
        most instances (at least 2) on one GPU of `gpu_type` until `cfg` fits there, so no function starves."""
        holders = sorted((f for f in view.functions if f != fname), key=lambda f: -len(view.instances(f)))
        for other in holders:
            insts = view.instances(other)
            if len(insts) < 2:
                break
            for inst in insts:
                if (inst.id in stopped or inst.stopping or inst.state != InstanceState.IDLE or inst.backlog
                        or inst.gpu.type_name != gpu_type):
                    continue
                g = inst.gpu.id
                if free_u[g] + inst.share_units >= cfg.share_units and free_m[g] + inst.memory_mb >= cfg.memory_mb:
                    actions.append(Stop(inst.id))
                    stopped.add(inst.id)
                    free_u[g] += inst.share_units
                    free_m[g] += inst.memory_mb
                    return g
        return None

    def max_wait_ns(self, st: PoolState, inst: Instance) -> int:
        """Batch-fill timeout of an instance: what its stage budget leaves after the batch's latency."""
        if not self.batch_fill:
            return 0
        fn = inst.function
        lat = fn.latency_ns(inst.gpu.type_name, inst.max_batch, inst.share_units, inst.gpu.share_units)
        return max(0, self.limit_ns(st, fn.name) - lat)

    def _dispatch(self, view: ClusterView, now_ns: int, st: PoolState, actions: list) -> int | None:
        """Give queued jobs to idle instances; returns the earliest batch-fill timeout, if any."""
        by_fn: dict[str, list] = {}
        for q in view.ready_queues():
            by_fn.setdefault(q.function, []).append(q)
        wake: int | None = None
        rejected: list[int] = []
        for fname, qs in by_fn.items():
            skip = 0
            if self.drop_late:
                # NOTE: a job whose invocation is already past its deadline is a miss whatever happens;
                # serving it only delays the others. Every baseline gets this, as ESG does.
                for q in qs:
                    for j in q.jobs:
                        if j.inv.deadline_ns >= now_ns:
                            break
                        rejected.append(j.id)
                        skip += 1
            idle = sorted(view.idle_instances(fname), key=lambda i: (-i.max_batch, i.id))
            if not idle:
                continue
            limit = sum(i.max_batch for i in idle) + skip
            if len(qs) == 1:
                jobs = list(itertools.islice(qs[0].jobs, limit))
            else:
                jobs = list(itertools.islice(heapq.merge(*(q.jobs for q in qs), key=lambda j: j.enq_ns), limit))
            if skip:
                dead = set(rejected)
                jobs = [j for j in jobs if j.id not in dead]
            pos = 0
            for inst in idle:
                if pos >= len(jobs):
                    break
                take = [j for j in jobs[pos:pos + inst.max_batch] if j.excluded != inst.id]
                if not take:
                    continue
                if len(take) < inst.max_batch:
                    due = jobs[pos].enq_ns + self.max_wait_ns(st, inst)
                    if now_ns < due:
                        # the batch is not full yet: wait for more jobs, at most until the timeout
                        wake = due if wake is None else min(wake, due)
                        break
                actions.append(Dispatch(tuple(j.id for j in take), inst.id))
                pos += len(take)
        if rejected:
            actions.insert(0, Reject(tuple(rejected), "deadline passed while queued"))
        return wake


def fixed_pool(cfg: Config, n: int, live: list[Instance]) -> tuple[list[Config], list[Instance]]:
    """Starts and surplus for a pool of `n` instances of one `cfg`: instances of another config are
    surplus, and so are the newest ones beyond `n`."""
    match = [i for i in live if i.max_batch == cfg.batch and i.share_units == cfg.share_units]
    other = [i for i in live if i.max_batch != cfg.batch or i.share_units != cfg.share_units]
    return [cfg] * max(0, n - len(match)), other + match[n:][::-1]


def fastest_config(fn: FunctionRt, gpu_type: str, units_per_gpu: int, limit_ns: int) -> Config:
    """The fastest config `fn` offers on `gpu_type`: its smallest batch (1 where declared) on its largest
    offered share (the whole GPU only where the profile covers it). The fallback when no config fits a
    budget (it misses, but least). Profiles are monotone in batch and share, so no other is faster."""
    units = max(fn.share_units[gpu_type])
    b = min(fn.batch_sizes)
    lat = fn.latency_ns(gpu_type, b, units, units_per_gpu)
    return Config(b, units, lat, fn.tables[gpu_type].memory_mb(b), max(0, limit_ns - lat))


def function_rates_rps(view: ClusterView, workflow_rates_rps: dict[str, float]) -> dict[str, float]:
    """Offered rate per function from rates per workflow: every stage of a workflow sees its rate."""
    out = {f: 0.0 for f in view.functions}
    for wf in view.workflows.values():
        r = workflow_rates_rps.get(wf.name, 0.0)
        for s in wf.stages:
            out[s.function] += r
    return out
