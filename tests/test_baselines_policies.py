"""Hand-built cases for the baselines `infless`, `fastgshare`, `static` and their shared pool machinery."""

from __future__ import annotations

import math

import pytest

from gpufaas.platform.clock import NS_PER_MS, NS_PER_S
from gpufaas.platform.decisions import Dispatch, Reject
from gpufaas.platform.policy.baselines import (Config, configs_for, fills_in_time, function_budgets_ns, function_rates_rps,
                                               planning_types)
from gpufaas.platform.policy.fastgshare import FastGSharePolicy
from gpufaas.platform.policy.infless import InflessPolicy
from gpufaas.platform.policy.registry import make_policy
from gpufaas.platform.policy.static import StaticPolicy
from tests.helpers import chain, controller, function

A100 = "A100-80GB"


def _chain_ctl(policy, slo_ms=100, gpus=2, fake=False):
    fns = [function("pre", model="preprocess"), function("res", model="resnet50")]
    return controller(policy, gpus=gpus, fake=fake, functions=fns, workflows=[chain("wf", ["pre", "res"], slo_ms=slo_ms)])


def test_registry_builds_every_baseline():
    for name, cls in (("infless", InflessPolicy), ("fastgshare", FastGSharePolicy), ("static", StaticPolicy)):
        assert isinstance(make_policy(name), cls)


def test_latency_split_is_proportional_and_fits_the_slo():
    ctl, _, _ = _chain_ctl(InflessPolicy())
    b = function_budgets_ns(ctl.view, planning_types(ctl.view), "latency")
    lat_pre = ctl.functions["pre"].latency_ns(A100, 1, 10, 10)
    lat_res = ctl.functions["res"].latency_ns(A100, 1, 10, 10)
    assert b["pre"] + b["res"] <= 100 * NS_PER_MS
    assert b["res"] / b["pre"] == pytest.approx(lat_res / lat_pre, rel=1e-3)
    even = function_budgets_ns(ctl.view, planning_types(ctl.view), "even")
    assert even["pre"] == even["res"] == 50 * NS_PER_MS


def test_fan_out_budget_counts_the_heaviest_path():
    fns = [function("a", model="preprocess"), function("b", model="resnet50"), function("c", model="aggregator")]
    from gpufaas.platform.specs import WorkflowSpec

    wf = WorkflowSpec.model_validate({"name": "dag", "slo_ms": 90, "stages": [
        {"name": "s0", "function": "a"}, {"name": "s1", "function": "b", "after": ["s0"]},
        {"name": "s2", "function": "c", "after": ["s0"]}, {"name": "s3", "function": "a", "after": ["s1", "s2"]}]})
    ctl, _, _ = controller(InflessPolicy(), functions=fns, workflows=[wf])
    b = function_budgets_ns(ctl.view, planning_types(ctl.view), "even")
    # every path has 3 stages: 30 ms each
    assert b == {"a": 30 * NS_PER_MS, "b": 30 * NS_PER_MS, "c": 30 * NS_PER_MS}


def test_fills_in_time_is_the_infless_lower_rate_bound():
    c = Config(batch=4, share_units=2, latency_ns=10 * NS_PER_MS, memory_mb=1)
    # 3 more items at 100 rps take 30 ms; + 10 ms execution = 40 ms
    assert fills_in_time(c, 100.0, 40 * NS_PER_MS)
    assert not fills_in_time(c, 100.0, 39 * NS_PER_MS)
    assert not fills_in_time(c, 0.0, 10 ** 12)
    assert fills_in_time(Config(1, 2, 5 * NS_PER_MS, 1), 0.0, 5 * NS_PER_MS)


