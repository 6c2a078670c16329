"""Accounting: SLO hit rate, allocated and busy cost, latency percentiles, cold starts, decision time.

Who calls it: the `Controller` records events as they happen and bills cost through `bill_busy` and
`bill_allocated` (`charge` is the one cost formula); each deployed workflow counts into its own
`WorkflowTally`, and the per-workflow, per-tenant and per-class figures are sums of those tallies;
`report()` is read by `gpufaas sim`, the gateway's
`/v1/usage` (through `Controller.report`, live instances billed up to now), its Prometheus metrics
(`cost`, the shed counts and the decision-time histogram) and the benchmarks. The simulation driver sets `warmup_end_ns`: the
controller then leaves out what lies before it (see the field's NOTE); live it stays 0. Memory is
bounded: latencies go into log-bucketed histograms (about 1% relative error), not lists, so a long
simulation does not grow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

from gpufaas.platform.stats import rank
from gpufaas.platform.units import NS_PER_MS, NS_PER_S

if TYPE_CHECKING:
    from gpufaas.platform.runtime import Gpu, Instance, Job

_log = math.log


class Histogram:
    """Log-bucketed histogram of non-negative values; quantiles (as `gpufaas.platform.stats` defines them)
    within 1% relative error for values >= 1.

    NOTE: bucket i >= 1 covers [base^(i-1), base^i) with base 1.02, so an order statistic is read as its
    bucket's geometric middle (error <= 1%), clipped to the exact [min, max]; values below 1 share bucket 0
    (read as 0.5, clipped likewise). The quantile interpolates between two such order statistics.
    """

    __slots__ = ("counts", "n", "total", "max", "min")

    BASE = 1.02
    _INV_LOG_BASE = 1.0 / math.log(BASE)

    def __init__(self) -> None:
        # NOTE: a list indexed by bucket, not a dict: `add` runs once per policy call and per invocation;
        # it grows to the largest bucket seen (about 1400 entries for 1e12), never with the count.
        self.counts: list[int] = [0]
        self.n = 0
        self.total = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, v: float) -> None:
        i = int(_log(v) * self._INV_LOG_BASE) + 1 if v >= 1.0 else 0
        try:
            self.counts[i] += 1
        except IndexError:
            self.counts.extend([0] * (i + 1 - len(self.counts)))
            self.counts[i] = 1
        self.n += 1
        self.total += v
        if v > self.max:
            self.max = v
        if v < self.min:
            self.min = v

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) as `gpufaas.platform.stats` defines it (linear interpolation between the two
        closest order statistics, numpy's default), each order statistic read as its bucket's geometric
        middle clipped to [min, max]; 0.0 when empty. ValueError when q lies outside [0, 1]."""
        if self.n == 0:
            return 0.0
        k, frac = rank(self.n, q)
        lo = self._order_stat(k)
        return lo + frac * (self._order_stat(k + 1) - lo) if frac else lo

    def _order_stat(self, k: int) -> float:
        """The k-th smallest value (0-based), to the bucket's resolution; the extremes exactly."""
        if k == 0:
            return self.min
        if k >= self.n - 1:
            return self.max
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen > k:
                mid = self.BASE ** (i - 1) * math.sqrt(self.BASE) if i else 0.5
                return min(max(mid, self.min), self.max)
        return self.max

    def count_le(self, v: float) -> int:
        """How many values are <= v, to the bucket's resolution: the values that share v's bucket count as
        <= v (exact when v is a bucket's upper edge; otherwise v is read up to one bucket, 2%, higher).
        Read by the gateway's Prometheus collector to expose this histogram with its own bounds."""
        if v == math.inf:
            return self.n
        if v < 0:
            return 0
        i = int(_log(v) * self._INV_LOG_BASE) + 1 if v >= 1.0 else 0
        return sum(self.counts[:i + 1])

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


class CostTotals(NamedTuple):
    """Cost so far (DESIGN section 2): allocated = instance lifetimes, busy = batch executions; in USD and
    in GPU-seconds (share-weighted: half a GPU for 2 s is 1 GPU-second)."""

    allocated_usd: float
    busy_usd: float
    allocated_gpu_s: float
    busy_gpu_s: float


def charge(duration_ns: int, share_units: int, gpu: Gpu) -> tuple[float, float]:
    """The cost formula, the one place it is written (DESIGN section 2: GPU-seconds x share x price):
    holding `share_units` of `gpu` for `duration_ns` is (GPU-nanoseconds, USD) = (duration x units /
    units per GPU, duration x units x the GPU's price per unit-ns). Pure; `Accounting` bills through it."""
    unit_ns = duration_ns * share_units
    return unit_ns / gpu.share_units, unit_ns * gpu.usd_per_unit_ns


SHED_REASONS = ("rejected", "timed_out", "failed")  # how an invocation can end without completing


