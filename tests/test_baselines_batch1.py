"""`batch1-wholegpu` as classic serverless: the most recently used warm instance takes the next request,
so surplus instances go idle and expire; the autoscaler's rate is windowed, so an early burst cannot
pass for a high rate; "whole GPU" is the largest share the profile covers."""

from __future__ import annotations

from types import SimpleNamespace

from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.policy.batch1_wholegpu import Batch1WholeGpu, _most_recent_first
from tests.helpers import chain, controller, function
from tests.test_baselines_partial_profiles import MIG, SEVENTHS, cluster, mig_profiles


def _instances_over_time(ctl):
    """Records the number of live instances after every start and stop; returns the list it fills."""
    counts: list[tuple[int, int]] = []

    def on(kind, inst):
        counts.append((ctl.clock.now_ns(), len(ctl.instances)))

    ctl.on_instance_event = on
    return counts


def _submit_at(ctl, clock, times_ns):
    for t in times_ns:
        clock.call_at_fast(t, ctl.submit, "w")


def test_idle_instances_most_recently_used_first_ties_longest_idle_first():
    a, b, c = (SimpleNamespace(id=i, idle_since_ns=t) for i, t in ((1, 10), (2, 30), (3, 30)))
    idle = {1: a, 2: b, 3: c}  # the controller's map: longest idle first
    assert [i.id for i in _most_recent_first(idle)] == [2, 3, 1]
    assert [i.id for i in _most_recent_first({1: a})] == [1]


def test_an_upstream_cold_start_burst_does_not_pass_for_a_high_rate():
    # 50 rps through preprocess -> ResNet-50; ResNet-50 at batch 1 (5.2 ms) needs one instance. While
    # preprocess cold-starts (2.35 s) ~120 requests queue; it then clears them in ~60 ms, so ResNet-50's
    # queue sees a burst at ~2000 rps: an estimate seeded by those gaps wanted a GPU per request.
    ctl, clock, _ = controller(Batch1WholeGpu(), gpus=4, functions=[function("pre", model="preprocess"), function("res")],
                               workflows=[chain("w", ["pre", "res"])])
    peak: dict[str, int] = {}

    def on(kind, inst):
        f = inst.function.name
        peak[f] = max(peak.get(f, 0), len(ctl.instances_by_fn[f]))

    ctl.on_instance_event = on
    _submit_at(ctl, clock, [k * NS_PER_S // 50 for k in range(1000)])
    clock.run(until_ns=21 * NS_PER_S)
    ctl.check_invariants()
    assert peak == {"pre": 1, "res": 1}
    assert ctl.acct.ended() == ctl.acct.invocations > 0


def test_surplus_instances_go_idle_and_expire_after_keep_alive():
    # 300 rps for 3 s wants more than one instance (both GPUs); then 20 rps, which one instance serves:
    # the most recently used one takes every request, the other idles and expires after its keep-alive
    ctl, clock, _ = controller(Batch1WholeGpu(), gpus=2, functions=[function("f", keep_alive_s=5)],
                               workflows=[chain("w", ["f"])])
    counts = _instances_over_time(ctl)
    burst = [k * NS_PER_S // 300 for k in range(900)]
    calm = [3 * NS_PER_S + k * NS_PER_S // 20 for k in range(400)]
    _submit_at(ctl, clock, burst + calm)
    clock.run(until_ns=23 * NS_PER_S)
    ctl.check_invariants()
    assert max(n for _, n in counts) == 2
    assert len(ctl.instances) == 1
    assert ctl.acct.ended() == ctl.acct.invocations


def test_whole_gpu_is_the_largest_offered_slice_and_two_share_a_gpu():
    from gpufaas.platform.backends.sim import SimBackend
    from gpufaas.platform.clock import VirtualClock
    from gpufaas.platform.controller import Controller

    clock = VirtualClock()
    ctl = Controller(cluster((MIG, 1)), mig_profiles(), Batch1WholeGpu(), SimBackend(clock), clock, check_purity=True)
    ctl.deploy_function(function("pre", model="pre-mig", shares=[*SEVENTHS, 1.0]))
    ctl.deploy_function(function("cls", model="cls-mig", shares=SEVENTHS))
    ctl.deploy_workflow(chain("w", ["pre", "cls"], slo_ms=2000))
    _submit_at(ctl, clock, [k * NS_PER_S // 20 for k in range(40)])
    clock.run(until_ns=5 * NS_PER_S)
    assert sorted((i.function.name, i.gpu.id, i.share_units) for i in ctl.instances.values()) == [
        ("cls", 0, 3), ("pre", 0, 3)]
    clock.run()
    assert ctl.acct.completed == 40 and ctl.acct.refused_decisions == 0
