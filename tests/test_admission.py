"""The workflow queue bound (`platform.admission`), one implementation for the gateway and the simulator:
its decisions on scripted (time, event) sequences, without any clock or timing, and in a simulated run,
where `run_scenario(queue_bounds=True)` refuses past the floor under overload and the default run refuses
nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufaas.loadgen.scenario import Scenario, load_scenario
from gpufaas.loadgen.simdriver import build_controller, build_policy, run_scenario
from gpufaas.platform.admission import QueueBounds, QueueFull, queue_floor
from gpufaas.platform.clock import VirtualClock
from gpufaas.platform.runtime import Invocation, InvocationStatus, WorkflowRt
from gpufaas.platform.units import NS_PER_MS, NS_PER_S
from tests.conftest import FUNCTIONS

# (time ns, event, completed) with event "arrive" (check, then add when not refused) or "done"
Script = list[tuple[int, str, bool]]


def replay(script: Script, floor: int, slo_ms: float = 100.0) -> list[QueueFull | None]:
    """Every arrival's answer, from a fresh QueueBounds fed `script` in order, as the gateway and the simulator
    feed theirs (check, then add when admitted; done when one ends)."""
    qb = QueueBounds()
    answers: list[QueueFull | None] = []
    for t_ns, event, completed in script:
        if event == "arrive":
            full = qb.check("w", slo_ms, t_ns, floor)
            answers.append(full)
            if full is None:
                qb.add("w", t_ns)
        else:
            qb.done("w", completed, t_ns)
    return answers


def burst(n: int, start_ns: int, step_ns: int = NS_PER_MS) -> Script:
    return [(start_ns + i * step_ns, "arrive", False) for i in range(n)]


def test_below_the_floor_nothing_is_refused_and_at_it_everything_is_until_one_drains():
    # no drain rate yet (no busy window has passed): the floor is the bound
    answers = replay(burst(8, 0), floor=5)
    assert [a is None for a in answers] == [True] * 5 + [False] * 3
    full = answers[5]
    assert full is not None and (full.in_flight, full.bound, full.rate_rps) == (5, 5, 0.0)
    assert full.retry_after_s == pytest.approx(0.1)  # no rate: the SLO
    assert "'w' is full: 5 invocations in flight" in full.message("w")
    # one ends (completed or not): a slot frees at the floor
    again = replay([*burst(5, 0), (10 * NS_PER_MS, "done", False), (11 * NS_PER_MS, "arrive", False),
                    (12 * NS_PER_MS, "arrive", False)], floor=5)
    assert [a is None for a in again] == [True] * 6 + [False]


def test_the_bound_follows_the_drain_rate_over_busy_time_only():
    """Completions per busy second, measured over windows of busy time as long as the SLO (500 ms): 40
    invocations of 25 ms each, one at a time, fill two windows; the first closes as the 20th ends, before
    that completion is counted (it goes to the next window): 19 in 0.5 s, 38/s; the second holds 20, 40/s;
    their EWMA is 39/s, and with the 500 ms SLO the bound is 19. The second of idle time after each does not
    dilute the rate."""
    script: Script = []
    t = 0
    for _ in range(40):  # one in flight at a time, each 25 ms busy, then 1 s idle
        script += [(t, "arrive", False), (t + 25 * NS_PER_MS, "done", True)]
        t += 25 * NS_PER_MS + NS_PER_S
    assert 40 * 25 * NS_PER_MS == 2 * 500 * NS_PER_MS
    answers = replay([*script, *burst(25, t)], floor=2, slo_ms=500.0)
    assert all(a is None for a in answers[:40])
    after = answers[40:]
    assert [a is None for a in after] == [True] * 19 + [False] * 6
    full = after[19]
    assert full is not None and full.rate_rps == pytest.approx(39.0) and full.bound == 19
    assert full.retry_after_s == pytest.approx(1 / 39)  # (in flight - bound + 1) / rate
    # the same busy time with none completed (shed or failed) drains nothing: the floor is all that is left
    shed = [(t_ns, e, False) for t_ns, e, _ in script]
    assert [a is None for a in replay([*shed, *burst(25, t)], floor=2, slo_ms=500.0)[40:]] == [True] * 2 + [False] * 23


def test_the_same_event_sequence_gets_the_same_answers():
    """The bound's only inputs are the events and their times: two instances fed one sequence answer alike,
    refusal for refusal (what lets the simulator run the gateway's admission deterministically)."""
    script: Script = []
    t = 0
    for i in range(400):  # arrivals every 2 ms, completions 37 ms later for two out of three
        script.append((t, "arrive", False))
        if i >= 18:
            script.append((t + 1, "done", i % 3 != 0))
        t += 2 * NS_PER_MS
    a, b = replay(script, floor=6, slo_ms=60.0), replay(script, floor=6, slo_ms=60.0)
    assert a == b and any(x is None for x in a) and any(x is not None for x in a)


def test_the_gateway_uses_the_platform_implementation():
    from gpufaas.gateway import service

    assert service.QueueBounds is QueueBounds and service.queue_floor is queue_floor


# ---------------------------------------------------------------- in the simulator


def overload(tmp_path: Path) -> Scenario:
    """One A100 in 10 units (floor: 10 x the entry stage's largest batch, 32 = 320) offered far more
    image-classify than it serves under batch1-wholegpu."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("gpu_types:\n  - {name: A100-80GB, memory_mb: 81920, price_per_hour_usd: 5.12, share_units: 10}\n"
                       "nodes:\n  - {name: node-0, gpu_type: A100-80GB, gpus: 1}\n")
    sc = tmp_path / "sc.yaml"
    sc.write_text(f"""
name: overload
seed: 3
duration_s: 4
warmup_s: 1
drain_s: 2
cluster: {cluster}
functions: [{FUNCTIONS / 'preprocess'}, {FUNCTIONS / 'resnet50'}]
workflows: [{FUNCTIONS / 'workflows' / 'image-classify.yaml'}]
workload:
  streams:
    - {{workflow: image-classify, arrival: poisson, rate_rps: 400}}
""")
    return load_scenario(sc)


def simulate(sc: Scenario, queue_bounds: bool) -> tuple[dict, list[Invocation], list[tuple[Invocation, str]]]:
    ended: list[Invocation] = []
    refused: list[tuple[Invocation, str]] = []
    report = run_scenario(sc, "batch1-wholegpu", queue_bounds=queue_bounds, on_end=ended.append,
                          on_refused=lambda inv, limit: refused.append((inv, limit)))
    return report, ended, refused


def test_the_simulator_refuses_past_the_floor_only_when_asked(tmp_path: Path):
    sc = overload(tmp_path)
    report, ended, refused = simulate(sc, queue_bounds=False)
    assert refused == [] and report["admission_rejected"] == {}

    report, ended, refused = simulate(sc, queue_bounds=True)
    warmup_end_ns = int(sc.effective_warmup_s() * NS_PER_S)
    assert refused and {limit for _, limit in refused} == {"queue"}
    assert report["admission_rejected"] == {"queue": sum(inv.arrival_ns >= warmup_end_ns for inv, _ in refused)}
    assert all(inv.status == InvocationStatus.REJECTED and inv.finish_ns == inv.arrival_ns and not inv.slo_met
               for inv, _ in refused)  # ended at the door, never queued
    floor = 320
    for inv, _ in refused:  # every refusal came with at least the floor admitted and not yet ended
        t = inv.arrival_ns
        assert sum(1 for e in ended if e.arrival_ns <= t < e.finish_ns) >= floor
    # the first refusal comes exactly when the floor is reached (no drain rate can raise it yet)
    first = min(inv.arrival_ns for inv, _ in refused)
    assert sum(1 for e in ended if e.arrival_ns <= first) == floor
    # deterministic: the same refusals at the same virtual times
    again = simulate(sc, queue_bounds=True)[2]
    assert [inv.arrival_ns for inv, _ in again] == [inv.arrival_ns for inv, _ in refused]


# ---------------------------------------------------------------- a standing queue (outcomes, not counts)


def _wf(tmp_path: Path) -> WorkflowRt:
    """image-classify as the overload scenario's controller compiles it (an Invocation needs a real one)."""
    sc = overload(tmp_path)
    return build_controller(sc, build_policy(sc, "batch1-wholegpu"), VirtualClock()).workflows["image-classify"]


class Feed:
    """One QueueBounds fed real Invocations of one workflow (SLO 100 ms), in the order the gateway feeds it:
    `arrive` (check, then add when admitted), `end` (an admitted one ends with a status at a time)."""

    def __init__(self, wf: WorkflowRt, floor: int) -> None:
        self.qb, self.wf, self.floor = QueueBounds(), wf, floor
        self.waiting: list[Invocation] = []
        self.ids = iter(range(1, 10**6))

    def arrive(self, t_ns: int) -> QueueFull | None:
        full = self.qb.check(self.wf.name, 100.0, t_ns, self.floor)
        if full is None:
            self.qb.add(self.wf.name, t_ns)
            self.waiting.append(Invocation(next(self.ids), self.wf, t_ns, 100 * NS_PER_MS))
        return full

    def end(self, t_ns: int, status: InvocationStatus, k: int = 1) -> None:
        for _ in range(k):
            inv = self.waiting.pop(0)
            inv.status, inv.finish_ns = status, t_ns
            self.qb.ended(inv, t_ns)


def _after_a_burst(tmp_path: Path, how_16_end: InvocationStatus) -> tuple[Feed, QueueFull | None, int]:
    """A measured drain rate (20 on-time invocations of 10 ms, one every 50 ms), then a burst of 30 below the
    floor of 50, of which 16 end `how_16_end` 200 ms later (late when shed or completed; a failure is not),
    then one more arrival with 14 still in flight: its answer."""
    feed = Feed(_wf(tmp_path), floor=50)
    for i in range(20):
        assert feed.arrive(i * 50 * NS_PER_MS) is None
        feed.end(i * 50 * NS_PER_MS + 10 * NS_PER_MS, InvocationStatus.COMPLETED)
    t = NS_PER_S
    assert all(feed.arrive(t + i * NS_PER_MS) is None for i in range(30))  # a burst below the floor: admitted
    feed.end(t + 200 * NS_PER_MS, how_16_end, 16)
    return feed, feed.arrive(t + 201 * NS_PER_MS), t


def test_a_standing_queue_sets_the_floor_aside_until_the_workflow_drains(tmp_path: Path):
    feed, full, t = _after_a_burst(tmp_path, InvocationStatus.REJECTED)
    # most of what ended lately missed its SLO: the drain rate alone bounds it, far below the floor
    assert full is not None and full.in_flight == 14 and full.bound < feed.floor
    assert full.rate_rps > 0 and full.bound == max(1, int(full.rate_rps * 0.1))
    assert feed.qb.standing == {feed.wf.name}
    feed.end(t + 250 * NS_PER_MS, InvocationStatus.COMPLETED, 14)  # the backlog is gone: the floor is back
    assert feed.qb.standing == set()
    assert all(feed.arrive(t + 300 * NS_PER_MS + i) is None for i in range(30))


def test_late_completions_make_a_standing_queue_and_failures_do_not(tmp_path: Path):
    late = _after_a_burst(tmp_path, InvocationStatus.COMPLETED)[1]  # finished 200 ms after arrival: late
    assert late is not None and late.in_flight == 14
    feed, failed, _ = _after_a_burst(tmp_path, InvocationStatus.FAILED)  # a handler's error says nothing of load
    assert failed is None and feed.qb.standing == set()
