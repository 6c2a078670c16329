"""The standing rules a policy may return (Decisions.quiet_until_match, idle_pulls): the controller skips
exactly the calls they cover, and batch1-wholegpu decides the same with and without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufaas.loadgen.scenario import load_scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.platform.decisions import Decisions, Dispatch, Start
from gpufaas.platform.policy.batch1_wholegpu import Batch1WholeGpu
from tests.helpers import chain, controller, function

SCENARIOS = Path(__file__).resolve().parents[1] / "loadgen" / "scenarios"


class Recorder:
    """A test policy: each call runs the next scripted function of the view, and is counted."""

    name = "recorder"

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def initial_state(self, view):
        return None

    def schedule(self, view, now_ns, state):
        self.calls += 1
        return self.script.pop(0)(view), state


def _queued(view, function):
    return [j.id for q in view.ready_queues() if q.function == function for j in q.jobs]


def test_quiet_and_pull_skip_only_the_calls_they_cover():
    start_first = lambda v: Decisions((Start("f", 0, 10, 1, tuple(_queued(v, "f"))),), quiet_until_match=True)
    dispatch_next = lambda v: Decisions((Dispatch(tuple(_queued(v, "f")[:1]), v.instances("f")[0].id),),
                                        quiet_until_match=True, idle_pulls=True)
    policy = Recorder([start_first, dispatch_next, lambda v: Decisions()])
    ctl, clock, backend = controller(policy, fake=True, functions=[function("f"), function("g")],
                                     workflows=[chain("wf", ["f"]), chain("wg", ["g"])])
    ctl.submit("wf")
    clock.run()
    assert policy.calls == 1 and len(backend.started) == 1
    inst = backend.started[0]

    ctl.submit("wf")  # f's only instance is cold-starting: covered by quiet_until_match
    clock.run()
    assert policy.calls == 1 and ctl.queued_by_fn["f"] == 1

    backend.ready(inst)  # runs its first batch: still no idle instance, no call
    clock.run()
    assert policy.calls == 1 and len(backend.submitted) == 1

    backend.finish(backend.submitted[0])  # idle with a job queued: a call, which dispatches it
    clock.run()
    assert policy.calls == 2 and len(backend.submitted) == 2 and ctl.queued_by_fn["f"] == 0

    third = ctl.submit("wf")  # busy again: queued without a call
    clock.run()
    assert policy.calls == 2
    backend.finish(backend.submitted[1])  # idle_pulls: takes the queued job without a call
    clock.run()
    assert policy.calls == 2 and backend.submitted[2].jobs[0].inv is third and ctl.queued_by_fn["f"] == 0

    ctl.submit("wg")  # g has no instance at all: not covered, so a call
    clock.run()
    assert policy.calls == 3


def test_rules_are_dropped_when_a_queued_job_is_dropped():
    quiet = lambda v: Decisions(quiet_until_match=True)
    policy = Recorder([quiet, quiet, lambda v: Decisions()])
    ctl, clock, backend = controller(policy, fake=True, functions=[function("f")], workflows=[chain("wf", ["f"])])
    inv = ctl.submit("wf")  # no instance: a call, which starts nothing and goes quiet
    clock.run()
    assert policy.calls == 1
    ctl.fail_invocation(inv, "test")  # its queued job is dropped: the rule no longer holds
    ctl.submit("wf")
    clock.run()
    assert policy.calls == 2


class WithoutRules(Batch1WholeGpu):
    """batch1-wholegpu with its standing rules removed: called on every event."""

    def schedule(self, view, now_ns, state):
        d, state = super().schedule(view, now_ns, state)
        return d._replace(quiet_until_match=False, idle_pulls=False), state


@pytest.mark.parametrize("name, duration_s", [("chain", 30), ("video", 30), ("mixed", 20)])
def test_batch1_decides_the_same_with_and_without_its_rules(name, duration_s, monkeypatch):
    sc = load_scenario(SCENARIOS / f"{name}.yaml").model_copy(update={"duration_s": duration_s})
    with_rules = run_scenario(sc, "batch1-wholegpu")
    import gpufaas.loadgen.simdriver as simdriver

    real = simdriver.build_policy
    monkeypatch.setattr(simdriver, "build_policy", lambda *a, **k: WithoutRules())
    without = run_scenario(sc, "batch1-wholegpu")
    monkeypatch.setattr(simdriver, "build_policy", real)
    for key in ("invocations", "slo_hit_rate", "cost", "latency_ms", "cold_starts"):
        assert with_rules[key] == without[key], key
    assert with_rules["events"] == without["events"]


def test_pull_leaves_the_job_to_a_longer_idle_instance():
    two = lambda v: Decisions(tuple(Start("f", g, 10, 1, (j,)) for g, j in enumerate(_queued(v, "f"))),
                              quiet_until_match=True, idle_pulls=True)
    longest_idle = lambda v: Decisions((Dispatch(tuple(_queued(v, "f")[:1]), next(iter(v.idle_instances("f"))).id),),
                                       quiet_until_match=True, idle_pulls=True)
    policy = Recorder([two, longest_idle])
    ctl, clock, backend = controller(policy, fake=True, functions=[function("f")], workflows=[chain("wf", ["f"])])
    ctl.submit("wf")
    ctl.submit("wf")
    clock.run(until_ns=clock.now_ns())  # this instant only: keep-alive timers stay pending
    a, b = backend.started
    backend.ready(a)
    backend.ready(b)
    backend.finish(backend.submitted[0])  # a is idle with nothing queued: no call
    clock.run(until_ns=clock.now_ns())  # this instant only: keep-alive timers stay pending
    assert policy.calls == 1 and a.id in ctl.idle_by_fn["f"]
    late = ctl.submit("wf")  # a is idle: a call is requested for the end of this instant ...
    backend.finish(backend.submitted[1])  # ... and b goes idle first: it must not pull ahead of a
    clock.run(until_ns=clock.now_ns())  # this instant only: keep-alive timers stay pending
    assert policy.calls == 2
    assert backend.submitted[2].jobs[0].inv is late and backend.submitted[2].instance is a