def test_infless_picks_small_batches_at_low_rate_and_large_at_high_rate():
    ctl, _, _ = _chain_ctl(InflessPolicy())
    fn = ctl.functions["res"]
    limit = 70 * NS_PER_MS
    cfgs = configs_for(fn, A100, 10, limit)
    pol = InflessPolicy()
    low = pol.choose(cfgs, 5.0, limit)
    high = pol.choose(cfgs, 2000.0, limit)
    assert low.batch == 1 and low.share_units == min(fn.share_units[A100])
    assert high.batch > low.batch
    assert fills_in_time(high, 2000.0, limit)
    # nothing cheaper per served request among the feasible configs
    best = min(c.share_units / min(c.capacity_rps(0.8), 2000.0) for c in cfgs if fills_in_time(c, 2000.0, limit))
    assert high.share_units / min(high.capacity_rps(0.8), 2000.0) == pytest.approx(best)


def test_infless_non_uniform_scaling_covers_the_residual_only():
    pol = InflessPolicy()
    ctl, _, _ = _chain_ctl(pol)
    fn = ctl.functions["res"]
    cfgs = configs_for(fn, A100, 10, 70 * NS_PER_MS)
    plan = pol.greedy(cfgs, 1000.0, 70 * NS_PER_MS)
    caps = [c.capacity_rps(0.8) for c in plan]
    assert sum(caps) >= 1000.0
    assert sum(caps) - caps[-1] < 1000.0  # the last instance was needed
    assert len({(c.batch, c.share_units) for c in plan}) >= 1


def test_fastgshare_choice_maximises_throughput_per_share():
    ctl, _, _ = _chain_ctl(FastGSharePolicy())
    fn = ctl.functions["res"]
    limit = 60 * NS_PER_MS
    cfgs = configs_for(fn, A100, 10, limit)
    c = FastGSharePolicy().choose(cfgs)
    brute = max(b / (fn.latency_ns(A100, b, u, 10) * u) for u in fn.share_units[A100] for b in fn.batch_sizes
                if fn.latency_ns(A100, b, u, 10) <= limit)
    assert c.batch / (c.latency_ns * c.share_units) == pytest.approx(brute)
    assert c.latency_ns <= limit


def test_static_plan_is_the_fewest_share_units_for_the_rate():
    pol = StaticPolicy(rates_rps={"wf": 300.0})
    ctl, _, _ = _chain_ctl(pol)
    fn = ctl.functions["res"]
    limit = 70 * NS_PER_MS
    cfgs = configs_for(fn, A100, 10, limit)
    c, n = pol.plan_for(cfgs, 300.0, limit)
    assert n * c.capacity_rps(0.8) >= 300.0
    assert fills_in_time(c, 300.0, limit)
    brute = min(max(1, math.ceil(300.0 / x.capacity_rps(0.8))) * x.share_units for x in cfgs if fills_in_time(x, 300.0, limit))
    assert n * c.share_units == brute
    assert function_rates_rps(ctl.view, {"wf": 300.0}) == {"pre": 300.0, "res": 300.0}


def test_static_without_rates_is_a_user_error():
    from gpufaas.platform.errors import UserError

    ctl, clock, _ = _chain_ctl(StaticPolicy())
    with pytest.raises(UserError, match="static"):
        ctl.submit("wf")
        clock.run(until_ns=NS_PER_S)


def _run(ctl, clock, rate_rps: float, seconds: float):
    gap = int(NS_PER_S / rate_rps)
    n = int(seconds * rate_rps)
    for k in range(n):
        clock.call_at_fast(k * gap, ctl.submit, "wf")
    clock.run(until_ns=int(seconds * NS_PER_S) + 2 * NS_PER_S)
    ctl.check_invariants()


@pytest.mark.parametrize("name", ["infless", "fastgshare", "static"])
def test_baseline_serves_a_steady_chain_purely(name):
    pol = make_policy(name)
    if name == "static":
        pol.tune(scenario=None, rates_rps={"wf": 200.0})
    ctl, clock, _ = _chain_ctl(pol)  # check_purity=True: the policy never mutates through the view
    _run(ctl, clock, 200.0, 20.0)
    acct = ctl.acct
    assert acct.invocations == 4000
    assert acct.ended() == acct.invocations
    assert acct.refused_decisions == 0
    # after the cold start (~3.2 s) it keeps up: most invocations meet the 100 ms SLO
    assert acct.slo_hits / acct.invocations > 0.5
    assert acct.batched_jobs / acct.batches >= 1.0


