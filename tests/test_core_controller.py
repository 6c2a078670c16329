"""Controller step tests on the fake backend, the clock, the registry and the DAG execution."""

from __future__ import annotations

import pytest

from gpufaas.platform.clock import VirtualClock
from gpufaas.platform.decisions import Decisions, Dispatch, Start
from gpufaas.platform.policy.batch1_wholegpu import Batch1WholeGpu
from gpufaas.platform.policy.params import PolicyParams
from gpufaas.platform.policy.registry import Registry, builtin_registry
from gpufaas.platform.runtime import InstanceState, InvocationStatus
from gpufaas.platform.errors import UserError
from tests.helpers import chain, controller, function


class Scripted:
    """A test policy that returns prepared decisions, one list per call."""

    name = "scripted"
    Params = PolicyParams  # nothing to set through the registry; tests hand it a script directly

    def __init__(self, script=None):
        self.params = PolicyParams()
        self.script = list(script or [])
        self.calls = 0

    def initial_state(self, view):
        return 0

    def schedule(self, view, now_ns, state):
        self.calls += 1
        make = self.script.pop(0) if self.script else (lambda v: Decisions())
        return make(view), state + 1


def test_virtual_clock_orders_by_time_then_fifo():
    c = VirtualClock()
    out = []
    c.call_at(20, out.append, "b")
    c.call_at(10, out.append, "a")
    c.call_at(20, out.append, "c")
    h = c.call_at(15, out.append, "x")
    h.cancel()
    c.run()
    assert out == ["a", "b", "c"] and c.now_ns() == 20


def test_registry_refuses_duplicates_and_lists_names():
    r = Registry()
    r.register_policy("p", Batch1WholeGpu, Batch1WholeGpu.Params)
    with pytest.raises(ValueError, match="already registered"):
        r.register_policy("p", Batch1WholeGpu, Batch1WholeGpu.Params)
    with pytest.raises(UserError, match=r"unknown policy 'nope'; registered policies: .*batch1-wholegpu"):
        builtin_registry().make("nope")
    assert builtin_registry().make("tests.test_core_controller:Scripted").name == "scripted"


def test_fan_out_fan_in_runs_each_stage_once():
    diamond = {"name": "d", "slo_ms": 500, "stages": [
        {"name": "a", "function": "f"}, {"name": "b", "function": "f", "after": ["a"]},
        {"name": "c", "function": "g", "after": ["a"]}, {"name": "e", "function": "f", "after": ["b", "c"]}]}
    from gpufaas.platform.specs import WorkflowSpec
    ctl, clock, _ = controller(Batch1WholeGpu(), gpus=2, functions=[function("f"), function("g", "mobilenet_v2")],
                               workflows=[WorkflowSpec.model_validate(diamond)])
    done = []
    inv = ctl.submit("d", on_done=done.append)
    clock.run()
    assert done == [inv] and inv.status == InvocationStatus.COMPLETED
    assert ctl.acct.batched_jobs == 4  # a, b, c, e: the fan-in stage ran once, after both branches
    ctl.check_invariants()


