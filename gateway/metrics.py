"""Prometheus metrics of one gateway, in a per-app `CollectorRegistry` (two apps in one process never clash).

Who calls it: the invoke routes (`invocation_done`), the controller's `on_instance_event` hook (cold
starts), the gateway's start (`watch`, once the controller exists) and `/metrics` (`render`).

Names follow https://prometheus.io/docs/practices/naming/: base units (`_seconds`, USD as `_usd`),
fractions 0-1 as `_ratio`, counters `_total` (prometheus_client adds it to a counter family's name):

    gpufaas_invocations_total{tenant,workflow,status}       invocations that ended (gateway, hot path)
    gpufaas_slo_hits_total{tenant,workflow}                 of those, completed within their SLO
    gpufaas_invocation_latency_seconds{tenant,workflow}     histogram of end-to-end latency (completed)
    gpufaas_cold_starts_total{tenant,function}              instances started (on_instance_event hook)
    gpufaas_invocations_shed_total{tenant,workflow,reason}  ended without completing: rejected | timed_out | failed
    gpufaas_refused_decisions_total{reason}             policy decisions the controller refused
    gpufaas_scheduling_decision_seconds                 histogram of the policy's pass time
    gpufaas_cost_allocated_usd_total                    allocated cost (instance lifetimes, live ones to now)
    gpufaas_cost_busy_usd_total                         busy cost (batch executions)
    gpufaas_gpu_allocated_seconds_total                 share-weighted GPU-seconds allocated
    gpufaas_gpu_busy_seconds_total                      share-weighted GPU-seconds busy
    gpufaas_gpu_share_in_use_ratio{gpu,node}            fraction of each GPU allocated to instances
    gpufaas_instances{tenant,function}                  live instances
    gpufaas_queued_jobs                                 jobs waiting in AFW queues
    gpufaas_event_loop_lag_seconds                      the event loop's worst lateness over the last 1-2 s (LoopLag)

The shed, refused, decision-time, cost, share, instance and queue figures are read from the controller
and its `Accounting` at scrape time (`ControllerCollector`): no hook on the hot path, and the cost is the
accounting's own formula (`Accounting.cost`), never recomputed here. Workflow and function labels are the
tenant's own names, beside a `tenant` label (`gateway.tenants`: the controller holds `tenant/name`).
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Iterable, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from gpufaas.gateway.tenants import short, tenant_of

if TYPE_CHECKING:
    from gpufaas.platform.controller import Controller
    from gpufaas.platform.runtime import Instance

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
# a policy pass takes microseconds (batch1-wholegpu) to tens of milliseconds (esg on a large cluster)
DECISION_BUCKETS_S = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

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
        # controller workflow name -> its figures; insertion order = the order label children appear in
        self.stats: dict[str, _WorkflowStats] = {}

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily("gpufaas_invocations", "", labels=["tenant", "workflow", "status"]),
                CounterMetricFamily("gpufaas_slo_hits", "", labels=["tenant", "workflow"]),
                HistogramMetricFamily("gpufaas_invocation_latency_seconds", "", labels=["tenant", "workflow"])]

    def collect(self) -> Iterable[Metric]:
        inv = CounterMetricFamily("gpufaas_invocations", "Invocations that ended, by tenant, workflow and status",
                                  labels=["tenant", "workflow", "status"])
        hits = CounterMetricFamily("gpufaas_slo_hits", "Invocations that completed within their SLO", labels=["tenant", "workflow"])
        lat = HistogramMetricFamily("gpufaas_invocation_latency_seconds", "End-to-end latency of completed invocations",
                                    labels=["tenant", "workflow"])
        les = [floatToGoString(b) for b in LATENCY_BUCKETS_S] + ["+Inf"]
        created_lat = []
        for q, st in self.stats.items():
            tw = [tenant_of(q), short(q)]
            for status, (n, created) in st.by_status.items():
                inv.add_metric(tw + [status], float(n), created if _USE_CREATED else None)
            if st.slo_hits:
                hits.add_metric(tw, float(st.slo_hits), st.slo_created if _USE_CREATED else None)
            if st.buckets is not None:
                acc = 0
                cum = []
                for le, c in zip(les, st.buckets):
                    acc += c
                    cum.append((le, float(acc)))
                lat.add_metric(tw, cum, st.lat_sum)
                created_lat.append(Sample(lat.name + "_created", {"tenant": tw[0], "workflow": tw[1]}, st.lat_created))
        if _USE_CREATED:
            lat.samples.extend(created_lat)
        return [inv, hits, lat]


class _Families(NamedTuple):
    """The controller's metric families, in the order `ControllerCollector.collect` fills them."""

    shed: CounterMetricFamily
    refused: CounterMetricFamily
    decision: HistogramMetricFamily
    alloc_usd: CounterMetricFamily
    busy_usd: CounterMetricFamily
    alloc_s: CounterMetricFamily
    busy_s: CounterMetricFamily
    share: GaugeMetricFamily
    instances: GaugeMetricFamily
    queued: GaugeMetricFamily


