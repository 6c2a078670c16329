"""Residency in the controller: eviction under pressure, min/max instances, pre-warms, the metrics, the
registry, and the property that no residency policy ever over-commits a GPU."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufaas.platform.decisions import Decisions, Start, Stop
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.residency.policies import Fixed, Histogram
from gpufaas.platform.residency.registry import ResidencyRegistry, builtin_registry, make_residency, parse_residencies
from gpufaas.platform.runtime import InstanceState
from tests.helpers import chain, controller, function
from tests.test_core_controller import Scripted

S = 1_000_000_000


class StartQueued(Scripted):
    """Starts each queued function that has no live instance on GPU 0 with `units`, its first job as the batch."""

    def __init__(self, units: int = 10):
        super().__init__()
        self.units = units

    def schedule(self, view, now_ns, state):
        acts = tuple(Start(q.function, 0, self.units, 1, (q.jobs[0].id,)) for q in view.ready_queues()
                     if not view.instances(q.function))
        return Decisions(acts), state


def _two_functions(residency: str, **fkw):
    return controller(StartQueued(), gpus=1, residency=make_residency(residency),
                      functions=[function("f", keep_alive_s=60, **fkw), function("g", keep_alive_s=60)],
                      workflows=[chain("wf", ["f"]), chain("wg", ["g"])])


def _fill_then_ask(residency: str):
    """f takes the whole GPU and runs one job; 10 s later g asks for the whole GPU."""
    ctl, clock, _ = _two_functions(residency)
    ctl.submit("wf")
    clock.run(until_ns=10 * S)
    assert [i.state for i in ctl.instances.values()] == [InstanceState.IDLE]
    ctl.submit("wg")
    clock.run(until_ns=10 * S + 1)
    return ctl


class _NeverEvicts(Fixed):
    """A test fake: the keep-alive alone, a Start without room waits (the `evicts = False` branch)."""

    name = "test-never-evicts"
    evicts = False


def test_a_policy_that_does_not_evict_leaves_a_start_without_room_refused():
    ctl, clock, _ = controller(StartQueued(), gpus=1, residency=_NeverEvicts(),
                               functions=[function("f", keep_alive_s=60), function("g", keep_alive_s=60)],
                               workflows=[chain("wf", ["f"]), chain("wg", ["g"])])
    ctl.submit("wf")
    clock.run(until_ns=10 * S)
    ctl.submit("wg")
    clock.run(until_ns=10 * S + 1)
    assert ctl.acct.refusal_reasons.get("over-commit", 0) >= 1 and ctl.acct.evictions == 0
    assert [i.function.name for i in ctl.instances.values()] == ["f"]
    ctl.check_invariants()


@pytest.mark.parametrize("residency", ["fixed", "lru", "cost-aware", "histogram"])
def test_evicting_policies_make_room_from_idle_instances(residency):
    ctl = _fill_then_ask(residency)
    assert ctl.acct.evictions == 1 and "over-commit" not in ctl.acct.refusal_reasons
    assert [i.function.name for i in ctl.instances.values()] == ["g"]
    ctl.check_invariants()


def test_histogram_serves_a_start_by_evicting_even_an_instance_predicted_back_soon():
    """f's predicted next arrival (last + mean gap: 2 s) falls within its keep-alive, so the old filter kept
    it and g waited for room; a request has to be served, so f goes (Belady: nothing else to choose)."""
    ctl, clock, _ = _two_functions("histogram")
    ctl.submit("wf")
    clock.run(until_ns=1 * S)
    ctl.submit("wf")
    clock.run(until_ns=10 * S)
    ctl.submit("wg")
    clock.run(until_ns=10 * S + 1)
    assert ctl.acct.evictions == 1 and [i.function.name for i in ctl.instances.values()] == ["g"]
    ctl.check_invariants()


@pytest.mark.parametrize(("residency", "live_after_keep_alive"), [("fixed", 0), ("lru", 1)])
def test_fixed_releases_on_its_keep_alive_and_lru_keeps_until_evicted(residency, live_after_keep_alive):
    ctl, clock, _ = _two_functions(residency)
    ctl.submit("wf")
    clock.run(until_ns=70 * S)  # f went idle after its cold start and one job (seconds); its keep-alive is 60 s
    assert len(ctl.instances) == live_after_keep_alive
    ctl.check_invariants()


def test_a_busy_or_recently_idle_instance_is_never_evicted():
    ctl, clock, _ = _two_functions("lru")
    ctl.submit("wf")
    clock.run(until_ns=1)  # f is cold-starting: not evictable
    ctl.submit("wg")
    clock.run(until_ns=4 * S)  # f idle for less than one cold start: not evictable either
    assert ctl.acct.evictions == 0 and ctl.acct.refusal_reasons.get("over-commit", 0) >= 1
    assert [i.function.name for i in ctl.instances.values()] == ["f"]


@pytest.mark.parametrize("residency", ["fixed", "lru"])
def test_fixed_and_lru_evict_the_longest_idle_first(residency):
    pol = make_residency(residency)
    a, b = object.__new__(type("I", (), {"__slots__": ("idle_since_ns", "id")})), None
    a.idle_since_ns, a.id = 5, 1
    b = object.__new__(type(a))
    b.idle_since_ns, b.id = 2, 2
    assert pol.victims([a, b], None, 10) == [b, a]


def test_min_instances_started_at_deploy_and_kept():
    ctl, clock, _ = controller(Scripted(), gpus=1, functions=[function("f", keep_alive_s=1, min_instances=2)],
                               workflows=[chain("w", ["f"])])
    assert len(ctl.instances) == 2
    clock.run(until_ns=30 * S)
    assert len(ctl.instances) == 2 and all(i.state == InstanceState.IDLE for i in ctl.instances.values())
    inst = next(iter(ctl.instances.values()))
    ctl.apply(Decisions((Stop(inst.id),)))
    assert len(ctl.instances) == 2 and ctl.acct.refusal_reasons.get("min_instances") == 1
    ctl.check_invariants()


def test_min_instances_may_not_take_the_room_of_every_other_function():
    """Instances held by min_instances are never evicted: a reservation of every GPU would leave a deployed
    function that keeps none waiting for room until its invocations time out, so the deployment is refused."""
    whole = {"shares": [1.0]}
    ctl, _, _ = controller(Scripted(), gpus=2, functions=[function("f", **whole)], workflows=[chain("w", ["f"])])
    with pytest.raises(SpecError, match="would leave no .* room for one instance of 'f'; lower min_instances"):
        ctl.deploy_function(function("hog", min_instances=2, **whole))
    with pytest.raises(SpecError, match="would hold 30 of the 20 .* share units"):
        ctl.deploy_function(function("hog", min_instances=3, **whole))
    assert "hog" not in ctl.functions and not ctl.instances  # nothing started or registered
    ctl.deploy_function(function("hog", min_instances=1, **whole))  # one GPU held, one left for f
    assert len(ctl.instances) == 1
    with pytest.raises(SpecError, match="min_instances of hog .1., late .1. would leave no .* room for one instance of 'f'"):
        ctl.deploy_function(function("late", min_instances=1, **whole))  # f would have nothing left
    ctl.check_invariants()


def test_max_instances_refuses_a_start_above_it():
    pol = Scripted([lambda v: Decisions((Start("f", 0, 2, 1), Start("f", 0, 2, 1)))])
    ctl, clock, _ = controller(pol, gpus=1, functions=[function("f", max_instances=1)], workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run(until_ns=1)
    assert len(ctl.instances) == 1 and ctl.acct.refusal_reasons.get("max_instances") == 1


def test_min_above_max_is_a_spec_error():
    with pytest.raises(ValueError, match="min_instances .3. is above max_instances .1."):
        function("f", min_instances=3, max_instances=1)


class _PrewarmAt(Fixed):
    """Keep-alive 1 s, then ask for a pre-warm 2 s after the release."""

    name = "test-prewarm"

    def idle_ttl_ns(self, inst, now_ns):
        return S

    def prewarm_at_ns(self, fn, now_ns):
        return now_ns + 2 * S


def test_prewarm_counted_used_or_wasted():
    def start_f(v):
        return Decisions((Start("f", 0, 5, 1, tuple(j.id for q in v.ready_queues() for j in q.jobs)),))
    ctl, clock, _ = controller(Scripted([start_f]), gpus=1, residency=_PrewarmAt(), functions=[function("f")],
                               workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run(until_ns=7 * S)  # cold start ~3.2 s, run, 1 s idle (released at ~4.2 s), pre-warm at ~6.2 s
    assert ctl.acct.cold_starts == 1
    (inst,) = ctl.instances.values()
    assert inst.prewarm
    clock.run(until_ns=12 * S)  # the pre-warmed one expires unused; so does the next, and so on
    assert ctl.acct.prewarms_wasted >= 1 and ctl.acct.prewarms_used == 0
    r = ctl.report()
    assert r["prewarms"]["wasted"] == ctl.acct.prewarms_wasted and r["evictions"] == 0
    assert r["gpu_memory_gb_seconds"] > 0 and r["cold_starts"] == 1


def test_histogram_windows_follow_the_gaps():
    pol = Histogram()
    f = controller(Scripted(), gpus=1, functions=[function("f")], workflows=[chain("w", ["f"])])[0].functions["f"]
    pol.observe_arrival(f, 0)
    pol.observe_arrival(f, 60 * S)
    assert pol.windows_ns(f) is None  # one gap: not representative yet
    for k in range(2, pol.MIN_SAMPLES + 1):  # equal gaps: one bin, representative from the second gap on
        pol.observe_arrival(f, k * 60 * S)
    head, tail = pol.windows_ns(f)
    assert head == pytest.approx(0.9 * 60 * S, rel=0.02) and tail == pytest.approx(1.1 * 60 * S, rel=0.02)
    at = pol.prewarm_at_ns(f, pol.MIN_SAMPLES * 60 * S + 1)
    assert at == pytest.approx(pol.MIN_SAMPLES * 60 * S + head - 3.15 * S, rel=1e-3)


def test_registry_refuses_duplicates_and_unknown_names():
    reg = ResidencyRegistry()
    reg.register("x", Fixed)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", Fixed)
    assert builtin_registry().names() == ["fixed", "lru", "cost-aware", "histogram"]
    with pytest.raises(UserError, match="--residency: unknown residency policy 'nope'"):
        parse_residencies("lru,nope")


def test_scenario_variants_and_unknown_residency(tmp_path):
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.simdriver import scenario_profiles
    from tests.conftest import SCENARIOS

    sc = load_scenario(SCENARIOS / "many-models.yaml")
    assert len({f.name for f in sc.functions}) >= 60
    prof = scenario_profiles(sc)
    gbs = [prof.table(f.model, "A100-80GB").memory.instance_mb / 1024 for f in sc.functions]
    assert min(gbs) == pytest.approx(0.5) and max(gbs) == pytest.approx(12.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text((SCENARIOS / "chain.yaml").read_text().replace("seed: 1", "seed: 1\nresidency: nope")
                   .replace("clusters/", str(SCENARIOS / "clusters") + "/").replace("../../functions", str(SCENARIOS.parents[1] / "functions")))
    with pytest.raises(SpecError, match="residency"):
        load_scenario(bad)


STARTS = st.lists(st.tuples(st.sampled_from(["f", "g", "h"]), st.integers(0, 1), st.integers(1, 10), st.sampled_from([1, 8, 32]),
                            st.integers(0, 10_000)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(starts=STARTS, residency=st.sampled_from(["fixed", "lru", "cost-aware", "histogram"]))
def test_no_residency_policy_ever_over_commits(starts, residency):
    """Any sequence of Starts (random function, GPU, share, batch, time), with jobs arriving: after every
    event the GPUs' memory and share are within their capacity and the books match the instances."""
    actions = [[Start(fn, gpu, units, mb)] for fn, gpu, units, mb, _ in starts]

    def step(v):
        return Decisions(tuple(actions.pop(0))) if actions else Decisions()
    mem_heavy = [function(n, model="vit_b16", keep_alive_s=20) for n in ("f", "g", "h")]
    ctl, clock, _ = controller(Scripted([step] * len(starts)), gpus=2, residency=make_residency(residency), functions=mem_heavy,
                               workflows=[chain(f"w{n}", [n]) for n in ("f", "g", "h")])
    _replay(ctl, clock, starts, tail_ns=30 * S, check=True)
    ctl.check_invariants()


