"""The in-tree residency policies: `fixed`, `lru`, `cost-aware` (greedy-dual) and `histogram` (hybrid
histogram keep-alive with pre-warming). Who builds them: `residency.registry`; who calls them: the
`Controller` (see `residency.interface` for when).
"""

from __future__ import annotations

import math
from typing import Iterable

from gpufaas.platform.accounting import Histogram as GapHistogram
from gpufaas.platform.residency.interface import cold_start_ns
from gpufaas.platform.runtime import FunctionRt, Gpu, Instance
from gpufaas.platform.units import NS_PER_MS, NS_PER_S

NEVER_NS = 365 * 24 * 3600 * NS_PER_S  # `lru`'s keep-alive: longer than any run, live or simulated


class Fixed:
    """The fixed keep-alive as a production FaaS platform runs it (Apache OpenWhisk's invoker, the default
    that Shahrad et al. and FaasCache compare against): every idle instance lives `keep_alive_s` (its
    function's, else the platform's); when a Start lacks room, the idle instance used least recently goes
    first (OpenWhisk's `ContainerPool.remove`: "the oldest previously used container"); nothing is
    pre-warmed.

    NOTE: until 2026-12-01 `fixed` never evicted: a Start without room waited until some keep-alive ran out.
    With more models in use than fit (many-models), the first arrivals of rare models then waited for room
    until they timed out and were never served, which no platform does and which made `fixed` look cheap in
    cold starts by refusing work. A baseline is run at its best, so it evicts as OpenWhisk does."""

    name = "fixed"
    evicts = True
    learns = False

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Not called (`learns` is False)."""

    def idle_ttl_ns(self, inst: Instance, now_ns: int) -> int:
        """The function's fixed keep-alive."""
        return inst.function.keep_alive_ns

    def victims(self, candidates: Iterable[Instance], fn: FunctionRt | None, now_ns: int) -> list[Instance]:
        """Every candidate, least recently used (longest idle) first; ties: lower id."""
        return sorted(candidates, key=lambda i: (i.idle_since_ns, i.id))

    def prewarm_at_ns(self, fn: FunctionRt, now_ns: int) -> int | None:
        """Never pre-warms."""
        return None

    def evicted(self, inst: Instance, live_left: int, now_ns: int) -> None:
        """Keeps no eviction bookkeeping."""

    def keeps_warm(self, fn: FunctionRt, now_ns: int) -> bool:
        """Never releases on purpose: the scheduling policy's own keep-alive horizon decides."""
        return True


class Lru(Fixed):
    """Keep-alive as caching with least-recently-used eviction (the LRU of Fuerst and Sharma, FaasCache,
    ASPLOS 2021, section 4): an idle instance is never released on a timer, only evicted under pressure,
    longest idle first. It differs from `fixed` only in having no keep-alive: it trades allocated cost for
    fewer cold starts of functions whose gaps are longer than the keep-alive."""

    name = "lru"

    def idle_ttl_ns(self, inst: Instance, now_ns: int) -> int:
        """Never expires (a year: beyond any run; the controller still arms one timer per instance)."""
        return NEVER_NS