def test_apply_refuses_over_commit_and_counts_it():
    pol = Scripted([lambda v: Decisions((Start("f", 0, 10, 1), Start("f", 0, 10, 1)))])
    ctl, clock, fake = controller(pol, gpus=1, fake=True, functions=[function("f")], workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run()
    assert len(fake.started) == 1
    assert ctl.acct.refusal_reasons == {"over-commit": 1}
    ctl.check_invariants()


def test_retry_once_then_fail_with_reason():
    ctl, clock, fake = controller(Batch1WholeGpu(), gpus=2, fake=True, functions=[function("f")], workflows=[chain("w", ["f"])])
    done = []
    inv = ctl.submit("w", on_done=done.append)
    clock.run()
    first = fake.started[0]
    fake.ready(first)
    clock.run()
    fake.fail_batch(fake.submitted[-1], "CUDA error: boom")
    clock.run()
    assert ctl.acct.retries == 1 and inv.status == InvocationStatus.PENDING
    # the retry must not go back to the instance it failed on: a second one starts
    assert len(fake.started) == 2
    fake.ready(fake.started[1])
    clock.run()
    assert fake.submitted[-1].instance is fake.started[1]
    fake.crash(fake.started[1], "worker exited with signal 9")
    clock.run()
    assert done == [inv] and inv.status == InvocationStatus.FAILED
    assert "failed after 2 attempt(s): worker exited with signal 9" in inv.reason
    ctl.check_invariants()


def test_keep_alive_expiry_stops_idle_instance():
    ctl, clock, _ = controller(Batch1WholeGpu(), gpus=1, functions=[function("f", keep_alive_s=5)], workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run(until_ns=4_000_000_000)
    assert len(ctl.instances) == 1 and next(iter(ctl.instances.values())).state == InstanceState.IDLE
    clock.run()
    assert not ctl.instances
    assert ctl.gpus[0].free_units == 10
    # allocated time covers cold start + work + keep-alive, ~ (3.15 s + 5 s) x 1 GPU
    assert 8.0 < ctl.acct.allocated_unit_ns / 1e9 < 8.5


@pytest.mark.parametrize("policy", builtin_registry().names())
def test_a_keep_alive_of_zero_serves_and_then_releases(policy):
    """Keep-alive 0: an instance is released as soon as it is idle, and it is not idle before the policy's
    pass has looked at the jobs it was started for (it used to be stopped the moment it was ready, and the
    function never served: every invocation timed out)."""
    params = {"rates_rps": {"w": 0.2}} if policy == "static" else {}  # static is planned offline, from the offered rates
    # an SLO past the cold start: the baselines that reject jobs whose deadline passed in the queue serve them too
    ctl, clock, _ = controller(builtin_registry().make(policy, **params), gpus=2, functions=[function("f", keep_alive_s=0)],
                               workflows=[chain("w", ["f", "f"], slo_ms=60_000)])
    invs = []
    for t_s in (0.0, 10.0, 10.001):  # one alone, then two together after the first instance is gone
        clock.call_at(int(t_s * 1e9), lambda: invs.append(ctl.submit("w")))
    clock.run(until_ns=60_000_000_000)  # bounded: a ticking policy (esg) asks for its next tick for ever
    assert [i.status for i in invs] == [InvocationStatus.COMPLETED] * 3, [i.reason for i in invs]
    if policy != "static":  # static holds its planned pool whatever the keep-alive (it starts again what it stops)
        assert not ctl.instances  # released once idle: nothing is kept alive
    ctl.check_invariants()


def test_transfer_time_same_gpu_node_and_network():
    ctl, clock, _ = controller(Batch1WholeGpu(), gpus=2, nodes=2, functions=[function("f")], workflows=[chain("w", ["f", "f"])])
    inv = ctl.submit("w")
    job = ctl.workflows["w"].stages[1]
    from gpufaas.platform.runtime import Job
    j = Job(999, inv, job, job.queue, 0)
    g0, g1, g2 = ctl.gpus[0], ctl.gpus[1], ctl.gpus[2]
    inv.out_gpu[0] = g0
    nbytes = 4000  # 1000 float32 outputs
    assert ctl.transfer_ns(j, g0) == 0
    assert ctl.transfer_ns(j, g1) == int(nbytes * 8 / 100)  # host: 100 Gbit/s
    assert ctl.transfer_ns(j, g2) == 50_000 + int(nbytes * 8 / 25)  # network: 50 us + 25 Gbit/s


def test_purity_check_catches_a_mutating_policy():
    from gpufaas.platform.controller import PolicyPurityError

    class Mutating(Scripted):
        def schedule(self, view, now_ns, state):
            view.gpus[0].free_units -= 1
            return Decisions(), state

    ctl, clock, _ = controller(Mutating(), gpus=1, functions=[function("f")], workflows=[chain("w", ["f"])])
    ctl.submit("w")
    with pytest.raises(PolicyPurityError):
        clock.run()


def test_dispatch_refused_for_wrong_function_and_oversized_batch():
    def start(v):
        q = next(iter(v.ready_queues()))
        return Decisions((Start("f", 0, 10, 1, (q.jobs[0].id,)),))

    def bad(v):
        inst = v.instances("f")[0]
        q = next(iter(v.ready_queues()))
        return Decisions((Dispatch(tuple(j.id for j in q.jobs), inst.id),))

    ctl, clock, fake = controller(Scripted([start, bad]), gpus=1, fake=True, functions=[function("f")], workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run()
    ctl.submit("w")
    ctl.submit("w")
    clock.run()
    assert ctl.acct.refusal_reasons == {"dispatch": 1}
    assert sum(len(q.jobs) for q in ctl.ready_queues.values()) == 2  # nothing was half-applied


def test_histogram_quantiles_within_stated_error():
    import random

    from gpufaas.platform.accounting import Histogram
    from gpufaas.platform.stats import quantile
    rng = random.Random(3)
    vals = [rng.lognormvariate(3, 1.2) for _ in range(20000)]
    h = Histogram()
    for v in vals:
        h.add(v)
    for q in (0.5, 0.95, 0.99):
        exact = quantile(vals, q)  # the project's one definition (numpy's default, see test_core_stats.py)
        assert abs(h.quantile(q) - exact) / exact <= 0.01, (q, h.quantile(q), exact)
    assert h.quantile(1.0) == max(vals) and h.n == 20000


def _queued_ids(view, function):
    return tuple(j.id for q in view.ready_queues() if q.function == function for j in q.jobs)


def test_arrival_push_sends_a_new_job_to_the_newest_idle_instance_without_a_call():
    """Decisions.arrival_push: a new job of a function with an idle instance, nothing else queued, runs on its
    newest idle instance (largest id) without a call; a job that finds none, or waits behind another, is
    the policy's again, and an instance stopping drops the rule."""
    def start_two(v):
        a, b = _queued_ids(v, "f")
        return Decisions((Start("f", 0, 10, 1, (a,)), Start("f", 1, 10, 1, (b,))), arrival_push=True)

    def queue_it(v):  # decides nothing: the job waits for an instance to go idle
        return Decisions(arrival_push=True)

    def serve(v):  # the oldest idle instance (the rule's choice would be the newest): a call decided it
        inst = min(v.idle_by_function["f"].values(), key=lambda i: i.id)
        return Decisions((Dispatch(_queued_ids(v, "f")[:1], inst.id),), arrival_push=True)

    pol = Scripted([start_two, queue_it, serve])
    ctl, clock, fake = controller(pol, gpus=2, fake=True, functions=[function("f")], workflows=[chain("w", ["f"])])
    settle = lambda: clock.run(until_ns=clock.now_ns())  # this instant's passes; the keep-alive timers stay ahead
    ctl.submit("w")
    ctl.submit("w")
    settle()
    old, new = fake.started
    assert pol.calls == 1 and old.id < new.id
    for inst in (old, new):
        fake.ready(inst)
    settle()
    for b in list(fake.submitted):
        fake.finish(b)
    settle()
    assert pol.calls == 1 and set(ctl.idle_by_fn["f"]) == {old.id, new.id}

    first = ctl.submit("w")  # pushed: the newest idle instance, no call
    assert fake.submitted[-1].instance is new and fake.submitted[-1].jobs[0].inv is first
    second = ctl.submit("w")  # the newest is busy now: the other one
    assert fake.submitted[-1].instance is old and fake.submitted[-1].jobs[0].inv is second
    settle()
    assert pol.calls == 1 and ctl.queued_by_fn["f"] == 0 and ctl.acct.cold_requests == 2  # the two first only

    ctl.submit("w")  # no idle instance: queued, and the policy is asked
    settle()
    assert pol.calls == 2 and ctl.queued_by_fn["f"] == 1
    fake.finish(fake.submitted[-1])  # `old` goes idle while a job waits: a call (no idle_pulls here)
    fake.finish(fake.submitted[-2])  # `new` too, in the same instant
    settle()
    assert pol.calls == 3 and fake.submitted[-1].instance is old and ctl.queued_by_fn["f"] == 0
    ctl.check_invariants()


def test_arrival_push_is_dropped_when_an_instance_stops():
    """The rule holds until the next call or an event it does not cover (an instance released)."""
    def start(v):
        return Decisions((Start("f", 0, 10, 1, _queued_ids(v, "f")),), arrival_push=True)

    pol = Scripted([start])
    ctl, clock, fake = controller(pol, gpus=2, fake=True, functions=[function("f", keep_alive_s=1)],
                                  workflows=[chain("w", ["f"])])
    ctl.submit("w")
    clock.run()
    fake.ready(fake.started[0])
    clock.run()
    fake.finish(fake.submitted[0])
    clock.run()  # idle 1 s, then released by its keep-alive
    assert not ctl.instances and pol.calls == 1
    ctl.submit("w")  # no instance and no rule: a call
    clock.run()
    assert pol.calls == 2


class PerRequestWithoutPush:
    """`per-request` with its Decisions' arrival_push turned off: every arrival goes through a call."""

    name = "per-request-without-push"
    Params = PolicyParams

    def __init__(self, **params):
        from gpufaas.platform.policy.per_request import PerRequestPolicy

        self.params = PolicyParams()
        self.inner = PerRequestPolicy()

    def initial_state(self, view):
        return self.inner.initial_state(view)

    def schedule(self, view, now_ns, state):
        d, state = self.inner.schedule(view, now_ns, state)
        assert d.arrival_push
        return d._replace(arrival_push=False), state


@pytest.mark.parametrize("rate_rps,keep_alive_s", [(5.0, 10.0), (50.0, 60.0)])
def test_per_request_decides_the_same_with_and_without_arrival_push(rate_rps, keep_alive_s):
    """The rule stands for exactly the calls it skips: the SimFaaS one-function workload gives the same
    figures with and without it, and far fewer policy calls with it."""
    from gpufaas.loadgen import simfaas_peer as peer
    from gpufaas.loadgen.simdriver import run_scenario
    from tests.helpers import GOLDEN_KEYS

    sc = peer.scenario(rate_rps, keep_alive_s, 1500 / rate_rps)
    calls: dict[str, int] = {}
    run = lambda policy: run_scenario(sc, policy, check_purity=True, check_invariants=True,
                                      on_event=lambda ctl: calls.__setitem__(policy, ctl.acct.decision_us.n))
    push = run("per-request")
    plain = run("tests.test_core_controller:PerRequestWithoutPush")
    assert push["invocations"] > 1000 and push["cold_requests"] > 0
    assert {k: push[k] for k in GOLDEN_KEYS} == {k: plain[k] for k in GOLDEN_KEYS}
    assert calls["per-request"] < calls["tests.test_core_controller:PerRequestWithoutPush"] / 5
    assert calls["per-request"] >= push["cold_starts"] > 0
