"""The `Workload`: one description of offered load that drives both `gpufaas sim` and `gpufaas loadgen`.

A workload is a list of streams, each sending invocations of one workflow with an arrival process.
`arrivals(workload, seed, duration_s)` merges the streams into one time-ordered iterator of
`(t_ns, workflow)` without materialising it, so memory does not grow with the run's length.
"""

from __future__ import annotations

import heapq
from typing import Iterator, Literal

import numpy as np
from pydantic import Field, model_validator

from gpufaas.loadgen import arrivals as ap
from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.specs import Spec


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
    slo_ms: float | None = Field(None, gt=0, description="per-request SLO override (default: the workflow's)")

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


class WorkloadSpec(Spec):
    """Streams of invocations."""

    streams: list[StreamSpec] = Field(min_length=1, description="the streams")

    def mean_rates_rps(self, load: float = 1.0) -> dict[str, float]:
        """Offered mean rate per workflow (streams of one workflow add up)."""
        out: dict[str, float] = {}
        for s in self.streams:
            out[s.workflow] = out.get(s.workflow, 0.0) + s.rate_rps * load
        return out


def arrivals(workload: WorkloadSpec, seed: int, duration_s: float, load: float = 1.0) -> Iterator[tuple[int, int]]:
    """Merged, time-ordered `(t_ns, stream_index)` over all streams, up to `duration_s`. Lazy."""
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
    heapq.heapify(heap)
    while heap:
        t, i, gaps, end_ns = heap[0]
        yield t, i
        nt = t + max(1, int(next(gaps) * NS_PER_S))
        if nt < end_ns:
            heapq.heapreplace(heap, (nt, i, gaps, end_ns))
        else:
            heapq.heappop(heap)
