"""The `Workload`: one description of offered load that drives both `gpufaas sim` and `gpufaas loadgen`.

A workload is a list of streams, each sending invocations of one workflow with an arrival process,
plus traces (`loadgen.trace.TraceSpec`: Azure 2019 per-minute counts or timestamp CSVs) mapped onto
workflows. `targets()` numbers what arrivals go to: the streams first, then each trace's workflows.
`arrivals(workload, seed, duration_s)` merges everything into one time-ordered iterator of
`(t_ns, target_index)` without materialising it, so memory does not grow with the run's length.

Who calls it: `loadgen.simdriver` (virtual time) and `loadgen.driver` (live HTTP), on the same value.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Iterator, Literal, NamedTuple

import numpy as np
from pydantic import Field, model_validator

from gpufaas.loadgen import arrivals as ap
from gpufaas.loadgen.trace import TraceSpec
from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.specs import Spec
from gpufaas.platform.units import MAX_DURATION_MS


class StreamSpec(Spec):
    """One stream of invocations of one workflow."""

    workflow: str = Field(description="workflow to invoke")
    arrival: Literal["constant", "poisson", "gamma", "mmpp"] = Field("poisson", description="arrival process")
    rate_rps: float = Field(gt=0, description="mean arrival rate, invocations per second (must be > 0)")
    cv: float = Field(1.0, gt=0, description="gamma only: coefficient of variation of the gaps (>1 is bursty)")
    mmpp_rates_rps: list[float] | None = Field(None, description="mmpp only: the rates to switch among (0 = off); scaled so their mean is rate_rps")
    mmpp_dwell_s: float = Field(10.0, gt=0, description="mmpp only: mean time spent at one rate, seconds")
    start_s: float = Field(0.0, ge=0, description="when the stream starts, seconds from the run's start")
    duration_s: float | None = Field(None, gt=0, description="how long it runs; default: until the run ends")
    slo_ms: float | None = Field(None, gt=0, le=MAX_DURATION_MS, description="per-request SLO override (default: the workflow's)")
    tenant: str = Field("default", description="the tenant whose copy of `workflow` the stream invokes (scenario `tenants:`)")

    @model_validator(mode="after")
    def _check(self) -> "StreamSpec":
        if self.arrival == "mmpp":
            rs = self.mmpp_rates_rps
            if not rs or any(r < 0 for r in rs) or not any(r > 0 for r in rs):
                raise ValueError("mmpp_rates_rps: give a list of rates >= 0, at least one > 0")
        return self

    def gaps(self, rng: np.random.Generator, load: float = 1.0) -> Iterator[float]:
        """Inter-arrival gaps in seconds, with every rate multiplied by `load`."""
        rate = self.rate_rps * load
        if self.arrival == "constant":
            return ap.constant_gaps(rate, rng)
        if self.arrival == "poisson":
            return ap.poisson_gaps(rate, rng)
        if self.arrival == "gamma":
            return ap.gamma_gaps(rate, self.cv, rng)
        rs = self.mmpp_rates_rps or []
        mean = sum(rs) / len(rs)
        return ap.mmpp_gaps([r * rate / mean for r in rs], self.mmpp_dwell_s, rng)


class Target(NamedTuple):
    """Where one arrival goes: a workflow, an optional per-request SLO override (ms), and the tenant of the
    stream or trace it comes from."""

    workflow: str
    slo_ms: float | None
    tenant: str = "default"


# NOTE: traces draw from seeds far from the streams' (seed + 31 * (TRACE_SEED_BASE + j)), so adding a
# stream never changes a trace's arrivals, and the other way round.
TRACE_SEED_BASE = 10_000


class WorkloadSpec(Spec):
    """Streams of invocations and replayed traces."""

    streams: list[StreamSpec] = Field(default_factory=list, description="synthetic streams")
    traces: list[TraceSpec] = Field(default_factory=list, description="replayed traces, mapped onto workflows")

    @model_validator(mode="after")
    def _nonempty(self) -> "WorkloadSpec":
        if not self.streams and not self.traces:
            raise ValueError("streams: give at least one stream (or a trace under traces)")
        return self

    def targets(self) -> list[Target]:
        """What `arrivals()` indexes: one per stream, then one per workflow of each trace, in order."""
        out = [Target(s.workflow, s.slo_ms, s.tenant) for s in self.streams]
        for tr in self.traces:
            out.extend(Target(w, tr.slo_ms, tr.tenant) for w in tr.workflows)
        return out

    def check_load(self, load: float, flag: str) -> None:
        """SpecError (naming `flag`) when a trace cannot be replayed at `load` (`TraceSpec.check_load`).
        Who calls it: `gpufaas sim` and `gpufaas results`, for every load of a sweep before the first run."""
        for tr in self.traces:
            tr.check_load(load, flag)

    def workflow_names(self) -> set[str]:
        """Every workflow this workload invokes."""
        return {t.workflow for t in self.targets()}

    def mean_rates_rps(self, load: float = 1.0, duration_s: float | None = None,
                       keep: frozenset[int] | None = None) -> dict[str, float]:
        """Offered mean rate per workflow (streams and traces of one workflow add up); a trace's rate is
        its mean over the first `duration_s` run seconds (default: all of it). `keep`: only these target
        indices (see `arrivals`)."""
        out: dict[str, float] = {}
        for i, s in enumerate(self.streams):
            if keep is None or i in keep:
                out[s.workflow] = out.get(s.workflow, 0.0) + s.rate_rps * load
        i = len(self.streams)
        for tr in self.traces:
            for w, r in zip(tr.workflows, tr.mean_rates_rps(load, duration_s)):
                if keep is None or i in keep:
                    out[w] = out.get(w, 0.0) + r
                i += 1
        return out

    def resolved(self, base: Path | None, source: str) -> "WorkloadSpec":
        """A copy with every trace path made absolute and its file validated (one-line SpecError naming
        `source` and the trace otherwise). Called by the scenario loader and `gpufaas loadgen`."""
        if not self.traces:
            return self
        traces = [tr.resolved(base, f"{source}: workload.traces[{j}]") for j, tr in enumerate(self.traces)]
        return self.model_copy(update={"traces": traces})


def arrivals(workload: WorkloadSpec, seed: int, duration_s: float, load: float = 1.0,
             keep: frozenset[int] | None = None) -> Iterator[tuple[int, int]]:
    """Merged, time-ordered `(t_ns, target_index)` over all streams and traces, up to `duration_s`. Lazy.

    `target_index` indexes `workload.targets()` (for a workload of streams only: the stream's index).
    `keep`: only arrivals for these target indices (`gpufaas sim --tenants/--classes`); every stream and
    trace keeps its own seed, so a kept stream's arrivals are the same as in the whole run."""
    if keep is not None:
        yield from ((t, i) for t, i in arrivals(workload, seed, duration_s, load) if i in keep)
        return
    end_all_ns = int(duration_s * NS_PER_S)
    heap: list[tuple[int, int, Iterator[float], int]] = []
    for i, s in enumerate(workload.streams):
        rng = np.random.default_rng(ap.stream_seed(seed, i))
        gaps = s.gaps(rng, load)
        start_ns = int(s.start_s * NS_PER_S)
        end_ns = end_all_ns if s.duration_s is None else min(end_all_ns, start_ns + int(s.duration_s * NS_PER_S))
        t = start_ns + int(next(gaps) * NS_PER_S)
        if t < end_ns:
            heap.append((t, i, gaps, end_ns))
    if workload.traces:
        # NOTE: traces already yield (t_ns, target) in order; the streams' gap heap stays the hot path of
        # stream-only workloads, and heapq.merge joins the two ordered sequences.
        sources: list[Iterator[tuple[int, int]]] = [_merge_streams(heap)] if heap else []
        offset = len(workload.streams)
        for j, tr in enumerate(workload.traces):
            rng = np.random.default_rng(ap.stream_seed(seed, TRACE_SEED_BASE + j))
            sources.append(tr.arrivals(rng, end_all_ns, offset, load))
            offset += len(tr.workflows)
        yield from heapq.merge(*sources)
        return
    if len(heap) == 1:
        # NOTE: one stream (the SimFaaS workload, any one-stream scenario): no heap to keep, one generator
        # level less per arrival (about 4% of `gpufaas bench sim`'s per-request time)
        t, i, gaps, end_ns = heap[0]
        while t < end_ns:
            yield t, i
            t += max(1, int(next(gaps) * NS_PER_S))
        return
    yield from _merge_streams(heap)


def _merge_streams(heap: list[tuple[int, int, Iterator[float], int]]) -> Iterator[tuple[int, int]]:
    heapq.heapify(heap)
    while heap:
        t, i, gaps, end_ns = heap[0]
        yield t, i
        nt = t + max(1, int(next(gaps) * NS_PER_S))
        if nt < end_ns:
            heapq.heapreplace(heap, (nt, i, gaps, end_ns))
        else:
            heapq.heappop(heap)