class TenantUsage:
    """Running figures: invocations counted in, ended, SLO hits, rejected, busy cost in GPU-ns and USD.
    A `WorkflowTally` is one workflow's; `Accounting.report()` sums the tallies into one per tenant and
    one per priority class (allocated cost per tenant is `Accounting.allocated_by_tenant`)."""

    __slots__ = ("invocations", "ended", "slo_hits", "rejected", "busy_gpu_ns", "busy_usd")

    def __init__(self) -> None:
        self.invocations = 0
        self.ended = 0
        self.slo_hits = 0
        self.rejected = 0
        self.busy_gpu_ns = 0.0
        self.busy_usd = 0.0

    def hit_rate(self) -> float:
        return round(self.slo_hits / self.ended, 6) if self.ended else 0.0

    def add(self, t: TenantUsage) -> None:
        """Add another record's figures (`Accounting.report()` sums tallies with it)."""
        self.invocations += t.invocations
        self.ended += t.ended
        self.slo_hits += t.slo_hits
        self.rejected += t.rejected
        self.busy_gpu_ns += t.busy_gpu_ns
        self.busy_usd += t.busy_usd


class WorkflowTally(TenantUsage):
    """One workflow's running figures under one (name, tenant, priority class). Who fills it: the
    controller, through the tally its `WorkflowRt` holds (`Accounting.tally`), and `Accounting.bill_busy`;
    `report()` sums them per workflow, tenant and class.

    NOTE: one record per workflow, reached from the invocation, not per-tenant and per-class records
    looked up by name at every arrival, end and batch: those lookups and calls were a tenth of the
    instructions per simulated request of the one-function SimFaaS workload (`gpufaas bench sim`); a
    tenant's or class's figures are sums over its workflows' tallies, taken only when a report is made."""

    __slots__ = ("workflow", "tenant", "klass")

    def __init__(self, workflow: str, tenant: str, klass: str) -> None:
        super().__init__()
        self.workflow = workflow
        self.tenant = tenant
        self.klass = klass


