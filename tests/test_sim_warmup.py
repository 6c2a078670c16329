"""The warm-up cut: a scenario's `warmup_s` (default 10% of duration_s) is left out of the report.

Invocations that arrived before the cut are not counted, cold starts and batches that began before it
are not counted, and allocated/busy cost count only the part of each interval after it
(`Accounting.warmup_end_ns`, set by `run_scenario`; the controller's recording sites clip).
"""

from __future__ import annotations

import pytest

from gpufaas.loadgen.scenario import Scenario, load_scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.loadgen.workload import arrivals
from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.decisions import Decisions, Start
from gpufaas.platform.errors import SpecError
from tests.conftest import SCENARIOS
from tests.helpers import chain, controller, function
from tests.test_core_controller import Scripted

S = NS_PER_S


def _chain(duration_s: float = 10, **update) -> Scenario:
    return load_scenario(SCENARIOS / "chain.yaml").model_copy(update={"duration_s": duration_s, **update})


# ---------------------------------------------------------------- the scenario field


def test_warmup_defaults_to_a_tenth_of_the_duration_and_zero_is_allowed():
    assert _chain(10).effective_warmup_s() == pytest.approx(1.0)
    assert _chain(10, warmup_s=0.0).effective_warmup_s() == 0.0
    assert _chain(10, warmup_s=2.5).effective_warmup_s() == 2.5


@pytest.mark.parametrize("warmup_s, match", [
    (10, r"scenario\.yaml: warmup_s: 10 s is not shorter than duration_s \(10 s\); give a warm-up below the duration"),
    (12.5, r"warmup_s: 12\.5 s is not shorter than duration_s"),
    (-1, r"scenario\.yaml: warmup_s: .*greater than or equal to 0"),
])
def test_a_bad_warmup_is_a_one_line_error_naming_the_field(tmp_path, warmup_s, match):
    text = (SCENARIOS / "chain.yaml").read_text().replace("duration_s: 120", f"duration_s: 10\nwarmup_s: {warmup_s}")
    text = text.replace("clusters/", f"{SCENARIOS}/clusters/").replace("../../functions", f"{SCENARIOS}/../../functions")
    (tmp_path / "scenario.yaml").write_text(text)
    with pytest.raises(SpecError, match=match) as e:
        load_scenario(tmp_path / "scenario.yaml")
    assert "\n" not in str(e.value)


def test_run_scenario_rechecks_a_warmup_that_model_copy_made_too_long():
    """`model_copy(update=...)` skips validators: shortening duration_s below warmup_s fails before running."""
    sc = _chain(10, warmup_s=5.0).model_copy(update={"duration_s": 4.0})
    with pytest.raises(SpecError, match=r"scenario chain: warmup_s: 5 s is not shorter than duration_s \(4 s\)"):
        run_scenario(sc, "batch1-wholegpu")


# ---------------------------------------------------------------- the simulation report


def test_the_report_counts_exactly_the_arrivals_after_the_cut():
    sc = _chain(10)
    cut_ns = int(sc.effective_warmup_s() * S)
    times = [t for t, _ in arrivals(sc.workload, sc.seed, sc.duration_s, 1.0)]
    after = sum(1 for t in times if t >= cut_ns)
    assert 0 < after < len(times)  # the cut falls inside the arrivals, so the two runs must differ

    whole = run_scenario(sc.model_copy(update={"warmup_s": 0.0}), "batch1-wholegpu", check_invariants=True)
    cut = run_scenario(sc, "batch1-wholegpu", check_invariants=True)

    assert whole["warmup_s"] == 0.0 and cut["warmup_s"] == pytest.approx(1.0)
    assert whole["invocations"] == len(times)
    assert cut["invocations"] == after
    assert whole["invocations"] - cut["invocations"] == len(times) - after
    for r in (whole, cut):  # every counted invocation is counted as ended exactly once, per workflow too
        assert r["completed"] + r["failed"] + r["rejected"] + r["timed_out"] == r["invocations"]
        assert sum(w["invocations"] for w in r["per_workflow"].values()) == r["invocations"]
    # the same run (the cut only changes what is counted): less cost, fewer cold starts after the cut
    assert cut["sim_end_s"] == whole["sim_end_s"] and cut["events"] == whole["events"]
    assert cut["cost"]["gpu_seconds_allocated"] < whole["cost"]["gpu_seconds_allocated"]
    assert cut["cost"]["gpu_seconds_busy"] <= whole["cost"]["gpu_seconds_busy"]  # nothing runs before the cold starts end
    assert cut["cost"]["allocated_usd"] < whole["cost"]["allocated_usd"]
    assert cut["cold_starts"] < whole["cold_starts"]


