"""Accounting: SLO hit rate, allocated and busy cost, latency percentiles, cold starts, decision time.

Who calls it: the `Controller` records events as they happen; `report()` is read by `gpufaas sim`,
the gateway's `/v1/usage` and the benchmarks. The simulation driver sets `warmup_end_ns`: the
controller then leaves out what lies before it (see the field's NOTE); live it stays 0. Memory is
bounded: latencies go into log-bucketed histograms (about 1% relative error), not lists, so a long
simulation does not grow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpufaas.platform.units import NS_PER_MS, NS_PER_S

_log = math.log


class Histogram:
    """Log-bucketed histogram of non-negative values; quantiles within ~1% relative error.

    NOTE: bucket i covers [base^i, base^(i+1)) with base 1.02, so a quantile is reported as its bucket's
    geometric middle (error <= 1%); values below 1 share bucket 0 (and are reported as 0 when all are 0).
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
        """The q-quantile (0..1); 0.0 when empty."""
        if self.n == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.n))
        if rank >= self.n:
            return self.max
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                if i == 0:
                    return min(self.max, 0.5) if self.max < 1 else 0.5
                lo = self.BASE ** (i - 1)
                return min(max(lo * math.sqrt(self.BASE), self.min), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


@dataclass
class Accounting:
    """Running totals for one controller. All times in ns, costs in USD."""

    # NOTE: the warm-up cut, set by loadgen.simdriver.run_scenario before the first arrival (0 = count
    # everything, as the live gateway does). The controller leaves out invocations that arrived before it
    # (all their counters and latency), cold starts and batches that began before it, and the part of each
    # instance's lifetime and each batch's execution before it (allocated/busy cost clipped). Policy
    # decision time, retries and refused decisions stay whole-run: they measure the code, not the system.
    warmup_end_ns: int = 0
    invocations: int = 0
    completed: int = 0
    slo_hits: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    cold_starts: int = 0
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
    per_workflow: dict[str, list[int]] = field(default_factory=dict)  # name -> [ended, slo_hits]

    def refuse(self, reason: str) -> None:
        self.refused_decisions += 1
        key = reason.split(":")[0]
        self.refusal_reasons[key] = self.refusal_reasons.get(key, 0) + 1

    def ended(self) -> int:
        return self.completed + self.failed + self.rejected + self.timed_out

    def report(self) -> dict:
        """The figures `gpufaas sim --json` prints per policy (without policy name and wall time)."""
        ended = self.ended()
        return {
            "warmup_s": round(self.warmup_end_ns / NS_PER_S, 6),
            "invocations": self.invocations,
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
            "slo_hit_rate": round(self.slo_hits / ended, 6) if ended else 0.0,
            "cost": {
                "allocated_usd": round(self.allocated_usd, 6),
                "busy_usd": round(self.busy_usd, 6),
                "gpu_seconds_allocated": round(self.allocated_unit_ns / NS_PER_S, 3),
                "gpu_seconds_busy": round(self.busy_unit_ns / NS_PER_S, 3),
            },
            "latency_ms": {q: round(self.latency_ms.quantile(v), 3) for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
            "cold_starts": self.cold_starts,
            "mean_batch": round(self.batched_jobs / self.batches, 3) if self.batches else 0.0,
            "decision_us": {"p50": round(self.decision_us.quantile(0.5), 2), "p99": round(self.decision_us.quantile(0.99), 2)},
            "refused_decisions": self.refused_decisions,
            "per_workflow": {k: {"invocations": v[0], "slo_hit_rate": round(v[1] / v[0], 6) if v[0] else 0.0}
                             for k, v in sorted(self.per_workflow.items())},
        }


def ns_to_ms(ns: int) -> float:
    return ns / NS_PER_MS
