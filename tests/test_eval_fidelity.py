"""`gpufaas fidelity`: the comparison's arithmetic on hand-made figures, the measured-cost model of the
simulated side (`LiveCosts`, `MeasuredSimBackend`) on hand-made costs, what the process backend measures,
the instances each side started, the host's CPU figures, the live clock's precise timers, a live pass that outlasts its own wake, bad input, and one short live run against its simulation (inproc
backend, emulated GPUs), judged with tolerances derived from the run's own measurements, as
tests/test_loadgen_live_vs_sim.py does."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from gpufaas.loadgen import fidelity as F
from gpufaas.loadgen import host_cpu
from gpufaas.loadgen.scenario import load_scenario, resolve_scenario
from gpufaas.platform.backends.fake import FakeBackend
from gpufaas.platform.backends.process import Costs
from gpufaas.platform.clock import NS_PER_MS, LoopClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.decisions import Decisions
from gpufaas.platform.profiles import Profiles
from tests.conftest import FUNCTIONS, SCENARIOS
from tests.helpers import run_cli

EPOLL_GRANULARITY_MS = 1.0
TICK_S = 0.02  # CPU times count in clock ticks (USER_HZ, 100 per second on Linux): two ticks of rounding, either end


def test_side_stats_and_compare():
    sim = F.side_stats([F.Sample("w", True, float(x)) for x in range(1, 101)] + [F.Sample("w", False, None)])
    assert sim["w"]["invocations"] == 101 and sim["w"]["slo_hit_rate"] == round(100 / 101, 6)
    assert 50 <= sim["w"]["p50_ms"] <= 51 and 99 <= sim["w"]["p99_ms"] <= 100
    live = {"w": {**sim["w"], "slo_hit_rate": sim["w"]["slo_hit_rate"] - 0.02, "p50_ms": sim["w"]["p50_ms"] * 1.1,
                  "p99_ms": sim["w"]["p99_ms"] * 1.25}}
    d = F.compare(sim, live)["w"]
    assert d["within_targets"] is True
    assert d["diff"]["p50_rel"] == pytest.approx(0.1, abs=1e-4) and d["diff"]["slo_hit_rate"] == pytest.approx(-0.02)
    for key, bad in (("slo_hit_rate", sim["w"]["slo_hit_rate"] - 0.04), ("p50_ms", sim["w"]["p50_ms"] * 1.2),
                     ("p99_ms", sim["w"]["p99_ms"] * 0.6)):
        assert F.compare(sim, {"w": {**sim["w"], key: bad}})["w"]["within_targets"] is False, key
    only = F.compare(sim, {})  # a workflow the live run never saw fails the targets
    assert only["w"]["live"] is None and only["w"]["within_targets"] is False


def test_host_cpu_usage_splits_the_machines_busy_time_into_the_runs_and_the_rest():
    a = host_cpu.CpuSnapshot(at_ns=0, busy_s=100.0, steal_s=3.0, own_s=1.0, waiting_s=50.0)
    b = host_cpu.CpuSnapshot(at_ns=10_000_000_000, busy_s=116.0, steal_s=3.5, own_s=13.0, waiting_s=52.5)
    assert host_cpu.usage(a, b, 2) == {"cores": 2, "wall_s": 10.0, "waiting_share": 0.25, "busy_share": 0.8, "own_cpu_s": 12.0,
                                       "other_cpu_s": 4.0, "steal_s": 0.5}
    # the machine's busy time is sampled per tick and can fall below the run's own: the rest is then 0, not negative
    c = host_cpu.CpuSnapshot(at_ns=10_000_000_000, busy_s=111.0, steal_s=3.0, own_s=13.0)
    assert host_cpu.usage(a, c, 2)["other_cpu_s"] == 0.0
    assert host_cpu.usage(a, c, 2)["waiting_share"] is None  # the kernel did not report it
    text = "some avg10=4.54 avg60=9.08 avg300=6.23 total=102689110\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    assert host_cpu.parse_pressure(text) == 102.68911
    with pytest.raises(ValueError):
        host_cpu.parse_pressure("full avg10=0.00 total=0\n")


def test_host_cpu_counts_this_processs_own_work():
    before = host_cpu.snapshot()
    cpu_end_s = time.process_time() + 0.3
    x = 0
    while time.process_time() < cpu_end_s:  # 0.3 s of this process's CPU by the kernel's own clock, however busy the machine
        x += sum(range(1000))
    u = host_cpu.usage(before, host_cpu.snapshot(), host_cpu.cores())
    assert u["own_cpu_s"] >= 0.3 - TICK_S
    assert u["own_cpu_s"] <= u["busy_share"] * u["cores"] * u["wall_s"] + TICK_S  # the machine's busy time holds it


def test_live_costs_are_replayed_in_time_order():
    costs = Costs()
    origin = 1_000 * NS_PER_MS
    for fn, t_ms, extra_ms in (("a", 10, 3), ("a", 5, 1), ("b", 7, 2), ("a", 20, -1)):  # out of order; one negative
        costs.dispatch_ns.append((fn, 1, origin + t_ms * NS_PER_MS, extra_ms * NS_PER_MS))
    for fn, t_ms, cold_ms in (("a", 0, 900), ("b", 0, 300), ("a", 15, 500)):
        costs.cold_start_ns.append((fn, origin + t_ms * NS_PER_MS, cold_ms * NS_PER_MS))
    lc = F.LiveCosts.of(costs, origin)
    assert lc.dispatch["a"].at_ns == (5 * NS_PER_MS, 10 * NS_PER_MS, 20 * NS_PER_MS)
    assert lc.dispatch["a"].value_ns == (NS_PER_MS, 3 * NS_PER_MS, 0)  # a batch is never faster than its profile
    # the batch that started last at or before t (the first one before any)
    assert [lc.extra_at("a", t * NS_PER_MS) for t in (0, 5, 9, 10, 19, 25)] == [x * NS_PER_MS for x in (1, 1, 1, 3, 3, 0)]
    assert lc.extra_at("never-measured", 0) == 0
    assert [lc.cold_start_at("a", t * NS_PER_MS) for t in (0, 14, 15, 99)] == [x * NS_PER_MS for x in (900, 900, 500, 500)]
    assert lc.cold_start_at("never-started", 0) == 500 * NS_PER_MS  # the median of all
    assert F.LiveCosts.of(Costs(), origin).cold_start_at("a", 0) is None  # nothing measured: the profile's
    summary = lc.summary()
    assert summary["cold_start_ms"] == 500.0 and summary["cold_starts"] == 3 and summary["dispatch_ms"]["a"]["batches"] == 3
    assert summary["dispatch_ms"]["b"]["p50"] == 2.0


def _samples(costs: F.LiveCosts | None) -> list[F.Sample]:
    sc = load_scenario(resolve_scenario("chain", "--scenario")).model_copy(update={"duration_s": 6.0, "warmup_s": 1.0})
    return F.run_sim(sc, "esg", 0.25, 1, costs)[1]


def test_measured_sim_backend_adds_the_measured_costs():
    plain = _samples(None)
    assert _samples(F.LiveCosts({}, {}, None)) == plain  # nothing measured: the shipped model, exactly
    extra_ms = 4
    costs = F.LiveCosts({"preprocess": F.Series((0,), (extra_ms * NS_PER_MS,))}, {}, None)
    slower = _samples(costs)
    assert _samples(costs) == slower  # deterministic
    assert [s.workflow for s in slower] == [s.workflow for s in plain]  # the same invocations
    p50 = lambda xs: float(np.median([s.latency_ms for s in xs if s.latency_ms is not None]))  # noqa: E731
    # every invocation passes preprocess once: the median moves by about its extra time (batching may absorb a little)
    assert extra_ms * 0.5 <= p50(slower) - p50(plain) <= extra_ms * 1.5
    # a measured cold start replaces the profile's (seconds): the first instances are ready sooner, so fewer early misses
    quick = _samples(F.LiveCosts({}, {}, 100 * NS_PER_MS))  # the median of all, for functions never started live
    assert sum(s.hit for s in quick) >= sum(s.hit for s in plain)


def test_live_arrival_lags_delay_the_simulated_arrivals_in_order():
    """A live loop stall holds the invocations due during it; the simulated run replays each one's arrival lag
    (the later of the gateway loop's lateness and the driver's send lag), so
    the invocations scheduled in the stall reach the controller together at its end, in their order."""
    from gpufaas.loadgen.driver import COMPLETED, Record
    from gpufaas.loadgen.simdriver import run_scenario
    from gpufaas.loadgen.workload import arrivals

    sc = load_scenario(resolve_scenario("chain", "--scenario")).model_copy(update={"duration_s": 3.0, "warmup_s": 0.5})
    sched = list(arrivals(sc.workload, 1, sc.duration_s, 0.5))
    stall_end_ns = 1_000 * NS_PER_MS  # the loop was held from 0.8 s to 1 s
    in_stall = [(t, i) for t, i in sched if 800 * NS_PER_MS <= t < stall_end_ns]
    assert len(in_stall) >= 3
    # the loop was held (LoopProbe) over the first half of the stall, the driver was late over the second half
    half = len(in_stall) // 2
    loop_lags = {(t, i): stall_end_ns - t for t, i in in_stall[:half]}
    records = [Record(t, i, stall_end_ns - t if (t, i) in in_stall[half:] else 0, 0, COMPLETED, True, 1.0) for t, i in sched]
    costs = F.LiveCosts({}, {}, None).with_arrival_lags(records, loop_lags)
    assert all(costs.lag_at(t, i) == stall_end_ns - t for t, i in in_stall) and costs.lag_at(123, 0) == 0
    assert costs.summary()["arrival_lags"] == len(sched)

    def arrived(lag):
        out: list[tuple[int, int]] = []
        run_scenario(sc, "esg", seed=1, load=0.5, arrival_lag_ns=lag, on_end=lambda inv: out.append((inv.id, inv.arrival_ns)))
        return [t for _, t in sorted(out)]  # by invocation id: submission order

    plain, lagged = arrived(None), arrived(costs.lag_at)
    assert plain == [t for t, _ in sched]  # on schedule
    assert len(lagged) == len(plain) and lagged == sorted(lagged)  # the same invocations, in order
    assert [t for t in lagged if 800 * NS_PER_MS <= t < stall_end_ns] == []  # none reached it during the stall
    assert lagged.count(stall_end_ns) == len(in_stall)  # all of them at its end
    assert [a for a, p in zip(lagged, plain) if p >= stall_end_ns] == [p for p in plain if p >= stall_end_ns]


def test_refusals_count_as_misses_without_a_latency_on_both_sides(tmp_path: Path):
    """A live 429 (the gateway's admission) and a simulated queue-bound refusal are the same sample: not
    completed, a miss, out of the latency quantiles, counted in `refused`."""
    from gpufaas.loadgen.driver import COMPLETED, LiveRun, Record, classify_answer
    from tests.test_admission import overload

    kind, slo_met, server_ms = classify_answer(429, b'{"error": {"code": "quota_exceeded", "message": "full"}}')
    run = LiveRun("http://gw", ["w"], [Record(0, 0, 0, 0, COMPLETED, True, 99.0),  # in the warm-up: left out
                                      Record(2 * NS_PER_MS * 1000, 0, 0, 5 * NS_PER_MS, COMPLETED, True, 5.0),
                                      Record(2 * NS_PER_MS * 1000, 0, 0, 1 * NS_PER_MS, kind, slo_met, server_ms)])
    live = F.live_samples(run, warmup_s=1.0)
    assert live == [F.Sample("w", True, 5.0), F.Sample("w", False, None, refused=True)]
    assert F.side_stats(live)["w"] == {"invocations": 2, "slo_hit_rate": 0.5, "p50_ms": 5.0, "p99_ms": 5.0, "refused": 1}

    sc = overload(tmp_path)  # tests/test_admission.py: far more than one GPU serves
    report, samples = F.run_sim(sc, "batch1-wholegpu", 1.0, sc.seed)
    refused = [x for x in samples if x.refused]
    assert len(refused) == report["admission_rejected"]["queue"] > 0  # the simulated run applies the queue bound
    assert all(not x.hit and x.latency_ms is None for x in refused)
    stats = F.side_stats(samples)["image-classify"]
    assert stats["refused"] == len(refused) and stats["invocations"] == len(samples)


def test_loop_probe_measures_how_late_the_gateway_loop_was_at_each_arrival():
    """A callback that holds the loop from about 15 ms to 35 ms or later: the arrivals due in the hold are read
    together when it ends (lags that differ by exactly their schedule's spacing, each at least the hold's
    remainder), and the arrivals before it and after it are not held."""
    import time as _time

    sched = [(10 * NS_PER_MS, 0), (20 * NS_PER_MS, 1), (30 * NS_PER_MS, 0), (60 * NS_PER_MS, 1)]

    async def probe() -> dict:
        clock = LoopClock(asyncio.get_running_loop())
        t0 = clock.now_ns() + 5 * NS_PER_MS
        p = F.LoopProbe(clock, sched, t0)
        clock.call_at(t0 + 15 * NS_PER_MS, lambda: _time.sleep(0.020))
        await asyncio.sleep(0.1)
        p.stop()
        return p.lag_ns

    lag = asyncio.run(probe())
    assert set(lag) == set(sched)
    held, later = lag[sched[1]], lag[sched[2]]
    assert held >= 15 * NS_PER_MS and later >= 5 * NS_PER_MS  # due at 20 and 30 ms, the hold ended at 35 ms or later
    assert held - later == 10 * NS_PER_MS  # read at the same instant
    assert lag[sched[0]] < held and lag[sched[3]] < later  # not in the hold (whatever else the machine does)


@pytest.mark.live
def test_driver_process_reports_a_refused_start_as_one_line_and_ends_its_child():
    """The driver in its own process: a gateway that does not answer is the driver's one-line UserError,
    raised by `started()`; `close()` leaves no child behind."""
    from gpufaas.loadgen.driver_process import DriverProcess
    from gpufaas.platform.errors import UserError

    sc = load_scenario(resolve_scenario("chain", "--scenario"))

    async def go() -> None:
        d = DriverProcess(gateway="http://127.0.0.1:9", workload=sc.workload, seed=1, duration_s=1.0)
        await d.start()
        try:
            with pytest.raises(UserError, match="no gateway answered") as e:
                await d.started()
            assert "\n" not in str(e.value)
        finally:
            await d.close()
        assert d.returncode == 0  # it exited by itself after its error

    asyncio.run(go())


def test_loop_clock_timers_are_not_rounded_to_the_loop_millisecond():
    """Sub-millisecond waits: asyncio's loop rounds each timer up to the next whole millisecond; the clock's
    timers do not. Compared within one run (medians of the same delays), not against a fixed figure."""
    async def lateness(clock: LoopClock, use_loop: bool) -> float:
        loop = asyncio.get_running_loop()
        late = []
        for i in range(40):
            when = clock.now_ns() + (100 + 20 * i) * 1000
            fut = loop.create_future()
            fire = lambda w=when, f=fut: (late.append(clock.now_ns() - w), f.set_result(None))  # noqa: E731
            if use_loop:
                loop.call_later((when - clock.now_ns()) / 1e9, fire)
            else:
                clock.call_at(when, fire)
            await fut
        return float(np.median(late))

    async def both() -> tuple[float, float]:
        clock = LoopClock(asyncio.get_running_loop())
        return await lateness(clock, False), await lateness(clock, True)

    precise, rounded = asyncio.run(both())
    assert precise < rounded / 2, (precise, rounded)



def test_a_timer_added_by_a_callback_does_not_delay_an_earlier_one():
    """The precise timers arm one fd for the earliest deadline: a callback that schedules a later timer while
    an earlier one waits must not leave the fd armed for the later one (it did: the waiting timer then fired
    with the later one, and a 5 s schedule of invocations timed out in the schemathesis run)."""
    async def run() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        clock = LoopClock(loop)
        t0 = clock.now_ns()
        done = loop.create_future()
        fired: dict[str, int] = {}
        clock.call_at(t0 + 50 * NS_PER_MS, lambda: fired.setdefault("waiting", clock.now_ns()))
        clock.call_at(t0 + 900 * NS_PER_MS, lambda: done.set_result(None))

        def first() -> None:  # fires first and schedules a timer later than the waiting one
            clock.call_at(t0 + 800 * NS_PER_MS, lambda: None)

        clock.call_at(t0 + 1 * NS_PER_MS, first)
        await done
        return fired["waiting"], t0

    fired_ns, t0 = asyncio.run(run())
    assert fired_ns - t0 < 800 * NS_PER_MS  # before the later timer's deadline, not with it

@pytest.mark.live
def test_process_backend_measures_its_costs(tmp_path: Path):
    from tests.test_process_backend import GOOD, setup, submit

    async def go() -> None:
        ctl, be = setup(tmp_path, latency_ms=2.0)
        try:
            invs = [await asyncio.wait_for(submit(ctl, GOOD), 60) for _ in range(5)]
        finally:
            await be.aclose()
        (fn, start_ns, cold_ns), = be.costs.cold_start_ns
        (inst,) = ctl.instances.values()  # one instance served the five, one after another
        assert fn == "echo" and start_ns == inst.start_ns and 0 < cold_ns <= inst.cold_start_ns
        assert [(f, n) for f, n, _, _ in be.costs.dispatch_ns] == [("echo", 1)] * 5
        # what the policy started, as started, with the policy's reason and the start time
        assert list(be.costs.started) == [("echo", inst.share_units, inst.start_reason, inst.start_ns)]
        for inv, (_, _, start_ns, extra_ns) in zip(invs, be.costs.dispatch_ns):
            s, e = inv.stage_ns[0]
            assert s == start_ns and extra_ns >= 0  # the worker holds at least the profiled 2 ms
            assert e - s >= 2 * NS_PER_MS + extra_ns  # the controller saw the batch end after the backend had it

    asyncio.run(go())


def test_instances_started_per_side():
    S = F.Started
    sim = [S("b", 2, "need", 0), S("a", 3, "need", 1_500_000_000), S("b", 4, "shed", 2_000_000_000)]
    live = [S("a", 3, "need", 1_400_000_000), S("c", 1, "", 0)]
    out = F.pools(sim, live)
    assert {fn: (d["sim"], d["live"]) for fn, d in out.items()} == {"a": ([3], [3]), "b": ([2, 4], []), "c": ([], [1])}
    assert out["b"]["why"] == {"sim": [[0.0, 2, "need"], [2.0, 4, "shed"]], "live": []}
    assert out["a"]["why"]["live"] == [[1.4, 3, "need"]]
    assert F.pools(sim, None)["b"]["live"] is None  # inproc: the live side is not measured
    started: list[F.Started] = []
    sc = load_scenario(resolve_scenario("chain", "--scenario")).model_copy(update={"duration_s": 6.0, "warmup_s": 1.0})
    report, _ = F.run_sim(sc, "esg", 0.25, 1, started=started)
    # every stage's pool started (chain: preprocess -> resnet50); the report counts the starts after the warm-up
    assert {s.function for s in started} == {"preprocess", "resnet50"} and len(started) >= report["cold_starts"]
    assert all(s.share_units >= 1 for s in started)
    # esg says why: each function's first instance, with nothing running yet, is its need
    firsts = {s.function: s for s in reversed(started)}
    assert {s.reason for s in firsts.values()} == {"need"}, firsts
    assert all(s.reason for s in started) and [s.start_ns for s in started] == sorted(s.start_ns for s in started)


class _SlowPass:
    """A policy whose first pass outlasts its own wake (a live pass takes real time); records its calls."""

    name = "slow-pass"
    params = None

    def __init__(self, clock: LoopClock, calls: list[int], again: asyncio.Event) -> None:
        self.clock, self.calls, self.again = clock, calls, again

    def initial_state(self, view) -> None:
        return None

    def schedule(self, view, now_ns: int, state: None) -> tuple[Decisions, None]:
        self.calls.append(now_ns)
        if len(self.calls) > 1:
            self.again.set()
            return Decisions(), None
        wake_ns = now_ns + NS_PER_MS
        while self.clock.now_ns() <= wake_ns:  # busy for longer than the wake it asks for
            pass
        return Decisions((), wake_ns), None


def test_a_wake_that_falls_due_during_a_live_pass_runs_at_once():
    """The live controller once refused such a wake as 'not in the future' and set no timer: with the policy's
    standing rules, nothing called it again until another event (fidelity saw a live gateway without ticks for
    over a second, its rate estimates frozen, while the simulator, whose passes take no time, ticked on)."""
    from tests.helpers import cluster

    async def go() -> tuple[list[int], dict]:
        clock = LoopClock(asyncio.get_running_loop())
        calls: list[int] = []
        again = asyncio.Event()
        ctl = Controller(cluster(), Profiles.shipped(), _SlowPass(clock, calls, again), FakeBackend(), clock, live=True)
        ctl.apply(Decisions((), clock.now_ns() + NS_PER_MS))  # the first pass, by a wake of its own
        await asyncio.wait_for(again.wait(), 10)
        return calls, dict(ctl.acct.refusal_reasons)

    calls, refused = asyncio.run(go())
    assert len(calls) == 2 and calls[1] > calls[0] + NS_PER_MS  # the second pass came after the wake it asked for
    assert "wake" not in refused


@pytest.mark.parametrize("argv, needle", [(["--scenario", "chain", "--duration", "0"], "--duration"),
                                          (["--scenario", "chain", "--load", "-1"], "--load"),
                                          (["--scenario", "chain", "--policy", "nosuch"], "unknown policy"),
                                          (["--scenario", "chain", "--sim-model", "nosuch"], "--sim-model"),
                                          (["--scenario", "nosuch"], "--scenario"),
                                          (["--scenario", "noisy-tenant"], "tenants"),
                                          # a study's input, every part checked before its first run
                                          (["--scenario", "chain", "--load", "0.5,x"], "--load"),
                                          (["--scenario", "chain", "--load", "0.5,0"], "--load"),
                                          (["--scenario", "chain,,video"], "empty name"),
                                          (["--scenario", "chain,nosuch", "--rounds", "2"], "nosuch"),
                                          (["--scenario", "chain,noisy-tenant"], "tenants"),
                                          (["--scenario", "chain", "--rounds", "0"], "--rounds"),
                                          (["--scenario", "chain", "--out", "/proc/no/such"], "--out")])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, out, err = run_cli(["fidelity", *argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1 and needle in err


@pytest.mark.live
@pytest.mark.slow
def test_live_and_sim_agree_per_workflow(tmp_path, capsys):
    sc = tmp_path / "sc.yaml"
    sc.write_text(f"""
name: fid
seed: 7
duration_s: 8
warmup_s: 3
drain_s: 10
cluster: {SCENARIOS / 'clusters' / 'a100x4.yaml'}
functions: [{FUNCTIONS / 'preprocess'}, {FUNCTIONS / 'resnet50'}, {FUNCTIONS / 'distilbert'}, {FUNCTIONS / 'bert-base'}, {FUNCTIONS / 'aggregator'}]
workflows: [{FUNCTIONS / 'workflows' / 'image-classify.yaml'}, {FUNCTIONS / 'workflows' / 'text-pipeline.yaml'}]
workload:
  streams:
    - {{workflow: image-classify, arrival: poisson, rate_rps: 40}}
    - {{workflow: text-pipeline, arrival: poisson, rate_rps: 20}}
""")
    code, out, err = run_cli(["fidelity", "--scenario", str(sc), "--duration", "8", "--backend", "inproc", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["per_workflow"]) == {"image-classify", "text-pipeline"}
    assert doc["meta"]["seed"] == 7 and doc["warmup_s"] == 3
    dg = doc["diagnostics"]
    lag_ms = max(EPOLL_GRANULARITY_MS, dg["loop_lateness_ms"]["max"])
    pools = dg["instances_started"]  # inproc: the live side's starts are not measured
    assert set(pools) == {"preprocess", "resnet50", "distilbert", "bert-base", "aggregator"}
    assert all(d["sim"] and d["live"] is None for d in pools.values())
    decision_ms = (dg["decision_us"] or {}).get("p99", 0.0) / 1000
    stages = {"image-classify": 2, "text-pipeline": 3}
    for w, d in doc["per_workflow"].items():
        s, lv = d["sim"], d["live"]
        # the same invocations in the window (same seed, same schedule), every one ended on both sides
        assert s["invocations"] == lv["invocations"] > 50
        # each invocation moves by at most 2 waits per stage x (timer lateness + decision time); the live run is
        # never faster at the median than the simulation less that bound, nor slower by more than it
        bound_ms = 2 * stages[w] * (lag_ms + decision_ms)
        assert abs(lv["p50_ms"] - s["p50_ms"]) <= bound_ms, (w, d, dg)
        assert lv["client_p50_ms"] >= lv["p50_ms"]  # the client side adds the HTTP path
        assert set(s) >= {"slo_hit_rate", "p50_ms", "p99_ms"} and set(lv) >= {"slo_hit_rate", "p50_ms", "p99_ms"}
        assert d["diff"]["p50_ms"] == pytest.approx(lv["p50_ms"] - s["p50_ms"], abs=1e-3)
    host = dg["host_cpu"]  # over the live run: the gateway (this process) served 8 s of arrivals and deployed first
    assert host["wall_s"] >= 8 and host["own_cpu_s"] > 0 and 0 < host["busy_share"] <= 1
    assert host["waiting_share"] is None or 0 <= host["waiting_share"] <= 1


def test_the_report_names_the_rule_behind_each_start_where_the_pools_parted(capsys):
    from gpufaas.gateway.cli.fidelity_cmd import print_report

    S = F.Started
    pools = F.pools([S("vit-b16", 2, "need", 18_000_000)],
                    [S("vit-b16", 2, "need", 31_000_000), S("vit-b16", 3, "shed", 1_232_000_000)])
    same = {"slo_hit_rate": 1.0, "p50_ms": 30.0, "p99_ms": 90.0, "invocations": 10, "refused": 0}
    doc = {"scenario": "video", "policy": "esg", "load": 1.0, "seed": 1, "duration_s": 30.0, "backend": "process",
           "sim_model": "measured", "warmup_s": 3.0, "sim_decision_us": {"p99": 100.0},
           "per_workflow": {"video-analytics": {"sim": same, "live": same, "within_targets": True,
                                                "diff": {"slo_hit_rate": 0.0, "p50_rel": 0.0, "p99_rel": 0.0}}},
           "diagnostics": {"loop_lateness_ms": None, "driver_lag_ms": None, "http_path_ms": None, "decision_us": None, "live_errors": {},
                           "sim_model": None, "instances_started": pools,
                           "host_cpu": {"cores": 2, "wall_s": 33.2, "waiting_share": 0.37, "busy_share": 0.91, "own_cpu_s": 48.5,
                                        "other_cpu_s": 11.9, "steal_s": 0.4}}}
    print_report(doc)
    out = capsys.readouterr().out
    assert "vit-b16 [2] / [2, 3]" in out
    assert "vit-b16 live: 0.031 s 2 (need), 1.232 s 3 (shed)" in out and "vit-b16 sim: 0.018 s 2 (need)" in out
    assert ("(33.2 s, 2 cores): some task waited for a CPU 37 % of the time; 91 % busy; this run's processes 48.5 core-s, "
            "other processes 11.9, steal 0.4") in " ".join(out.split())  # as one line, however the console wrapped it
