"""Prometheus metrics of one gateway, in a per-app `CollectorRegistry` (two apps in one process never clash).

Who calls it: the invoke routes (`invocation_done`), the controller's `on_instance_event` hook (cold
starts), and `/metrics` (`render`, which also refreshes the GPU-share gauges from the controller).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)

# the same switch prometheus_client reads for its own metrics
_USE_CREATED = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


class _WorkflowStats:
    """The per-invocation figures of one workflow: plain numbers, turned into metric families at scrape time."""

    __slots__ = ("by_status", "slo_hits", "slo_created", "buckets", "lat_sum", "lat_created")

    def __init__(self) -> None:
        self.by_status: dict[str, list] = {}  # status -> [count, created]
        self.slo_hits = 0
        self.slo_created = 0.0
        self.buckets: list[int] | None = None  # per bucket (not cumulative), +Inf last; None until the first completion
        self.lat_sum = 0.0
        self.lat_created = 0.0


class _InvocationCollector:
    """`gpufaas_invocations`, `gpufaas_slo_hits` and `gpufaas_invocation_latency_seconds`, exposed exactly as
    prometheus_client's Counter and Histogram (labels, `_created` series, buckets) would expose them."""

    def __init__(self) -> None:
        self.stats: dict[str, _WorkflowStats] = {}  # insertion order = the order label children appear in

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily("gpufaas_invocations", "", labels=["workflow", "status"]),
                CounterMetricFamily("gpufaas_slo_hits", "", labels=["workflow"]),
                HistogramMetricFamily("gpufaas_invocation_latency_seconds", "", labels=["workflow"])]

    def collect(self) -> Iterable[Metric]:
        inv = CounterMetricFamily("gpufaas_invocations", "Invocations that ended, by workflow and status", labels=["workflow", "status"])
        hits = CounterMetricFamily("gpufaas_slo_hits", "Invocations that completed within their SLO", labels=["workflow"])
        lat = HistogramMetricFamily("gpufaas_invocation_latency_seconds", "End-to-end latency of completed invocations", labels=["workflow"])
        les = [floatToGoString(b) for b in LATENCY_BUCKETS_S] + ["+Inf"]
        created_lat = []
        for wf, st in self.stats.items():
            for status, (n, created) in st.by_status.items():
                inv.add_metric([wf, status], float(n), created if _USE_CREATED else None)
            if st.slo_hits:
                hits.add_metric([wf], float(st.slo_hits), st.slo_created if _USE_CREATED else None)
            if st.buckets is not None:
                acc = 0
                cum = []
                for le, c in zip(les, st.buckets):
                    acc += c
                    cum.append((le, float(acc)))
                lat.add_metric([wf], cum, st.lat_sum)
                created_lat.append(Sample(lat.name + "_created", {"workflow": wf}, st.lat_created))
        if _USE_CREATED:
            lat.samples.extend(created_lat)
        return [inv, hits, lat]


class Metrics:
    """The gateway's counters, histograms and gauges."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # NOTE: the three per-invocation metrics are plain numbers updated on the invoke hot path and turned
        # into metric families only when /metrics is scraped: prometheus_client's Counter.inc and
        # Histogram.observe take a lock and walk label children per call, which showed as ~8 us of the
        # gateway's ~230 us per request (issue #6). The exposition is unchanged.
        self._inv = _InvocationCollector()
        r.register(self._inv)
        self.cold_starts = Counter("gpufaas_cold_starts", "Instances started (each a cold start), by function", ["function"], registry=r)
        self.share_in_use = Gauge("gpufaas_gpu_share_in_use", "Fraction of each GPU allocated to instances", ["gpu", "node"], registry=r)
        self.instances = Gauge("gpufaas_instances", "Live instances, by function", ["function"], registry=r)
        self.queued = Gauge("gpufaas_queued_jobs", "Jobs waiting in AFW queues", registry=r)
        # NOTE: label children are cached per key: `.labels()` hashes and locks on every call.
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric),) + labels
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def invocation_done(self, workflow: str, status: str, latency_s: float, slo_met: bool) -> None:
        """Count one ended invocation (called once per invocation by the gateway)."""
        st = self._inv.stats.get(workflow)
        if st is None:
            st = self._inv.stats[workflow] = _WorkflowStats()
        c = st.by_status.get(status)
        if c is None:
            st.by_status[status] = [1, time.time()]
        else:
            c[0] += 1
        if status == "completed":
            b = st.buckets
            if b is None:
                b = st.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
                st.lat_created = time.time()
            b[bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1  # a value equal to a bound falls in that bucket (le)
            st.lat_sum += latency_s
        if slo_met:
            if not st.slo_hits:
                st.slo_created = time.time()
            st.slo_hits += 1

    def instance_event(self, event: str, inst: Any) -> None:
        """The controller's `on_instance_event` hook: counts cold starts."""
        if event == "start":
            self._child(self.cold_starts, inst.function.name).inc()

    def render(self, ctl: Any) -> bytes:
        """The text exposition, with the gauges refreshed from the controller first."""
        if ctl is not None:
            for g in ctl.gpus:
                self._child(self.share_in_use, str(g.id), g.node).set((g.share_units - g.free_units) / g.share_units)
            counts: dict[str, int] = {name: len(v) for name, v in ctl.instances_by_fn.items()}
            for name, n in counts.items():
                self._child(self.instances, name).set(n)
            self.queued.set(len(ctl.jobs))
        return generate_latest(self.registry)