class CostAware(Fixed):
    """Keep-alive as caching (Fuerst and Sharma, "FaasCache: Keeping Serverless Computing Alive with
    Greedy-Dual Caching", ASPLOS 2021, section 4): under pressure evict the idle instance of lowest priority

        priority = clock + frequency x cost / size

    with `clock` the greedy-dual clock at the function's last arrival, `frequency` its arrivals since it
    was last evicted down to no instance (FaasCache resets it then), `cost` its profiled cold start (the
    reload cost, in seconds) and `size` what the instance holds of its GPU. Each eviction raises the clock
    to the evicted instance's priority (greedy-dual aging: a function that has gone quiet is overtaken by
    the clock). Idle expiry stays the fixed keep-alive.

    NOTE: `size` is the instance's dominant share of its GPU, max(units / GPU units, MB / GPU MB), not its
    MB alone as in FaasCache (whose servers run out of memory only): on a shared GPU a Start can lack share
    units as well as memory, and the dominant share is what the instance denies the others (derived from
    the cluster, nothing tuned). NOTE: FaasCache keeps a container until it is evicted; ours also expires
    on the fixed keep-alive, so that with free room it never holds more than `fixed` does."""

    name = "cost-aware"
    evicts = True
    learns = True

    def __init__(self) -> None:
        self.clock = 0.0
        self.stamp: dict[str, float] = {}  # function -> clock at its last arrival
        self.freq: dict[str, int] = {}  # function -> arrivals since it was last evicted down to no instance

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Count the arrival and stamp `fn` with the clock."""
        self.freq[fn.name] = self.freq.get(fn.name, 0) + 1
        self.stamp[fn.name] = self.clock

    def _value(self, fn: FunctionRt, gpu: Gpu, units: int, mb: float) -> float:
        """clock stamp + frequency x cost (s) / dominant share of `gpu`."""
        size = max(units / gpu.share_units, mb / gpu.memory_mb, 1e-9)
        cost_s = cold_start_ns(fn, gpu.type_name) / NS_PER_S
        return self.stamp.get(fn.name, self.clock) + self.freq.get(fn.name, 0) * cost_s / size

    def priority(self, inst: Instance, now_ns: int) -> float:
        """Greedy-dual priority of keeping `inst` (higher stays)."""
        return self._value(inst.function, inst.gpu, inst.share_units, inst.memory_mb)

    def victims(self, candidates: Iterable[Instance], fn: FunctionRt | None, now_ns: int) -> list[Instance]:
        """Every candidate, lowest priority first (ties: lower id). Like FaasCache, every function is admitted.

        NOTE: until 2026-12-01 only instances below the priority the requester would enter with were
        offered, and a Start found no room otherwise; with more models in use than fit, a rare function's
        request then waited for some keep-alive to end (an invocation timed out on a 2-GPU many-models
        variant). Admitting every function, as FaasCache does, changed the cold starts by 3 % (133 -> 137
        on many-models, 140 -> 142 at a 600 s keep-alive) and starves no request."""
        return sorted(candidates, key=lambda i: (self.priority(i, now_ns), i.id))

    def evicted(self, inst: Instance, live_left: int, now_ns: int) -> None:
        """The clock rises to the evicted priority; the function's frequency restarts when none is left."""
        self.clock = max(self.clock, self.priority(inst, now_ns))
        if live_left == 0:
            self.freq.pop(inst.function.name, None)


