"""Prometheus metrics of one gateway, in a per-app `CollectorRegistry` (two apps in one process never clash).

Who calls it: the invoke routes (`invocation_done`), the controller's `on_instance_event` hook (cold
starts), and `/metrics` (`render`, which also refreshes the GPU-share gauges from the controller).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The gateway's counters, histograms and gauges."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.invocations = Counter("gpufaas_invocations", "Invocations that ended, by workflow and status", ["workflow", "status"], registry=r)
        self.slo_hits = Counter("gpufaas_slo_hits", "Invocations that completed within their SLO", ["workflow"], registry=r)
        self.latency = Histogram("gpufaas_invocation_latency_seconds", "End-to-end latency of completed invocations",
                                 ["workflow"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.cold_starts = Counter("gpufaas_cold_starts", "Instances started (each a cold start), by function", ["function"], registry=r)
        self.share_in_use = Gauge("gpufaas_gpu_share_in_use", "Fraction of each GPU allocated to instances", ["gpu", "node"], registry=r)
        self.instances = Gauge("gpufaas_instances", "Live instances, by function", ["function"], registry=r)
        self.queued = Gauge("gpufaas_queued_jobs", "Jobs waiting in AFW queues", registry=r)
        # NOTE: label children are cached per key: `.labels()` hashes and locks on every call, which shows on
        # the invoke hot path.
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric),) + labels
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def invocation_done(self, workflow: str, status: str, latency_s: float, slo_met: bool) -> None:
        """Count one ended invocation (called once per invocation by the gateway)."""
        self._child(self.invocations, workflow, status).inc()
        if status == "completed":
            self._child(self.latency, workflow).observe(latency_s)
        if slo_met:
            self._child(self.slo_hits, workflow).inc()

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
