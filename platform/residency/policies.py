"""The in-tree residency policies: `fixed`, `lru`, `cost-aware` (greedy-dual) and `histogram` (hybrid
histogram keep-alive with pre-warming). Who builds them: `residency.registry`; who calls them: the
`Controller` (see `residency.interface` for when).
"""

from __future__ import annotations

import math
from typing import Iterable

from gpufaas.platform.accounting import Histogram as GapHistogram
from gpufaas.platform.runtime import FunctionRt, Instance
from gpufaas.platform.units import NS_PER_MS, NS_PER_S


def _cold_ns(fn: FunctionRt, inst: Instance | None = None) -> int:
    """The profiled cold start of `fn` (on `inst`'s GPU type, else its first GPU type): the reload cost."""
    table = fn.tables[inst.gpu.type_name] if inst is not None else next(iter(fn.tables.values()))
    return int(table.cold_start.total_ms * NS_PER_MS)


class Fixed:
    """Today's behaviour: every idle instance lives `keep_alive_s` (its function's, else the platform's),
    a Start without room is refused, nothing is pre-warmed."""

    name = "fixed"
    evicts = False
    learns = False

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Not called (`learns` is False)."""

    def idle_ttl_ns(self, inst: Instance, now_ns: int) -> int:
        """The function's fixed keep-alive."""
        return inst.function.keep_alive_ns

    def victims(self, candidates: Iterable[Instance], now_ns: int) -> list[Instance]:
        """Never evicts."""
        return []

    def prewarm_at_ns(self, fn: FunctionRt, now_ns: int) -> int | None:
        """Never pre-warms."""
        return None


class Lru(Fixed):
    """The fixed keep-alive, and under memory pressure the least recently used idle instance goes first."""

    name = "lru"
    evicts = True

    def victims(self, candidates: Iterable[Instance], now_ns: int) -> list[Instance]:
        """Longest idle first (ties: lower id)."""
        return sorted(candidates, key=lambda i: (i.idle_since_ns, i.id))


class _Arrivals:
    """Per function: last arrival and an EWMA of the gaps (the `AfwQueue` estimator, per function)."""

    __slots__ = ("last_ns", "gap_ewma_ns", "n")

    ALPHA = 0.2  # as AfwQueue.ALPHA: adapts within a handful of arrivals

    def __init__(self) -> None:
        self.last_ns = -1
        self.gap_ewma_ns = 0.0
        self.n = 0

    def add(self, now_ns: int) -> int:
        """Record one arrival; returns the gap to the previous one (-1 for the first)."""
        gap = now_ns - self.last_ns if self.last_ns >= 0 else -1
        self.last_ns = now_ns
        self.n += 1
        if gap >= 0:
            self.gap_ewma_ns = gap if self.n == 2 else (1 - self.ALPHA) * self.gap_ewma_ns + self.ALPHA * gap
        return gap


class CostAware(Fixed):
    """Keep-alive as caching (Fuerst and Sharma, "FaasCache: Keeping Serverless Computing Alive with
    Greedy-Dual Caching", ASPLOS 2021): under memory pressure evict the idle instance of lowest priority
    `clock + reload cost x reuse probability / size`, where the reload cost is its profiled cold start,
    the reuse probability is P(next arrival within the keep-alive) under the function's observed rate,
    and size its GPU memory; each eviction raises the clock to the evicted priority (greedy-dual aging),
    and each arrival stamps its function with the current clock. Idle expiry stays the fixed keep-alive.

    NOTE: FaaSCache's frequency is an invocation count reset on eviction; we use the rate estimate
    turned into a probability over the keep-alive horizon, so a function that has gone quiet loses its
    priority with time instead of keeping a count earned long ago."""

    name = "cost-aware"
    evicts = True
    learns = True

    def __init__(self) -> None:
        self.clock = 0.0
        self.stamp: dict[str, float] = {}  # function -> clock at its last arrival
        self.seen: dict[str, _Arrivals] = {}

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Stamp `fn` with the clock and update its rate."""
        a = self.seen.get(fn.name)
        if a is None:
            a = self.seen[fn.name] = _Arrivals()
        a.add(now_ns)
        self.stamp[fn.name] = self.clock

    def reuse_probability(self, fn: FunctionRt, now_ns: int) -> float:
        """P(an arrival of `fn` within its keep-alive), Poisson at rate 1 / max(gap EWMA, time since last)."""
        a = self.seen.get(fn.name)
        if a is None or a.n < 2:
            return 0.0
        gap_ns = max(a.gap_ewma_ns, now_ns - a.last_ns, 1.0)
        return 1.0 - math.exp(-fn.keep_alive_ns / gap_ns)

    def priority(self, inst: Instance, now_ns: int) -> float:
        """Greedy-dual priority of keeping `inst` (higher stays): clock stamp + cost x probability / MB."""
        fn = inst.function
        return (self.stamp.get(fn.name, 0.0)
                + _cold_ns(fn, inst) / NS_PER_S * self.reuse_probability(fn, now_ns) / max(inst.memory_mb, 1.0))

    def victims(self, candidates: Iterable[Instance], now_ns: int) -> list[Instance]:
        """Lowest priority first; the clock rises to the first victim's priority (it is evicted first)."""
        ranked = sorted(((self.priority(i, now_ns), i.id, i) for i in candidates), key=lambda t: (t[0], t[1]))
        if ranked:
            self.clock = max(self.clock, ranked[0][0])
        return [i for _, _, i in ranked]