class ControllerCollector:
    """The controller's figures as metric families, read when the registry is collected (a scrape).

    Who calls it: prometheus_client's registry, through `Metrics.render`. Reads `ctl` and its `Accounting`,
    changes nothing. Before `ctl` is set it yields the families without samples."""

    def __init__(self, ctl: Controller | None = None) -> None:
        self.ctl = ctl

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> _Families:
        return _Families(
            CounterMetricFamily("gpufaas_invocations_shed", "Invocations that ended without completing, by tenant, workflow and "
                                "reason (rejected by the policy, timed out, failed)", labels=["tenant", "workflow", "reason"]),
            CounterMetricFamily("gpufaas_refused_decisions", "Policy decisions the controller refused, by kind", labels=["reason"]),
            HistogramMetricFamily("gpufaas_scheduling_decision_seconds", "Time of one policy pass (the scheduling decision)"),
            CounterMetricFamily("gpufaas_cost_allocated_usd", "Allocated cost: GPU share held by instances, incl. cold "
                                "start and keep-alive, live instances up to now"),
            CounterMetricFamily("gpufaas_cost_busy_usd", "Busy cost: GPU share while executing batches"),
            CounterMetricFamily("gpufaas_gpu_allocated_seconds", "Share-weighted GPU-seconds held by instances"),
            CounterMetricFamily("gpufaas_gpu_busy_seconds", "Share-weighted GPU-seconds executing batches"),
            GaugeMetricFamily("gpufaas_gpu_share_in_use_ratio", "Fraction of each GPU allocated to instances", labels=["gpu", "node"]),
            GaugeMetricFamily("gpufaas_instances", "Live instances, by tenant and function", labels=["tenant", "function"]),
            GaugeMetricFamily("gpufaas_queued_jobs", "Jobs waiting in AFW queues"),
        )

    def collect(self) -> Iterable[Metric]:
        fams = self._families()
        ctl = self.ctl
        if ctl is None:
            return fams
        shed, refused, decision, alloc_usd, busy_usd, alloc_s, busy_s, share, instances, queued = fams
        acct = ctl.acct
        for (wf, reason), n in acct.shed_by_workflow.items():
            shed.add_metric([tenant_of(wf), short(wf), reason], float(n))
        for reason, n in acct.refusal_reasons.items():
            refused.add_metric([reason], float(n))
        h = acct.decision_us  # NOTE: the controller's own log histogram (microseconds), rebinned at scrape time
        buckets = [(floatToGoString(b), float(h.count_le(b * 1e6))) for b in DECISION_BUCKETS_S]
        decision.add_metric([], buckets + [("+Inf", float(h.n))], h.total / 1e6)
        cost = acct.cost(ctl.instances.values(), ctl.clock.now_ns())
        alloc_usd.add_metric([], cost.allocated_usd)
        busy_usd.add_metric([], cost.busy_usd)
        alloc_s.add_metric([], cost.allocated_gpu_s)
        busy_s.add_metric([], cost.busy_gpu_s)
        for g in ctl.gpus:
            share.add_metric([str(g.id), g.node], (g.share_units - g.free_units) / g.share_units)
        for name, insts in ctl.instances_by_fn.items():
            instances.add_metric([tenant_of(name), short(name)], float(len(insts)))
        queued.add_metric([], float(len(ctl.jobs)))
        return fams


LAG_PROBE_NS = 100 * 1_000_000  # the probe's sleep: 10 wake-ups a second cost nothing measurable (bench gateway)
LAG_WINDOW_NS = 1_000_000_000  # the reported figure is the worst lateness over the current and previous window


class LoopLag:
    """How late the gateway's event loop runs: a task sleeps `LAG_PROBE_NS` again and again and records by how
    much each wake-up overshoots. A loop kept busy by handlers, a policy pass or a slow store wakes it late.

    Who calls it: the gateway's app context (`run`, a task for the app's life), `/healthz` and `/metrics`
    (`recent_s`). It changes only itself.
    NOTE: the worst of the current and the previous window, not a mean: an overloaded gateway shows as a few
    long stalls, which a mean over 10 probes hides; two windows so a read just after a window rolls over
    still covers a whole one."""

    def __init__(self) -> None:
        self._cur_ns = 0
        self._prev_ns = 0
        self._window_end_ns = 0

    def recent_s(self) -> float:
        """The worst wake-up lateness (s) over the last one to two seconds."""
        return max(self._cur_ns, self._prev_ns) / 1e9

    async def run(self) -> None:
        """Probe until cancelled."""
        from gpufaas.platform.clock import perf_ns

        self._window_end_ns = perf_ns() + LAG_WINDOW_NS
        while True:
            due_ns = perf_ns() + LAG_PROBE_NS
            await asyncio.sleep(LAG_PROBE_NS / 1e9)
            now_ns = perf_ns()
            if now_ns >= self._window_end_ns:
                self._prev_ns, self._cur_ns = self._cur_ns, 0
                self._window_end_ns = now_ns + LAG_WINDOW_NS
            self._cur_ns = max(self._cur_ns, now_ns - due_ns)


class Metrics:
    """The gateway's metrics (the module docstring lists them): the invocation figures the gateway reports
    on its hot path, cold starts from the controller's hook, and the controller's state read at scrape
    time once `watch` has been called."""

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
        self.cold_starts = Counter("gpufaas_cold_starts", "Instances started (each a cold start), by tenant and function",
                                   ["tenant", "function"], registry=r)
        self._ctl = ControllerCollector()
        r.register(self._ctl)
        self.loop_lag = LoopLag()
        Gauge("gpufaas_event_loop_lag_seconds", "The event loop's worst wake-up lateness over the last 1-2 s",
              registry=r).set_function(self.loop_lag.recent_s)

    def watch(self, ctl: Controller) -> None:
        """Read `ctl` at every scrape from now on. Called by the gateway once it has built its controller."""
        self._ctl.ctl = ctl

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

    def instance_event(self, event: str, inst: Instance) -> None:
        """The controller's `on_instance_event` hook: counts cold starts."""
        if event == "start":
            q = inst.function.name
            self.cold_starts.labels(tenant_of(q), short(q)).inc()

    def render(self) -> bytes:
        """The text exposition (the controller's figures once `watch` has been called)."""
        return generate_latest(self.registry)