def test_static_keeps_exactly_its_plan():
    pol = StaticPolicy(rates_rps={"wf": 200.0})
    ctl, clock, _ = _chain_ctl(pol)
    _run(ctl, clock, 200.0, 8.0)
    plan = ctl.state.plan
    for fname, (cfg, n) in plan.items():
        insts = ctl.instances_by_fn[fname]
        assert len(insts) == n
        assert all(i.max_batch == cfg.batch and i.share_units == cfg.share_units for i in insts)
    assert ctl.acct.cold_starts == sum(n for _, n in plan.values())


def test_batch_fill_waits_then_dispatches_at_the_timeout():
    pol = StaticPolicy(rates_rps={"wf": 2000.0})
    ctl, clock, backend = _chain_ctl(pol, fake=True)
    ctl.submit("wf")
    clock.run(until_ns=1)
    starts = list(backend.started)
    assert starts, "the plan starts instances on the first call"
    for inst in starts:
        backend.ready(inst)
    clock.run(until_ns=2)
    pre = [i for i in starts if i.function.name == "pre"]
    assert all(i.max_batch > 1 for i in pre)
    # one job, batch not full: nothing dispatched yet, a wake-up is set at the batch-fill timeout
    assert not backend.submitted
    decisions, _ = pol.schedule(ctl.view, clock.now_ns(), ctl.state)
    assert not any(isinstance(a, Dispatch) for a in decisions.actions)
    due = decisions.wake_at_ns
    assert due is not None and due > clock.now_ns()
    clock.run(until_ns=due)
    assert len(backend.submitted) == 1 and len(backend.submitted[0].jobs) == 1


def test_fastgshare_dispatches_at_once_without_waiting():
    pol = FastGSharePolicy()
    ctl, clock, backend = _chain_ctl(pol, fake=True)
    ctl.submit("wf")
    clock.run(until_ns=1)
    # the first invocation pre-warms every function of its workflow
    assert sorted(i.function.name for i in backend.started) == ["pre", "res"]
    backend.ready(next(i for i in backend.started if i.function.name == "pre"))
    clock.run(until_ns=2)
    assert len(backend.submitted) == 1  # a partial batch runs as soon as an instance is idle


def test_jobs_past_their_deadline_are_rejected():
    pol = FastGSharePolicy()
    ctl, clock, backend = _chain_ctl(pol, slo_ms=10, fake=True)
    ctl.submit("wf")
    clock.run(until_ns=1)
    # the cold start takes longer than the 10 ms SLO: the job is rejected once its deadline passes
    clock.run(until_ns=20 * NS_PER_MS)
    decisions, _ = pol.schedule(ctl.view, clock.now_ns(), ctl.state)
    assert ctl.acct.rejected == 1 or any(isinstance(a, Reject) for a in decisions.actions)


def test_idle_surplus_is_stopped_only_after_the_scale_down_delay():
    pol = FastGSharePolicy(scale_down_delay_s=2.0)
    ctl, clock, _ = _chain_ctl(pol)
    gap = NS_PER_S // 3000
    for k in range(6 * 3000):
        clock.call_at_fast(k * gap, ctl.submit, "wf")
    clock.run(until_ns=6 * NS_PER_S)
    peak = len(ctl.instances)
    assert peak > 2
    clock.run(until_ns=clock.now_ns() + 1 * NS_PER_S)
    assert len(ctl.instances) == peak  # load gone, but the delay has not passed
    clock.run(until_ns=clock.now_ns() + 4 * NS_PER_S)
    assert len(ctl.instances) < peak