# ---------------------------------------------------------------- exact clipping on a hand-built controller


def _clip_ns(start_ns: int, end_ns: int, cut_ns: int) -> int:
    return max(0, end_ns - max(start_ns, cut_ns))


@pytest.mark.parametrize("cut_s", [0.0, 0.75, 1.0, 2.0, 2.6, 4.0])
def test_cost_counts_and_latency_are_clipped_exactly_at_the_cut(cut_s):
    """Two invocations on the fake backend, each on its own new 5-unit instance of one A100 (10 units):

    inv 1 arrives 0 s; inst 1 starts 0 s, ready 0.5 s, batch 0.5..1.5 s
    inv 2 arrives 2 s; inst 2 starts 2 s, ready 2.5 s, batch 2.5..2.75 s; both instances stop at 3 s
    """
    ctl = None
    start_for_queued = lambda v: Decisions(tuple(Start("f", 0, 5, 1, (j,)) for j in list(ctl.jobs)))  # noqa: E731
    ctl, clock, fake = controller(Scripted([start_for_queued, start_for_queued]), gpus=1, fake=True,
                                  functions=[function("f")], workflows=[chain("w", ["f"], slo_ms=2000)])
    cut = int(cut_s * S)
    ctl.acct.warmup_end_ns = cut
    at = lambda t_s, fn, *a: clock.call_at(int(t_s * S), fn, *a)  # noqa: E731
    at(0.0, ctl.submit, "w")
    at(0.5, lambda: fake.ready(fake.started[0]))
    at(1.5, lambda: fake.finish(fake.submitted[0]))
    at(2.0, ctl.submit, "w")
    at(2.5, lambda: fake.ready(fake.started[1]))
    at(2.75, lambda: fake.finish(fake.submitted[1]))
    at(3.0, ctl.shutdown)
    clock.run()
    assert len(fake.started) == 2 and len(fake.submitted) == 2 and not ctl.inflight

    ns = lambda t_s: int(t_s * S)  # noqa: E731
    lives = [(ns(0), ns(3)), (ns(2), ns(3))]
    execs = [(ns(0.5), ns(1.5)), (ns(2.5), ns(2.75))]
    arrivals_s, latencies_ms = [0.0, 2.0], [1500.0, 750.0]
    alloc_ns = sum(_clip_ns(a, b, cut) for a, b in lives)
    busy_ns = sum(_clip_ns(a, b, cut) for a, b in execs)
    gpu = ctl.gpus[0]
    acct = ctl.acct
    assert acct.allocated_unit_ns == pytest.approx(alloc_ns * 5 / 10, rel=1e-12, abs=1e-6)
    assert acct.busy_unit_ns == pytest.approx(busy_ns * 5 / 10, rel=1e-12, abs=1e-6)
    assert acct.allocated_usd == pytest.approx(alloc_ns * 5 * gpu.usd_per_unit_ns, rel=1e-12, abs=1e-15)
    assert acct.busy_usd == pytest.approx(busy_ns * 5 * gpu.usd_per_unit_ns, rel=1e-12, abs=1e-15)
    counted = [i for i, t in enumerate(arrivals_s) if ns(t) >= cut]
    assert acct.invocations == acct.completed == acct.slo_hits == len(counted)
    assert acct.cold_starts == sum(1 for a, _ in lives if a >= cut)
    assert acct.batches == acct.batched_jobs == sum(1 for a, _ in execs if a >= cut)
    assert acct.latency_ms.n == len(counted)
    assert acct.latency_ms.total == pytest.approx(sum(latencies_ms[i] for i in counted))

    r = acct.report()
    assert r["warmup_s"] == cut_s
    assert r["cost"]["gpu_seconds_allocated"] == round(alloc_ns * 0.5 / S, 3)
    assert r["per_workflow"] == ({"w": {"invocations": len(counted), "slo_hit_rate": 1.0}} if counted else {})


def test_the_default_cut_is_zero_so_the_live_gateway_counts_everything():
    from gpufaas.platform.accounting import Accounting

    assert Accounting().warmup_end_ns == 0
    assert Accounting().report()["warmup_s"] == 0.0
