"""The `esg` and `oracle` policies on the controller: placement, batching, safety, and against the floor."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gpufaas.loadgen.scenario import load_scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.platform.clock import NS_PER_MS, NS_PER_S
from gpufaas.platform.decisions import Decisions, Start
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import InstanceState
from gpufaas.platform.policy.esg import EsgPolicy, transfer_estimates_ns
from gpufaas.platform.policy.esg_plan import PoolTarget, capacity_needed_rps
from gpufaas.platform.policy.esg_rates import Load, beyond_chance, observe
from gpufaas.platform.policy.registry import make_policy
from tests.conftest import SCENARIOS
from tests.helpers import chain, controller, function


def test_registered_with_checked_parameters():
    assert make_policy("esg", epsilon=0.0).epsilon == 0.0
    assert make_policy("oracle").name == "oracle"
    with pytest.raises(UserError, match="policy 'esg': epsilon must be greater than or equal to 0"):
        make_policy("esg", epsilon=-1)
    with pytest.raises(UserError, match="policy 'esg': epsilon must be a finite number"):
        make_policy("esg", epsilon=float("inf"))
    with pytest.raises(UserError, match="unknown parameter 'nope'"):
        make_policy("esg", nope=1)
    with pytest.raises(UserError, match="host_gbps must be greater than or equal to 0"):
        make_policy("esg", host_gbps=-1)
    with pytest.raises(UserError, match="target_hit must be less than 1"):
        make_policy("esg", target_hit=1.0)
    assert make_policy("esg", host_gbps=0).host_gbps == 0.0 and make_policy("esg").host_gbps is None


def test_transfer_estimates_follow_output_size_and_bandwidth():
    # f's output per item: float16 3x224x224 = 301,056 bytes; at 100 Gbit/s that is 0.08 ns a byte
    image = {"image": {"dtype": "float16", "shape": [3, 224, 224]}}
    ctl, _, _ = controller(EsgPolicy(), functions=[function("f", "preprocess", outputs=image), function("g")],
                           workflows=[chain("w", ["f", "g"])])
    assert transfer_estimates_ns(ctl.view, ctl.workflows["w"], 8.0 / 100) == [0, int(301_056 * 0.08)]
    assert transfer_estimates_ns(ctl.view, ctl.workflows["w"], 0.0) == [0, 0]


def _warm_pair():  # noqa: D401
    """f -> g on 2 GPUs; g has one warm instance with 3 units on each GPU, f one on GPU 1."""
    ctl, clock, _ = controller(EsgPolicy(), gpus=2, functions=[function("f", "preprocess"), function("g", "resnet50")],
                               workflows=[chain("w", ["f", "g"], slo_ms=200)])
    ctl.apply(Decisions((Start("g", 0, 3, 32), Start("g", 1, 3, 32), Start("f", 1, 3, 32))))
    clock.run(until_ns=5 * NS_PER_S)
    return ctl, clock


def test_dispatch_prefers_warm_and_local_instances():
    ctl, clock = _warm_pair()
    g0, g1 = ctl.instances_by_fn["g"]
    assert (g0.gpu.id, g1.gpu.id) == (0, 1)
    inv = ctl.submit("w")
    clock.run(until_ns=6 * NS_PER_S)
    assert inv.slo_met
    # the job ran on warm instances (a pool may still start its planned configuration: consolidation)
    assert g1.batches_run == 1 and g0.batches_run == 0  # g ran where f's output was
    assert ctl.instances_by_fn["f"][0].batches_run == 1
    ctl.check_invariants()


def test_late_binding_never_queues_behind_an_instance():
    """Every batch goes to an idle instance: no job ever waits in a busy or starting instance's backlog."""
    ctl, clock = _warm_pair()
    t = clock.now_ns()
    for k in range(200):  # a burst far above what the warm instances take at once
        clock.call_at(t + (k // 20) * NS_PER_MS, lambda: ctl.submit("w"))
    seen_backlog = []
    for step in range(1, 400):
        clock.run(until_ns=t + step * NS_PER_MS)
        seen_backlog.extend(i.id for i in ctl.instances.values() if i.backlog)
    assert not seen_backlog
    ctl.check_invariants()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpus=st.integers(1, 3), slo_ms=st.sampled_from([60, 100, 200]), warm=st.integers(1, 3),
       gaps_ms=st.lists(st.integers(0, 6), min_size=40, max_size=160))
def test_property_no_job_waits_in_an_instance_backlog(gpus, slo_ms, warm, gaps_ms):
    """Whatever the arrivals, cluster size, SLO and warm instances: a job either waits in its AFW queue
    (where whichever instance frees first can take it) or runs; it is never committed to a busy or
    starting instance's backlog."""
    ctl, clock, _ = controller(EsgPolicy(), gpus=gpus, functions=[function("f", "preprocess"), function("g", "resnet50")],
                               workflows=[chain("w", ["f", "g"], slo_ms=slo_ms)])
    ctl.apply(Decisions(tuple(Start(fn, k % gpus, 2, 4) for k in range(warm) for fn in ("f", "g"))))
    clock.run(until_ns=5 * NS_PER_S)
    t = clock.now_ns()
    for gap in gaps_ms:
        t += gap * NS_PER_MS
        clock.call_at(t, lambda: ctl.submit("w"))
    end = t + 10 * NS_PER_S
    step = clock.now_ns()
    while step < end:
        step += NS_PER_MS
        clock.run(until_ns=step)
        assert not [i for i in ctl.instances.values() if i.backlog]
    ctl.check_invariants()
    assert not ctl.inflight  # every invocation ended


def test_first_invocation_on_idle_platform_runs_and_reports_the_miss():
    """No instance, a cold start longer than the SLO: the invocation still runs (on_deadline_miss: run)."""
    ctl, clock, _ = controller(EsgPolicy(), functions=[function("f", "preprocess"), function("g", "resnet50")],
                               workflows=[chain("w", ["f", "g"], slo_ms=100)])
    inv = ctl.submit("w")
    clock.run(until_ns=20 * NS_PER_S)
    assert inv.status.name == "COMPLETED" and not inv.slo_met


def test_on_deadline_miss_reject_rejects_what_cannot_make_it():
    wf = chain("w", ["f", "g"], slo_ms=100).model_copy(update={"on_deadline_miss": "reject"})
    ctl, clock, _ = controller(EsgPolicy(), functions=[function("f", "preprocess"), function("g", "resnet50")],
                               workflows=[wf])
    inv = ctl.submit("w")
    clock.run(until_ns=20 * NS_PER_S)
    assert inv.status.name == "REJECTED" and "deadline" in inv.reason


def test_capacity_needed_grows_with_rate_and_burstiness_and_shrinks_with_wait():
    c = capacity_needed_rps
    assert c(100, 1.0, 50 * NS_PER_MS, 0.005) > 100  # never below the rate
    assert c(100, 4.0, 50 * NS_PER_MS, 0.005) > c(100, 1.0, 50 * NS_PER_MS, 0.005)
    assert c(100, 1.0, 200 * NS_PER_MS, 0.005) < c(100, 1.0, 50 * NS_PER_MS, 0.005)
    assert c(200, 1.0, 50 * NS_PER_MS, 0.005) > c(100, 1.0, 50 * NS_PER_MS, 0.005)
    assert c(0, 1.0, 50 * NS_PER_MS, 0.005) == 0.0


def test_rate_and_dispersion_estimates_follow_the_counts():
    ld = Load(None, 0, 0)
    observe(ld, 0, NS_PER_S, 0.1, 1.0)  # nothing yet: no rate, not counted
    assert ld.rate_rps == 0 and ld.ticks == 0
    t, n = NS_PER_S, 0
    for k in range(200):  # a steady 100 rps: dispersion falls well below Poisson's 1
        t += 100 * NS_PER_MS
        n += 10
        observe(ld, n, t, 0.1, 1.0)
    assert abs(ld.rate_rps - 100) < 1 and ld.dispersion < 0.2
    for k in range(200):  # on-off: 20 then 0 per tick, same mean; dispersion well above 1
        t += 100 * NS_PER_MS
        n += 20 if k % 2 else 0
        observe(ld, n, t, 0.1, 1.0)
    assert 80 < ld.rate_rps < 120 and ld.dispersion > 5


def test_ticks_keep_to_a_grid_when_passes_run_late():
    """A live tick runs after its wake by however long the loop took to reach it; the next one is due a
    period after the last one was due, not after the pass ran, so live ticks count arrivals over the
    simulator's windows. A pass a whole period late (a stall) starts the grid again from itself."""
    pol = EsgPolicy()
    ctl, _, _ = controller(pol, functions=[function("f")], workflows=[chain("w", ["f"], slo_ms=100)])
    period = 25 * NS_PER_MS  # a quarter of the tightest SLO
    start = 3 * NS_PER_MS
    _, state = pol.schedule(ctl.view, start, pol.initial_state(ctl.view))  # the first tick starts the grid
    assert state["next_tick_ns"] == start + period
    for k, late_ns in enumerate((400_000, 0, 9 * NS_PER_MS, period - 1), start=1):
        due = start + k * period
        assert state["next_tick_ns"] == due
        _, state = pol.schedule(ctl.view, due + late_ns, state)
        assert state["next_tick_ns"] == due + period
    stalled = state["next_tick_ns"] + period + 1
    _, state = pol.schedule(ctl.view, stalled, state)
    assert state["next_tick_ns"] == stalled + period


def test_no_decision_over_commits_a_gpu_under_overload():
    # chain at 200 rps squeezed onto one GPU: every pass is checked for purity and invariants
    sc = load_scenario(SCENARIOS / "chain.yaml")
    one_gpu = sc.cluster.model_copy(update={"nodes": [sc.cluster.nodes[0].model_copy(update={"gpus": 1})]})
    sc = sc.model_copy(update={"duration_s": 8.0, "cluster": one_gpu})
    r = run_scenario(sc, "esg", check_purity=True, check_invariants=True)
    assert r["refused_decisions"] == 0
    assert r["completed"] > 0


@pytest.mark.parametrize("name", ["chain", "video"])
def test_esg_beats_batch1_wholegpu_on_slo_and_cost(name):
    sc = load_scenario(SCENARIOS / f"{name}.yaml").model_copy(update={"duration_s": 30.0})
    esg = run_scenario(sc, "esg", check_purity=True)
    base = run_scenario(sc, "batch1-wholegpu")
    assert esg["slo_hit_rate"] > base["slo_hit_rate"]
    assert esg["cost"]["allocated_usd"] < base["cost"]["allocated_usd"]
    assert esg["refused_decisions"] == 0


def test_oracle_policy_runs_the_same_platform():
    # NOTE: the chain's segments are single stages; the oracle on the video DAG's 4-stage segment is too
    # slow for a unit test (it is exhaustive on purpose)
    sc = load_scenario(SCENARIOS / "chain.yaml").model_copy(update={"duration_s": 6.0})
    r = run_scenario(sc, "oracle", check_purity=True, check_invariants=True)
    assert r["refused_decisions"] == 0 and r["completed"] > 0


def test_goodput_under_overload_does_not_collapse():
    """chain on one GPU: four times the load completes at least as many invocations in time as once."""
    sc = load_scenario(SCENARIOS / "chain.yaml")
    one_gpu = sc.cluster.model_copy(update={"nodes": [sc.cluster.nodes[0].model_copy(update={"gpus": 1})]})
    sc = sc.model_copy(update={"duration_s": 20.0, "cluster": one_gpu})
    good = {}
    for load in (1.0, 4.0):
        r = run_scenario(sc, "esg", load=load, check_purity=True)
        ended = r["completed"] + r["rejected"] + r["failed"] + r["timed_out"]
        good[load] = r["slo_hit_rate"] * ended
        assert r["refused_decisions"] == 0
    assert good[4.0] >= good[1.0]


@pytest.mark.slow  # a 30 s saturated simulation
def test_a_saturated_bottleneck_replaces_its_fragment_fills_with_the_planned_share():
    """image-classify on 4 V100s (synthetic fixture) at twice what they can serve: ResNet-50 is the
    bottleneck, and while the load ramps up its pool gets a smaller share wherever a fragment was free
    and preprocess keeps an older, larger mix. Once saturated, the pipeline-conscious rebalance frees
    room on one GPU (preprocess above the fraction ResNet can pass, ResNet's own instances of other
    shares) until the planned share fits: by the end a ResNet-50 instance smaller than the planned share
    is left only where freeing every such instance on its GPU would still not make room for a planned one
    (it fills units that the planned share cannot use; an older configuration's larger instance may stay:
    it serves more than a planned one would)."""
    from gpufaas.loadgen.simdriver import build_controller, build_policy
    from gpufaas.loadgen.workload import arrivals
    from gpufaas.platform.clock import VirtualClock
    from tests.conftest import ROOT

    sc = load_scenario(ROOT / "tests" / "fixtures" / "v100x4.yaml")
    stream = sc.workload.streams[0].model_copy(update={"arrival": "gamma", "cv": 2.0, "rate_rps": 5000.0})
    sc = sc.model_copy(update={"duration_s": 40.0, "workload": sc.workload.model_copy(update={"streams": [stream]})})
    clock = VirtualClock()
    ctl = build_controller(sc, build_policy(sc, "esg"), clock, check_purity=True)
    it = arrivals(sc.workload, sc.seed, sc.duration_s, 1.0)

    def arrive(_stream: int) -> None:
        ctl.submit("image-classify")
        nxt = next(it, None)
        if nxt is not None:
            clock.call_at_fast(nxt[0], arrive, nxt[1])

    first = next(it)
    clock.call_at_fast(first[0], arrive, first[1])
    clock.run(until_ns=int(sc.duration_s * NS_PER_S))
    plan = ctl.state["plans"]["image-classify"]
    resnet = plan.choices[[s.function for s in ctl.workflows["image-classify"].stages].index("resnet50")]
    resnets = [i for i in ctl.instances.values() if i.function.name == "resnet50"]
    assert ctl.acct.report()["rejected"] > 0, "the scenario must saturate the cluster"
    assert sum(i.share_units >= resnet.units for i in resnets) >= len(ctl.gpus), "the planned share runs on every GPU"
    for gpu in ctl.gpus:
        small = [i.share_units for i in resnets if i.gpu is gpu and i.share_units < resnet.units]
        assert not small or gpu.free_units + sum(small) < resnet.units, (gpu.id, small, gpu.free_units, resnet.units)


def test_under_contention_a_job_without_time_for_the_planned_later_stages_is_shed():
    """More jobs than the idle instances take, each with time for the fastest path after its stage but
    not for the planned one: all are shed at once. Run and left to miss, they would take the first
    stage's capacity from jobs that can still make it (the earliest-deadline-first domino)."""
    ctl, clock, _ = controller(EsgPolicy(), gpus=1, functions=[function("f", "preprocess"), function("g", "resnet50")],
                               workflows=[chain("w", ["f", "g"], slo_ms=200)])
    ctl.submit("w")
    clock.run(until_ns=10 * NS_PER_S)  # every pool up and idle
    plan = ctl.state["plans"]["w"]
    fastest, planned = plan.fastest_after_ns[0], plan.planned_after_ns[0]
    assert planned > fastest  # the planned share of g is smaller than the largest
    idle_f = [i for i in ctl.instances.values() if i.function.name == "f"]
    run1 = max(i.batch_latency_ns(1) for i in idle_f)
    slo_ms = (run1 + (fastest + planned) // 2) / NS_PER_MS
    invs = [ctl.submit("w", slo_ms=slo_ms) for _ in range(sum(i.max_batch for i in idle_f) + 4)]
    clock.run(until_ns=clock.now_ns() + 5 * NS_PER_S)
    assert [i.status.name for i in invs] == ["REJECTED"] * len(invs)
    assert all(i.reason.startswith("shed") for i in invs)


@pytest.mark.parametrize("mean,below,beyond", [(0.0, 0, 1), (0.58, 2, 3), (1.0, 3, 4), (10.0, 17, 18),
                                                (1000.0, 1064, 1065)])
def test_shed_evidence_is_a_poisson_tail_at_the_rate_intervals_confidence(mean, below, beyond):
    """P(K >= k) for a Poisson K of the given mean (scipy.stats.poisson.sf(k - 1, mean)): 0.115 and 0.021 at
    0.58 (2, 3); 0.080 and 0.019 at 1 (3, 4); 0.027 and 0.014 at 10 (17, 18); 0.0232 and 0.0215 at 1000
    (1064, 1065: e^-1000 underflows a double, the sum must not start there); the line is 0.02275."""
    assert not beyond_chance(below, mean) and beyond_chance(beyond, mean)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.floats(0, 2000))
def test_shed_evidence_grows_with_the_count_and_shrinks_with_the_mean(count, mean):
    """Monotone both ways, across the shortcut that answers counts far above the mean without the sum."""
    if beyond_chance(count, mean):
        assert beyond_chance(count + 1, mean) and (mean < 1 or beyond_chance(count, mean * 0.99))
    else:
        assert not beyond_chance(count, mean + 1)


def test_a_pool_grows_on_more_sheds_than_its_miss_budget_allows_not_on_one():
    """Sheds are evidence that a pool is short only beyond the miss budget it was sized for: one shed in
    a cold start's time does not count, a run of them does; sheds older than a cold start are forgotten,
    and so is everything a function shed while an instance of it was starting."""
    policy = EsgPolicy()
    ctl, clock, _ = controller(policy, gpus=1, functions=[function("f", "preprocess")], workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run(until_ns=10 * NS_PER_S)  # the pool up and idle
    view, now = ctl.view, clock.now_ns()
    (inst,) = [i for i in ctl.instances.values() if i.function.name == "f"]
    window_ns = view.cold_start_ns("f", inst.gpu)
    plan = ctl.state["plans"]["w"].choices[0]
    tg = PoolTarget("f", inst.gpu.type_name, plan.batch, plan.units, plan.latency_ns, 1.0, 1.0, 1.0, plan.wait_ns,
                    plan.batch, 100.0)  # 100 rps: a 1 % budget allows about one shed per second of window
    allowed = 0.01 * 100.0 * window_ns / NS_PER_S
    shed = {"f": deque([(now, 1)])}
    assert policy._shed_short(view, now, shed, {"f": tg}) == set() and shed == {"f": deque([(now, 1)])}
    many = int(allowed + 4 * allowed ** 0.5) + 3
    shed = {"f": deque([(now - window_ns, 1000), (now, many)])}
    assert policy._shed_short(view, now, shed, {"f": tg}) == {"f"}
    assert shed == {"f": deque([(now, many)])}  # what fell out of the window is gone
    assert policy._shed_short(view, now, shed, {"f": replace(tg, rate_rps=100.0 * many)}) == set()
    inst.state = InstanceState.STARTING
    assert policy._shed_short(view, now, shed, {"f": tg}) == set() and shed == {}


def test_each_start_says_which_rule_asked_for_it():
    """`Start.reason` names the rule that set the function's want: the need at the rate's lower end, the
    backlog floor or the sheds beyond the miss budget; the controller keeps it on the instance."""
    from gpufaas.platform.policy.esg_pool import Room, reconcile, throughput_rps

    policy = EsgPolicy()
    ctl, clock, _ = controller(policy, gpus=2, functions=[function("f", "preprocess")], workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run(until_ns=10 * NS_PER_S)  # the pool up and idle
    view, now = ctl.view, clock.now_ns()
    (inst,) = ctl.instances.values()
    assert inst.start_reason == "need"
    plan = ctl.state["plans"]["w"].choices[0]
    per = plan.batch * NS_PER_S / plan.latency_ns  # one planned instance's throughput
    one = throughput_rps(inst, PoolTarget("f", inst.gpu.type_name, plan.batch, plan.units, plan.latency_ns, per, per,
                                          per, plan.wait_ns, plan.batch, per))  # the live instance's, at the plan's batch

    def starts(need_rps, mid_rps, waited=None, shed=frozenset(), f_instances=True):
        tg = PoolTarget("f", inst.gpu.type_name, plan.batch, plan.units, plan.latency_ns, need_rps, mid_rps, need_rps,
                        plan.wait_ns, plan.batch, mid_rps)
        actions: list = []
        v = view
        if not f_instances:
            inst.stopping = True  # not counted as live by reconcile
        try:
            reconcile(v, now, {"f": tg}, waited or {}, set(shed), Room(v), {inst.id}, actions, {})
        finally:
            inst.stopping = False
        return [(a.reason, a.function) for a in actions if isinstance(a, Start)]

    assert starts(0.5 * one, 0.5 * one) == []  # covered: nothing to start
    assert starts(one + 0.5 * per, one + 0.5 * per) == [("need", "f")]
    # covered at the lower end, short at the estimate: only sheds beyond the budget grow it
    assert starts(0.5 * one, 2 * one) == []
    assert starts(0.5 * one, 2 * one, shed={"f"}) == [("shed", "f")]
    # a queue that waited past the plan and holds more than a round of every instance: its floor rate
    wait_ns = plan.wait_ns + plan.latency_ns + 100 * NS_PER_MS
    queued = int(3 * one * wait_ns / NS_PER_S) + inst.max_batch + 1  # three times what the pool clears meanwhile
    floor_rps = queued * NS_PER_S / wait_ns
    assert floor_rps > one
    assert {r for r, _ in starts(0.5 * one, 0.5 * one, waited={"f": (wait_ns, queued)})} == {"backlog"}
    # no live instance: the need at the lowest rate the plan assumes (`esg_plan.MIN_RATE_RPS`) starts one
    assert starts(1e-3, 1e-3, waited={"f": (1, 1)}, f_instances=False) == [("need", "f")]
    # the controller keeps the reason on the instance it starts
    ctl.apply(Decisions((Start("f", 1, plan.units, plan.batch, reason="shed"),)))
    assert [i.start_reason for i in ctl.instances.values() if i.id != inst.id] == ["shed"]


def test_only_sheds_after_the_pool_was_up_of_invocations_without_a_cold_start_are_evidence():
    """A job that queued while its function's newest instance cold-started, or whose invocation waited on a
    cold start at any stage, lost its time to that cold start: shedding it says nothing of the pool's size.
    A job that came late otherwise (an earlier stage's backlog) still counts."""
    from gpufaas.platform.policy.esg_dispatch import shed_evidence
    from gpufaas.platform.runtime import Invocation, Job

    ctl, clock, _ = controller(EsgPolicy(), gpus=1, functions=[function("f", "preprocess")], workflows=[chain("w", ["f"])])
    first = ctl.submit("w")
    clock.run(until_ns=10 * NS_PER_S)
    (inst,) = ctl.instances.values()
    up_ns = inst.ready_ns
    assert first.cold_waited and up_ns > first.arrival_ns  # the first job waited on the cold start
    wf = ctl.workflows["w"]
    stage = wf.stages[0]

    def job(enq_ns: int, cold: bool, late_ns: int = 0) -> Job:
        inv = Invocation(10_000 + enq_ns, wf, enq_ns - late_ns, wf.slo_ns)
        inv.cold_waited = cold
        return Job(10_000 + enq_ns, inv, stage, stage.queue, enq_ns)

    before, after, after_cold = job(up_ns - 1, False), job(up_ns, False), job(up_ns + 5, True)
    assert shed_evidence(ctl.view, "f", []) == 0
    assert shed_evidence(ctl.view, "f", [before, after, after_cold]) == 1
    assert shed_evidence(ctl.view, "f", [after, job(up_ns + 7, False, late_ns=wf.slo_ns - 1)]) == 2
