"""The residency policies' own rules: when the histogram is representative and pre-warms, in which
order cost-aware and histogram offer idle instances for eviction, a function evicted is not started again by the
scheduling policy before its next arrival, and no GPU is ever over-committed at any instance event."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufaas.platform.residency.policies import CostAware, Histogram
from gpufaas.platform.residency.registry import make_residency
from gpufaas.platform.runtime import InstanceState
from tests.helpers import chain, controller, function
from tests.test_residency_controller import STARTS, StartQueued, _replay

S = 1_000_000_000


def _fn(name="f"):
    return controller(StartQueued(), gpus=1, functions=[function(name)], workflows=[chain("w", [name])])[0].functions[name]


def test_spread_gaps_need_min_samples_but_a_timer_does_not():
    pol, f = Histogram(), _fn()
    t = 0
    for gap_s in (5, 40, 12, 70):  # spread wider than a cold start: not representative on 3 gaps
        t += gap_s * S
        pol.observe_arrival(f, t)
    assert pol.windows_ns(f) is None and pol.keeps_warm(f, t + S)
    timer, g = Histogram(), _fn("g")
    for k in range(3):
        timer.observe_arrival(g, k * 75 * S)
    head, tail = timer.windows_ns(g)
    assert head == int(0.9 * 75 * S) and tail == int(1.1 * 75 * S)
    # it pre-warms (head > 2 cold starts): released on purpose, the scheduling policy leaves it to the pre-warm
    assert not timer.keeps_warm(g, 2 * 75 * S + S)
    assert timer.prewarm_at_ns(g, 2 * 75 * S + S) == 2 * 75 * S + head - 3_150_000_000


def _idle(ctl, fname):
    return next(i for i in ctl.instances.values() if i.function.name == fname and i.state == InstanceState.IDLE)


def test_cost_aware_offers_every_idle_instance_lowest_priority_first():
    ctl, clock, _ = controller(StartQueued(units=5), gpus=1, residency=CostAware(),
                               functions=[function(n, keep_alive_s=60) for n in ("hot", "rare", "new")],
                               workflows=[chain(f"w{n}", [n]) for n in ("hot", "rare", "new")])
    pol = ctl.residency
    for k in range(20):
        ctl.submit("whot")
        clock.run(until_ns=(k + 1) * S // 2)
    ctl.submit("wrare")
    clock.run(until_ns=20 * S)
    hot, rare = _idle(ctl, "hot"), _idle(ctl, "rare")
    new = ctl.functions["new"]
    # FaasCache admits every function: a requester never seen still gets room, the rare one (one arrival)
    # going before the hot one (20 arrivals), whatever order they are offered in
    assert pol.victims([hot, rare], new, clock.now_ns()) == [rare, hot]
    assert pol.victims([rare, hot], None, clock.now_ns()) == [rare, hot]
    assert pol.priority(rare, clock.now_ns()) < pol.priority(hot, clock.now_ns())


def test_histogram_offers_the_furthest_predicted_next_arrival_first():
    ctl, clock, _ = controller(StartQueued(units=5), gpus=1, residency=Histogram(),
                               functions=[function(n, keep_alive_s=60) for n in ("due", "gone")],
                               workflows=[chain(f"w{n}", [n]) for n in ("due", "gone")])
    for k in range(3):  # spread gaps (not representative): the fixed keep-alive, next arrival ~ mean gap
        ctl.submit("wdue")
        clock.run(until_ns=(k + 1) * 9 * S + k * S)
    ctl.submit("wgone")  # seen once: its next arrival is unknown
    clock.run(until_ns=40 * S)
    due, gone = _idle(ctl, "due"), _idle(ctl, "gone")
    # `gone`, seen once, has no predicted next arrival: it goes first; `due` (back within its keep-alive) is
    # still offered, after it: a request has to be served
    assert ctl.residency.victims([due, gone], None, clock.now_ns()) == [gone, due]


def test_an_evicted_function_is_not_kept_warm_until_its_next_arrival():
    ctl, clock, _ = controller(StartQueued(), gpus=1, residency=make_residency("lru"),
                               functions=[function(n, keep_alive_s=60) for n in ("f", "g")],
                               workflows=[chain(f"w{n}", [n]) for n in ("f", "g")])
    ctl.submit("wf")
    clock.run(until_ns=10 * S)
    ctl.submit("wg")
    clock.run(until_ns=10 * S + 1)
    assert ctl.acct.evictions == 1 and not ctl.view.keeps_warm("f") and ctl.view.keeps_warm("g")
    ctl.submit("wf")
    assert ctl.view.keeps_warm("f")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(starts=STARTS, residency=st.sampled_from(["fixed", "lru", "cost-aware", "histogram"]))
def test_no_instance_event_ever_over_commits(starts, residency):
    """Jobs of three memory-heavy functions at random times under the StartQueued policy and every residency
    policy: the books are checked at every start and stop (evictions and pre-warms included), not only
    between submissions."""
    events = []
    mem_heavy = [function(n, model="vit_b16", keep_alive_s=20) for n in ("f", "g", "h")]
    ctl, clock, _ = controller(StartQueued(units=4), gpus=2, residency=make_residency(residency), functions=mem_heavy,
                               workflows=[chain(f"w{n}", [n]) for n in ("f", "g", "h")])

    def check(kind, inst):
        events.append(kind)
        ctl.check_invariants()
    ctl.on_instance_event = check
    _replay(ctl, clock, starts, tail_ns=30 * S)
    ctl.check_invariants()
    assert "start" in events