@dataclass
class Accounting:
    """Running totals for one controller. All times in ns, costs in USD."""

    # NOTE: the warm-up cut, set by loadgen.simdriver.run_scenario before the first arrival (0 = count
    # everything, as the live gateway does). The controller leaves out invocations that arrived before it
    # (all their counters and latency), cold starts and batches that began before it, and the part of each
    # instance's lifetime and each batch's execution before it (allocated/busy cost clipped). Policy
    # decision time, retries and refused decisions stay whole-run: they measure the code, not the system.
    warmup_end_ns: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    cold_starts: int = 0  # instance starts the scheduling policy (or min_instances) asked for; pre-warms are apart
    # NOTE: invocations that waited on a cold start: some stage of theirs ran on an instance that finished its
    # cold start after the stage's job entered its queue (SimFaaS's "cold start" count, Mahmoudi & Khazaei,
    # CLOSER 2021: cold requests / requests is its cold-start probability). One start may serve several
    # (a batch, a backlog), or none (a start that only later takes a job that arrived after it was up).
    cold_requests: int = 0
    evictions: int = 0  # idle instances stopped to make room for a start (residency policy's victims)
    prewarms_used: int = 0  # pre-warmed instances that ran a batch
    prewarms_wasted: int = 0  # pre-warmed instances released without running one
    memory_mb_ns: float = 0.0  # sum over released instances of GPU memory x lifetime (after the warm-up)
    retries: int = 0
    refused_decisions: int = 0
    refusal_reasons: dict[str, int] = field(default_factory=dict)
    allocated_unit_ns: float = 0.0  # sum over instances of lifetime x share (in GPU fractions)
    busy_unit_ns: float = 0.0
    allocated_usd: float = 0.0
    busy_usd: float = 0.0
    batches: int = 0
    batched_jobs: int = 0
    latency_ms: Histogram = field(default_factory=Histogram)
    decision_us: Histogram = field(default_factory=Histogram)
    shed_by_workflow: dict[tuple[str, str], int] = field(default_factory=dict)  # (workflow, SHED_REASONS item) -> count
    # NOTE: per (workflow, tenant, priority class); busy cost is split over a batch's jobs (a function may
    # serve several workflows, tenants or classes), allocated cost goes to the tenant owning the function
    tallies: dict[tuple[str, str, str], WorkflowTally] = field(default_factory=dict)
    allocated_by_tenant: dict[str, list[float]] = field(default_factory=dict)  # tenant -> [GPU-ns, USD]
    admission_rejected: dict[str, int] = field(default_factory=dict)  # admission limit -> invocations refused

    def tally(self, workflow: str, tenant: str, klass: str) -> WorkflowTally:
        """The running figures of `workflow` deployed for `tenant` in priority class `klass`, made on first
        use. Called by the controller when it deploys a workflow (a redeploy under the same key counts on)."""
        key = (workflow, tenant, klass)
        t = self.tallies.get(key)
        if t is None:
            t = self.tallies[key] = WorkflowTally(workflow, tenant, klass)
        return t

    # NOTE: invocations counted in and SLO hits are sums of the tallies (the controller counts each once,
    # into its workflow's tally), not totals kept beside them
    @property
    def invocations(self) -> int:
        """Invocations counted in (arrived after the warm-up, refusals at admission included)."""
        return sum(t.invocations for t in self.tallies.values())

    @property
    def slo_hits(self) -> int:
        """Counted invocations that completed by their deadline."""
        return sum(t.slo_hits for t in self.tallies.values())

    @property
    def per_workflow(self) -> dict[str, tuple[int, int]]:
        """Workflow name -> (ended, SLO hits), counted after the warm-up. Read by reports and `/ui`."""
        out: dict[str, tuple[int, int]] = {}
        for t in self.tallies.values():
            if not t.ended:
                continue  # deployed, nothing ended yet: not in the report
            e, h = out.get(t.workflow, (0, 0))
            out[t.workflow] = (e + t.ended, h + t.slo_hits)
        return out

    def _sums(self, by_tenant: bool) -> dict[str, TenantUsage]:
        """The tallies summed per tenant (or per priority class); a tally nothing has counted into yet
        (a workflow deployed, not yet invoked after the warm-up) makes no entry."""
        out: dict[str, TenantUsage] = {}
        for t in self.tallies.values():
            if not (t.invocations or t.ended or t.busy_gpu_ns):
                continue
            key = t.tenant if by_tenant else t.klass
            u = out.get(key)
            if u is None:
                u = out[key] = TenantUsage()
            u.add(t)
        return out

    def refuse(self, reason: str) -> None:
        """Count one decision the controller refused; `reason` up to its first ':' is the kind."""
        self.refused_decisions += 1
        key = reason.split(":")[0]
        self.refusal_reasons[key] = self.refusal_reasons.get(key, 0) + 1

    def shed(self, workflow: str, reason: str) -> None:
        """Count one invocation of `workflow` that ended without completing; `reason` is one of SHED_REASONS.
        Called by the controller when such an invocation ends (after the warm-up)."""
        if reason == "rejected":
            self.rejected += 1
        elif reason == "timed_out":
            self.timed_out += 1
        elif reason == "failed":
            self.failed += 1
        else:
            raise ValueError(f"unknown shed reason {reason!r}; expected one of {', '.join(SHED_REASONS)}")
        key = (workflow, reason)
        self.shed_by_workflow[key] = self.shed_by_workflow.get(key, 0) + 1

    def bill_busy(self, duration_ns: int, share_units: int, gpu: Gpu, jobs: Sequence[Job] = ()) -> None:
        """Add one batch's execution (or its part after the warm-up) to the busy cost, split evenly over its
        `jobs`' workflows (their tallies). Called by the controller."""
        gpu_ns, usd = charge(duration_ns, share_units, gpu)
        self.busy_unit_ns += gpu_ns
        self.busy_usd += usd
        if not jobs:
            return
        t = jobs[0].inv.workflow.tally
        n = len(jobs)
        if n == 1 or all(j.inv.workflow.tally is t for j in jobs):
            t.busy_gpu_ns += gpu_ns
            t.busy_usd += usd
            return
        for j in jobs:  # NOTE: a mixed batch is rare (a function shared by workflows)
            t = j.inv.workflow.tally
            t.busy_gpu_ns += gpu_ns / n
            t.busy_usd += usd / n

    def bill_allocated(self, inst: Instance, now_ns: int) -> None:
        """Add a stopping instance's lifetime up to `now_ns` (its part after the warm-up) to the allocated
        cost. Called by the controller when it releases the instance."""
        gpu_ns, usd = self._lifetime(inst, now_ns)
        self.allocated_unit_ns += gpu_ns
        self.allocated_usd += usd
        self.memory_mb_ns += self._memory_mb_ns(inst, now_ns)
        a = self.allocated_by_tenant.setdefault(inst.function.tenant, [0.0, 0.0])
        a[0] += gpu_ns
        a[1] += usd

    def _lifetime(self, inst: Instance, now_ns: int) -> tuple[float, float]:
        life_ns = now_ns - max(inst.start_ns, self.warmup_end_ns)  # warmup_end_ns: only what follows it is billed
        return charge(life_ns, inst.share_units, inst.gpu) if life_ns > 0 else (0.0, 0.0)

    def _memory_mb_ns(self, inst: Instance, now_ns: int) -> float:
        """GPU memory `inst` held (MB) x its lifetime after the warm-up (ns)."""
        return inst.memory_mb * max(0, now_ns - max(inst.start_ns, self.warmup_end_ns))

    def memory_gb_s(self, live: Iterable[Instance] = (), now_ns: int = 0) -> float:
        """GPU memory held over time, GB-seconds (1 GB = 1024 MB), the `live` instances up to `now_ns`."""
        total = self.memory_mb_ns + sum(self._memory_mb_ns(i, now_ns) for i in live)
        return total / 1024.0 / NS_PER_S

    def cost(self, live: Iterable[Instance] = (), now_ns: int = 0) -> CostTotals:
        """The cost totals, with the instances in `live` (still running) billed as allocated up to `now_ns`,
        from the warm-up's end on. Batches still executing join the busy cost when they end. Changes nothing.
        Who calls it: `report()`, the controller's `report()` (the gateway's usage) and its metrics."""
        alloc_gpu_ns = self.allocated_unit_ns
        alloc_usd = self.allocated_usd
        for inst in live:
            gpu_ns, usd = self._lifetime(inst, now_ns)
            alloc_gpu_ns += gpu_ns
            alloc_usd += usd
        return CostTotals(alloc_usd, self.busy_usd, alloc_gpu_ns / NS_PER_S, self.busy_unit_ns / NS_PER_S)

    def ended(self) -> int:
        return self.completed + self.failed + self.rejected + self.timed_out

    def report(self, live: Iterable[Instance] = (), now_ns: int = 0) -> dict:
        """The figures `gpufaas sim --json` prints per policy (without policy name and wall time); the
        instances in `live` are billed up to `now_ns` (see `cost`)."""
        ended = self.ended()
        cost = self.cost(live, now_ns)
        return {
            "warmup_s": round(self.warmup_end_ns / NS_PER_S, 6),
            "invocations": self.invocations,
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
            "slo_hit_rate": round(self.slo_hits / ended, 6) if ended else 0.0,
            "cost": {
                "allocated_usd": round(cost.allocated_usd, 6),
                "busy_usd": round(cost.busy_usd, 6),
                "gpu_seconds_allocated": round(cost.allocated_gpu_s, 3),
                "gpu_seconds_busy": round(cost.busy_gpu_s, 3),
            },
            "latency_ms": {q: round(self.latency_ms.quantile(v), 3) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
            "cold_starts": self.cold_starts,
            "cold_requests": self.cold_requests,
            "evictions": self.evictions,
            "prewarms": {"used": self.prewarms_used, "wasted": self.prewarms_wasted},
            "gpu_memory_gb_seconds": round(self.memory_gb_s(live, now_ns), 3),
            "mean_batch": round(self.batched_jobs / self.batches, 3) if self.batches else 0.0,
            "decision_us": {"p50": round(self.decision_us.quantile(0.5), 2), "p99": round(self.decision_us.quantile(0.99), 2)},
            "refused_decisions": self.refused_decisions,
            "per_workflow": {k: {"invocations": v[0], "slo_hit_rate": round(v[1] / v[0], 6) if v[0] else 0.0}
                             for k, v in sorted(self.per_workflow.items())},
            "per_tenant": self._per_tenant(live, now_ns),
            "per_class": {k: {"invocations": u.invocations, "slo_hit_rate": u.hit_rate(),
                              "gpu_seconds_busy": round(u.busy_gpu_ns / NS_PER_S, 3)}
                          for k, u in sorted(self._sums(by_tenant=False).items())},
            "admission_rejected": dict(sorted(self.admission_rejected.items())),
        }

    def _per_tenant(self, live: Iterable[Instance], now_ns: int) -> dict[str, dict]:
        """`report()`'s per_tenant figures, the live instances billed up to `now_ns` to their function's tenant."""
        usage = self._sums(by_tenant=True)
        alloc = {t: a[:] for t, a in self.allocated_by_tenant.items()}
        for t in usage:
            alloc.setdefault(t, [0.0, 0.0])
        for inst in live:
            gpu_ns, usd = self._lifetime(inst, now_ns)
            a = alloc.setdefault(inst.function.tenant, [0.0, 0.0])
            a[0] += gpu_ns
            a[1] += usd
        out = {}
        for t in sorted(alloc):
            u = usage.get(t) or TenantUsage()
            out[t] = {"invocations": u.invocations, "slo_hit_rate": u.hit_rate(), "rejected": u.rejected,
                      "gpu_seconds_busy": round(u.busy_gpu_ns / NS_PER_S, 3),
                      "gpu_seconds_allocated": round(alloc[t][0] / NS_PER_S, 3),
                      "cost": {"allocated_usd": round(alloc[t][1], 6), "busy_usd": round(u.busy_usd, 6)}}
        return out


def ns_to_ms(ns: int) -> float:
    return ns / NS_PER_MS
