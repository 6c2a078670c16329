"""Prometheus metrics: fed by a real simulated controller run (chain scenario, esg, sim backend), the
exposition follows the naming conventions, keeps the `workflow` label, and its shed, decision-time and
cost figures are the controller's accounting."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpufaas.gateway.metrics import Metrics
from gpufaas.loadgen.scenario import load_scenario
from gpufaas.loadgen.simdriver import build_controller, build_policy
from gpufaas.platform.clock import NS_PER_MS, NS_PER_S, VirtualClock
from gpufaas.platform.decisions import Decisions, Stop
from tests.conftest import SCENARIOS

WF = "image-classify"
# non-base units and unit-less percentages that the conventions rule out
_BAD_UNIT_WORDS = {"ms", "us", "ns", "millis", "milliseconds", "microseconds", "nanoseconds", "minutes", "hours",
                   "percent", "pct", "kb", "mb", "gb", "kilobytes", "megabytes"}
WORKFLOW_LABELLED = ("gpufaas_invocations", "gpufaas_slo_hits", "gpufaas_invocation_latency_seconds", "gpufaas_invocations_shed")


def _scrape(m: Metrics) -> dict:
    """family name -> family, prometheus_client's own `_created` series left out."""
    return {f.name: f for f in text_string_to_metric_families(m.render().decode()) if not f.name.endswith("_created")}


