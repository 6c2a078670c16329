"""Accounting's workflow tallies: one per (workflow, tenant, class), summed per workflow, tenant and class
in the report; a batch shared by workflows splits its busy cost evenly over its jobs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpufaas.platform.accounting import Accounting, charge
from gpufaas.platform.clock import NS_PER_S


def _job(tally):
    return SimpleNamespace(inv=SimpleNamespace(workflow=SimpleNamespace(tally=tally)))


GPU = SimpleNamespace(share_units=10, usd_per_unit_ns=2e-12)


def test_a_tally_is_made_once_per_key_and_a_redeploy_counts_on():
    acct = Accounting()
    a = acct.tally("wf", "t1", "realtime")
    assert acct.tally("wf", "t1", "realtime") is a
    assert acct.tally("wf", "t2", "realtime") is not a


def test_a_mixed_batch_splits_busy_cost_over_its_jobs_and_the_report_sums_tallies():
    acct = Accounting()
    a = acct.tally("a", "t1", "realtime")
    b = acct.tally("b", "t2", "batch")
    acct.tally("c", "t3", "batch")  # deployed, never invoked: no row anywhere
    a.invocations, a.ended, a.slo_hits = 3, 3, 2
    b.invocations, b.ended, b.slo_hits, b.rejected = 1, 1, 0, 1
    dur_ns, units = 4 * NS_PER_S, 5
    acct.bill_busy(dur_ns, units, GPU, [_job(a), _job(a), _job(b)])  # type: ignore[list-item]
    gpu_ns, usd = charge(dur_ns, units, GPU)  # type: ignore[arg-type]
    assert a.busy_gpu_ns == pytest.approx(gpu_ns * 2 / 3)
    assert b.busy_usd == pytest.approx(usd / 3)
    assert acct.busy_unit_ns == pytest.approx(gpu_ns)

    r = acct.report()
    assert r["per_workflow"] == {"a": {"invocations": 3, "slo_hit_rate": round(2 / 3, 6)},
                                 "b": {"invocations": 1, "slo_hit_rate": 0.0}}
    assert set(r["per_tenant"]) == {"t1", "t2"}
    assert r["per_tenant"]["t2"]["rejected"] == 1
    assert r["per_tenant"]["t1"]["gpu_seconds_busy"] == round(gpu_ns * 2 / 3 / NS_PER_S, 3)
    assert r["per_class"] == {"batch": {"invocations": 1, "slo_hit_rate": 0.0, "gpu_seconds_busy": round(gpu_ns / 3 / NS_PER_S, 3)},
                              "realtime": {"invocations": 3, "slo_hit_rate": round(2 / 3, 6),
                                           "gpu_seconds_busy": round(gpu_ns * 2 / 3 / NS_PER_S, 3)}}


def test_one_workflow_under_two_tenants_is_one_row_per_workflow_and_two_per_tenant():
    acct = Accounting()
    x, y = acct.tally("wf", "t1", "realtime"), acct.tally("wf", "t2", "realtime")
    x.invocations = x.ended = x.slo_hits = 2
    y.invocations = y.ended = 2
    r = acct.report()
    assert r["per_workflow"] == {"wf": {"invocations": 4, "slo_hit_rate": 0.5}}
    assert {t: v["slo_hit_rate"] for t, v in r["per_tenant"].items()} == {"t1": 1.0, "t2": 0.0}