def _replay(ctl, clock, starts, *, tail_ns: int, check: bool = False) -> None:
    """Submit one invocation of `w<fn>` per (fn, ..., gap_ms) in `starts`, each gap_ms after the previous; run
    `tail_ns` more. `check`: the controller's invariants after every submit."""
    t = 0
    for fn, *_, gap_ms in starts:
        t += gap_ms * 1_000_000
        clock.run(until_ns=t)
        ctl.submit(f"w{fn}")
        if check:
            ctl.check_invariants()
    clock.run(until_ns=t + tail_ns)


def test_the_property_run_does_evict():
    """The property above exercises eviction: this fixed sequence of it evicts at least once."""
    starts = [("f", 0, 10, 1, 0), ("g", 0, 10, 1, 8_000), ("h", 1, 10, 1, 100)]
    actions = [[Start(fn, gpu, units, mb)] for fn, gpu, units, mb, _ in starts]

    def step(v):
        return Decisions(tuple(actions.pop(0))) if actions else Decisions()
    ctl, clock, _ = controller(Scripted([step] * 3), gpus=2, residency=make_residency("lru"),
                               functions=[function(n, keep_alive_s=20) for n in ("f", "g", "h")],
                               workflows=[chain(f"w{n}", [n]) for n in ("f", "g", "h")])
    _replay(ctl, clock, starts, tail_ns=S)
    assert ctl.acct.evictions == 1
    ctl.check_invariants()
