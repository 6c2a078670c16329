"""The oracle residency bound (`loadgen/residency_bound.py`): idle gaps measured beside the shipped sim model,
no saving where every gap is shorter than a cold start, most of the allocation where arrivals are sparse."""

from __future__ import annotations

from gpufaas.loadgen.residency_bound import main, residency_bound
from gpufaas.loadgen.scenario import load_scenario
from tests.conftest import SCENARIOS


def _chain(seconds: float):
    return load_scenario(SCENARIOS / "chain.yaml").model_copy(update={"duration_s": seconds})


def test_busy_traffic_leaves_nothing_to_release_and_the_books_add_up():
    b = residency_bound(_chain(10.0))
    assert b["idle_gaps"] > 100 and b["gpu_seconds_releasable"] == 0.0 and b["max_cut"] == 0.0
    # every allocated second of an instance is a cold start, a batch or an idle gap
    assert b["gpu_seconds_idle"] + b["gpu_seconds_busy"] <= b["gpu_seconds_allocated"] + 1e-6
    assert b["gpu_seconds_idle"] > b["gpu_seconds_busy"] * 0.1


def test_sparse_arrivals_leave_most_of_the_allocation_releasable():
    # chain's 200 rps x 0.0005 = one arrival every ~10 s, far apart against a cold start of about 3 s
    b = residency_bound(_chain(120.0), load=0.0005)
    assert b["max_cut"] > 0.3, b
    assert b["gpu_seconds_releasable"] < b["gpu_seconds_idle"]


def test_bad_scenario_is_a_usage_error():
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["no-such-scenario"])
    assert res.exit_code == 2 and "no scenario 'no-such-scenario'" in res.output
