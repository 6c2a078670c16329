"""The workflow queue bound (`platform.admission`), one implementation for the gateway and the simulator:
its decisions on scripted (time, event) sequences, without any clock or timing, and in a simulated run,
where `run_scenario(queue_bounds=True)` refuses past the floor under overload and the default run refuses
nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufaas.loadgen.scenario import Scenario, load_scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.platform.admission import DRAIN_WINDOW_NS, QueueBounds, QueueFull, queue_floor
from gpufaas.platform.runtime import Invocation, InvocationStatus
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
    """Completions per busy second, measured over one DRAIN_WINDOW_NS of busy time: 40 invocations of 25 ms
    each, one at a time, fill 1 s of busy time; the window closes as the 40th ends, before that completion is
    counted (it goes to the next window), so the rate is 39/s and with a 500 ms SLO the bound is 19. The
    second of idle time after each does not dilute the rate."""
    script: Script = []
    t = 0
    for _ in range(40):  # one in flight at a time, each 25 ms busy, then 1 s idle
        script += [(t, "arrive", False), (t + 25 * NS_PER_MS, "done", True)]
        t += 25 * NS_PER_MS + NS_PER_S
    assert 40 * 25 * NS_PER_MS == DRAIN_WINDOW_NS
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