def _value(fams: dict, name: str, sample: str | None = None, **labels: str) -> float:
    want = sample or name
    got = [s.value for s in fams[name].samples if s.name == want and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (name, sample, labels, fams[name].samples)
    return got[0]


@pytest.fixture(scope="module")
def run():
    """A 6 s esg run of the chain scenario with the gateway's hooks attached; scraped mid-run (instances
    live) and at the end (after a timeout, a failure, a refused decision and shutdown). Every 10th
    invocation has a 2 ms SLO that esg rejects."""
    sc = load_scenario(SCENARIOS / "chain.yaml")
    clock = VirtualClock()
    ctl = build_controller(sc, build_policy(sc, "esg"), clock)
    m = Metrics()
    m.watch(ctl)
    ctl.on_instance_event = m.instance_event

    def done(inv):
        m.invocation_done(inv.workflow.name, inv.status.name.lower(), (inv.finish_ns - inv.arrival_ns) / NS_PER_S, inv.slo_met)

    for i in range(300):
        clock.call_at(i * 20 * NS_PER_MS, lambda i=i: ctl.submit(WF, slo_ms=2 if i % 10 == 0 else None, on_done=done))
    clock.run(until_ns=3 * NS_PER_S)
    mid = _scrape(m), ctl.acct.cost(ctl.instances.values(), clock.now_ns()), len(ctl.instances)
    clock.run(until_ns=6 * NS_PER_S + 500 * NS_PER_MS)
    late = [ctl.submit(WF, on_done=done) for _ in range(3)]
    ctl.fail_invocation(late[0], "payload lost")
    ctl.timeout_pending(clock.now_ns() + 1)
    ctl.apply(Decisions(actions=(Stop(10**9),)))  # refused: no such instance
    ctl.shutdown()
    return ctl, m, mid, _scrape(m)


def test_names_follow_the_prometheus_conventions(run):
    ctl, m, (mid, _, _), end = run
    assert all(f.samples for f in end.values()), [n for n, f in end.items() if not f.samples]
    for fams in (mid, end):
        assert {"gpufaas_invocations", "gpufaas_invocations_shed", "gpufaas_scheduling_decision_seconds",
                "gpufaas_cost_allocated_usd", "gpufaas_cost_busy_usd", "gpufaas_gpu_share_in_use_ratio",
                "gpufaas_cold_starts", "gpufaas_invocation_latency_seconds"} <= set(fams)
        for name, f in fams.items():
            assert re.fullmatch(r"gpufaas_[a-z0-9]+(_[a-z0-9]+)*", name), name
            words = name.split("_")
            assert not _BAD_UNIT_WORDS & set(words), f"{name}: use base units (seconds, ratio 0-1)"
            assert words[-1] not in ("total", "count", "sum", "bucket"), f"{name}: a reserved suffix on a {f.type}"
            if f.type == "counter":
                assert all(s.name == name + "_total" for s in f.samples), name
            if f.type == "histogram" and re.search(r"\b(time|latency)\b", f.documentation, re.I):
                assert name.endswith("_seconds"), name
            if re.search(r"\bfraction\b", f.documentation, re.I):
                assert name.endswith("_ratio"), name
            if name.endswith("_ratio"):
                assert all(0.0 <= s.value <= 1.0 for s in f.samples), name
            if "cost" in f.documentation.lower():
                assert name.endswith("_usd") and f.type == "counter", name
            if name in WORKFLOW_LABELLED:
                assert all(s.labels.get("workflow") == WF for s in f.samples), name


def test_cost_counters_are_the_controllers_accounting(run):
    ctl, m, (mid, mid_cost, live), end = run
    assert live > 0  # instances were live at the mid-run scrape: their lifetime so far is in the counter
    assert _value(mid, "gpufaas_cost_allocated_usd", "gpufaas_cost_allocated_usd_total") == mid_cost.allocated_usd > 0
    assert _value(mid, "gpufaas_cost_busy_usd", "gpufaas_cost_busy_usd_total") == mid_cost.busy_usd > 0
    assert _value(mid, "gpufaas_gpu_allocated_seconds", "gpufaas_gpu_allocated_seconds_total") == mid_cost.allocated_gpu_s
    acct = ctl.acct
    assert not ctl.instances
    assert _value(end, "gpufaas_cost_allocated_usd", "gpufaas_cost_allocated_usd_total") == acct.allocated_usd > mid_cost.allocated_usd
    assert _value(end, "gpufaas_cost_busy_usd", "gpufaas_cost_busy_usd_total") == acct.busy_usd
    assert _value(end, "gpufaas_gpu_busy_seconds", "gpufaas_gpu_busy_seconds_total") == acct.busy_unit_ns / NS_PER_S
    rep = ctl.report()["cost"]
    assert rep["allocated_usd"] == round(acct.allocated_usd, 6) and rep["busy_usd"] == round(acct.busy_usd, 6)


def test_shed_counter_is_the_accountings_by_workflow_and_reason(run):
    ctl, m, _, end = run
    acct = ctl.acct
    assert acct.rejected > 0 and acct.failed == 1 and acct.timed_out >= 2
    assert _value(end, "gpufaas_refused_decisions", "gpufaas_refused_decisions_total", reason="stop") == acct.refusal_reasons["stop"] == 1
    for reason, total in (("rejected", acct.rejected), ("failed", acct.failed), ("timed_out", acct.timed_out)):
        shed = _value(end, "gpufaas_invocations_shed", "gpufaas_invocations_shed_total", workflow=WF, reason=reason)
        assert shed == total == acct.shed_by_workflow[(WF, reason)]
        # the gateway's own per-invocation count agrees
        assert _value(end, "gpufaas_invocations", "gpufaas_invocations_total", workflow=WF, status=reason) == total


def test_decision_time_histogram_is_the_controllers(run):
    ctl, m, _, end = run
    h = ctl.acct.decision_us
    fam = end["gpufaas_scheduling_decision_seconds"]
    buckets = [(float(s.labels["le"]), s.value) for s in fam.samples if s.name.endswith("_bucket")]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), h.n) and h.n > 100
    assert _value(end, "gpufaas_scheduling_decision_seconds", "gpufaas_scheduling_decision_seconds_count") == h.n
    assert _value(end, "gpufaas_scheduling_decision_seconds", "gpufaas_scheduling_decision_seconds_sum") == pytest.approx(h.total / 1e6)
    assert 0 < counts[-2]  # some pass took under the largest finite bound (1 s)


def test_without_a_controller_the_families_are_declared_and_empty():
    fams = _scrape(Metrics())
    assert "gpufaas_cost_allocated_usd" in fams and not fams["gpufaas_cost_allocated_usd"].samples