class Histogram(Fixed):
    """Hybrid histogram keep-alive (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020, section 4.2):
    per function, the distribution of idle times (gaps between its arrivals). Once it is representative
    (`MIN_SAMPLES` gaps), an idle instance is kept until the gap's `TAIL_Q` percentile (plus `MARGIN`)
    after the function's last arrival; when even the `HEAD_Q` percentile of the gap is long enough to pay
    for releasing the instance and starting it again (longer than two cold starts), the instance is
    released as soon as it goes idle and one is pre-warmed to be ready at the head of the distribution.
    Before that, the fixed keep-alive. Under pressure, the idle instance whose function's next arrival
    is predicted furthest away (last arrival + mean gap) goes first.

    NOTE: the paper's constants (5th and 99th percentile, 10% margins, a 4-hour range); ours keep its
    percentiles and margin, and read the gaps in a log-bucketed histogram (1% resolution) rather than
    1-minute bins, because GPU cold starts are seconds, not minutes. No keep-alive is shorter than one
    cold start: releasing an instance sooner than that risks paying the cold start for a short lull
    (the ski-rental bound esg_pool uses too)."""

    name = "histogram"
    evicts = True
    learns = True
    HEAD_Q, TAIL_Q, MARGIN = 0.05, 0.99, 0.10
    MIN_SAMPLES = 10
    RANGE_NS = 4 * 3600 * NS_PER_S

    def __init__(self) -> None:
        self.seen: dict[str, _Arrivals] = {}
        self.gaps_ms: dict[str, GapHistogram] = {}
        # function -> (samples, windows): the two quantiles walk the histogram's buckets, so they are read again
        # only when a gap was added (an instance goes idle about once per batch; arrivals are rarer)
        self._windows: dict[str, tuple[int, tuple[int, int] | None]] = {}

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Add the gap since `fn`'s previous arrival to its histogram."""
        a = self.seen.get(fn.name)
        if a is None:
            a = self.seen[fn.name] = _Arrivals()
            self.gaps_ms[fn.name] = GapHistogram()
        gap = a.add(now_ns)
        if 0 <= gap <= self.RANGE_NS:
            self.gaps_ms[fn.name].add(gap / NS_PER_MS)

    def windows_ns(self, fn: FunctionRt) -> tuple[int, int] | None:
        """(pre-warm head, keep-alive tail) in ns after the last arrival, or None while not representative."""
        h = self.gaps_ms.get(fn.name)
        if h is None or h.n < self.MIN_SAMPLES:
            return None
        cached = self._windows.get(fn.name)
        if cached is not None and cached[0] == h.n:
            return cached[1]
        head = int(h.quantile(self.HEAD_Q) * NS_PER_MS * (1 - self.MARGIN))
        tail = int(h.quantile(self.TAIL_Q) * NS_PER_MS * (1 + self.MARGIN))
        self._windows[fn.name] = (h.n, (head, tail))
        return head, tail

    def _prewarms(self, fn: FunctionRt, head_ns: int) -> bool:
        return head_ns > 2 * _cold_ns(fn)

    def idle_ttl_ns(self, inst: Instance, now_ns: int) -> int:
        """Released at once when the function pre-warms (and this is not the pre-warmed instance itself);
        else kept to the tail of the gap distribution after the last arrival, at least one cold start."""
        fn = inst.function
        w = self.windows_ns(fn)
        if w is None:
            return fn.keep_alive_ns
        head, tail = w
        last = self.seen[fn.name].last_ns
        if inst.batches_run > 0 and self._prewarms(fn, head) and last + head - _cold_ns(fn) > now_ns:
            return 0
        return max(last + tail - now_ns, _cold_ns(fn, inst))

    def prewarm_at_ns(self, fn: FunctionRt, now_ns: int) -> int | None:
        """A cold start before the head of the gap distribution after the last arrival, when it prewarms."""
        w = self.windows_ns(fn)
        if w is None or not self._prewarms(fn, w[0]):
            return None
        at = self.seen[fn.name].last_ns + w[0] - _cold_ns(fn)
        return at if at > now_ns else None

    def victims(self, candidates: Iterable[Instance], now_ns: int) -> list[Instance]:
        """Furthest predicted next arrival first (never seen: first of all)."""
        def next_arrival(i: Instance) -> float:
            a = self.seen.get(i.function.name)
            if a is None or a.n < 2:
                return math.inf
            return a.last_ns + a.gap_ewma_ns
        return sorted(candidates, key=lambda i: (-next_arrival(i), i.id))