class Histogram(Fixed):
    """Hybrid histogram keep-alive (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020, section 4.2):
    per function, the distribution of idle times (gaps between its arrivals). Once it is representative,
    an idle instance is kept until the gap's `TAIL_Q` (99th) percentile, plus `MARGIN` (10%), after the
    function's last arrival; when even the `HEAD_Q` (5th) percentile of the gap, less `MARGIN`, is long
    enough to pay for releasing the instance and starting it again (longer than two cold starts), the
    instance is released as soon as it goes idle and one is pre-warmed to be ready at the head of the
    distribution. Before that, the fixed keep-alive (the paper's fallback for a histogram that is not
    representative). Under pressure, the idle instance whose function's next arrival is predicted
    furthest away (last arrival + mean gap; none seen twice: first) goes first, Belady's choice.

    Representative: `MIN_SAMPLES` gaps, or at least two gaps that all fall within one cold start of each
    other. NOTE: the paper judges a histogram representative by how concentrated its bin counts are (their
    coefficient of variation); all gaps in one bin is the extreme of that, and it is what a timer-triggered
    function shows from its second gap on. The bin width here is one cold start (derived from the
    profile): a pre-warm is started one cold start ahead, so a finer prediction gains nothing.

    NOTE: the paper's constants (5th and 99th percentile, 10% margins, a 4-hour range); ours keep its
    percentiles and margin, and read the gaps in a log-bucketed histogram (1% resolution) rather than
    1-minute bins, because GPU cold starts are seconds, not minutes. No keep-alive is shorter than one
    cold start: releasing an instance sooner than that risks paying the cold start for a short lull
    (the ski-rental bound esg_pool uses too). `MIN_SAMPLES` = 10: with n gaps the next one falls outside
    the sampled range with probability 2 / (n + 1), under 1/5 from 10 gaps on."""

    name = "histogram"
    evicts = True
    learns = True
    HEAD_Q, TAIL_Q, MARGIN = 0.05, 0.99, 0.10
    MIN_SAMPLES = 10
    RANGE_NS = 4 * 3600 * NS_PER_S

    def __init__(self) -> None:
        self.last_ns: dict[str, int] = {}  # function -> its last arrival
        self.gaps_ms: dict[str, GapHistogram] = {}
        # function -> (samples, windows): the two quantiles walk the histogram's buckets, so they are read again
        # only when a gap was added (an instance goes idle about once per batch; arrivals are rarer)
        self._windows: dict[str, tuple[int, tuple[int, int] | None]] = {}

    def observe_arrival(self, fn: FunctionRt, now_ns: int) -> None:
        """Add the gap since `fn`'s previous arrival to its histogram."""
        last = self.last_ns.get(fn.name)
        self.last_ns[fn.name] = now_ns
        if last is None:
            self.gaps_ms[fn.name] = GapHistogram()
        elif now_ns - last <= self.RANGE_NS:
            self.gaps_ms[fn.name].add((now_ns - last) / NS_PER_MS)

    def windows_ns(self, fn: FunctionRt) -> tuple[int, int] | None:
        """(pre-warm head, keep-alive tail) in ns after the last arrival, or None while not representative."""
        h = self.gaps_ms.get(fn.name)
        if h is None or h.n < 2:
            return None
        cached = self._windows.get(fn.name)
        if cached is not None and cached[0] == h.n:
            return cached[1]
        w: tuple[int, int] | None = None
        if h.n >= self.MIN_SAMPLES or (h.max - h.min) * NS_PER_MS <= cold_start_ns(fn):
            head = int(h.quantile(self.HEAD_Q) * NS_PER_MS * (1 - self.MARGIN))
            tail = int(h.quantile(self.TAIL_Q) * NS_PER_MS * (1 + self.MARGIN))
            w = (head, tail)
        self._windows[fn.name] = (h.n, w)
        return w

    def _prewarms(self, fn: FunctionRt, head_ns: int) -> bool:
        return head_ns > 2 * cold_start_ns(fn)

    def idle_ttl_ns(self, inst: Instance, now_ns: int) -> int:
        """Released at once when the function pre-warms (and this is not the pre-warmed instance itself);
        else kept to the tail of the gap distribution after the last arrival, at least one cold start."""
        fn = inst.function
        w = self.windows_ns(fn)
        if w is None:
            return fn.keep_alive_ns
        head, tail = w
        last = self.last_ns[fn.name]
        if inst.batches_run > 0 and self._prewarms(fn, head) and last + head - cold_start_ns(fn) > now_ns:
            return 0
        return max(last + tail - now_ns, cold_start_ns(fn, inst.gpu.type_name))

    def prewarm_at_ns(self, fn: FunctionRt, now_ns: int) -> int | None:
        """A cold start before the head of the gap distribution after the last arrival, when it prewarms."""
        w = self.windows_ns(fn)
        if w is None or not self._prewarms(fn, w[0]):
            return None
        at = self.last_ns[fn.name] + w[0] - cold_start_ns(fn)
        return at if at > now_ns else None

    def keeps_warm(self, fn: FunctionRt, now_ns: int) -> bool:
        """False when it pre-warms (the pre-warm starts it), and past the tail after the last arrival (at least one cold start); True while the histogram is not representative (the fixed
        keep-alive, the scheduling policy's own horizon, decides)."""
        w = self.windows_ns(fn)
        if w is None:
            return True
        head, tail = w
        since = now_ns - self.last_ns[fn.name]
        cold = cold_start_ns(fn)
        if self._prewarms(fn, head):
            return False  # NOTE: its pre-warm starts it; a start by the scheduling policy would count as cold
        return since <= max(tail, cold)

    def next_arrival_ns(self, fn: FunctionRt) -> float:
        """The predicted next arrival of `fn`: last arrival + mean gap (inf when not seen twice)."""
        h = self.gaps_ms.get(fn.name)
        if h is None or h.n == 0:
            return math.inf
        return self.last_ns[fn.name] + h.mean * NS_PER_MS

    def victims(self, candidates: Iterable[Instance], fn: FunctionRt | None, now_ns: int) -> list[Instance]:
        """Every candidate, the furthest predicted next arrival first (Belady's choice; ties: lower id).

        NOTE: until 2026-12-01 only instances predicted not to be reused before their keep-alive ended were
        offered, and a Start found no room otherwise. That starved the requester whenever the keep-alive
        was long against the gaps (keep-alive 600 s on a many-models variant: 11 invocations timed out,
        0.94x the cold starts of `fixed`); with every candidate in Belady order, 0.39x. The request has to
        be served now (there is no bypass), so the only choice is what goes, and the instance needed
        furthest ahead is the cheapest to lose."""
        return sorted(candidates, key=lambda i: (-self.next_arrival_ns(i.function), i.id))
