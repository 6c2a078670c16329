"""`gpufaas fidelity`: one workload served live and simulated, compared per workflow.

The live side is the real gateway (`gateway.app.create_app`) in this process, on uvloop as `gpufaas up`
serves it, on a real TCP port (aiohttp `AppRunner`/`TCPSite` on 127.0.0.1), with the scenario's cluster, policy parameters, keep-alive
and profiles, the inproc or process backend, emulated execution; the scenario's functions and workflows
are deployed over HTTP and the live driver (`loadgen.driver.Driver`), in a process of its own
(`loadgen.driver_process.DriverProcess`: a load generator does not share its server's loop), replays the
scenario's workload at the given load and seed. The simulated side is `loadgen.simdriver.run_scenario` on the same scenario,
load and seed: the same arrival times, invocation for invocation.

What is compared, and why so (each a source of difference that is not the platform's, removed here):
- the same invocations: those *scheduled* after the scenario's warm-up (the simulator's cut; in the live
  run by each record's scheduled time, not by when it happened to be sent);
- SLO hit = invocations that finished by their deadline / invocations in the window, failures, rejections
  and timeouts counted as misses on both sides;
- admission: the simulated run applies the gateway's workflow queue bound (`platform.admission.QueueBounds`,
  the one implementation both sides run; `run_scenario(queue_bounds=True)`), so an invocation that the live
  gateway refuses at the door (HTTP 429) has its simulated counterpart: on both sides it is not completed,
  misses its SLO and is left out of the latency quantiles; each side's refusals are reported (`refused`);
- latency = the gateway's own figure (`latency_ms` of each answer: arrival at the controller to the
  workflow's end), the quantity the simulator models; the client-side figure (from the scheduled send
  time, so it adds the driver's lateness and the HTTP path) is reported beside it;
- quantiles of the exact per-invocation latencies on both sides, one definition
  (`platform.stats.quantiles`), instead of the simulator's log-bucketed histogram (1 % relative error).

What remains is the platform's own, and each part is either removed from the live path or measured there
and given to the simulator's model:
- lost policy ticks: a live pass takes real time, and a wake that fell due during it used to be refused,
  leaving the live policy without ticks (and its rate estimates frozen) until another event; it now runs
  the next pass at once (`Controller._pass`), as the simulator's zero-time passes always did;
- timer lateness: the controller's waits (inter-stage transfers, batch windows) are `LoopClock` timers,
  which now fire within tens of microseconds (a timerfd; the loop's own timers rounded each up to the next
  whole millisecond);
- the process backend's dispatch path (msgpack framing, the Unix socket both ways, the worker's wake-up
  and hold overshoot, the loop's hops): the live run measures it on every batch (`ProcessBackend.costs`),
  and the simulated run gives each batch the extra time that its function's live batches took at that
  point of the run (`MeasuredSimBackend`), instead of none;
- cold starts: an emulated worker is a real process, ready in under a second, not the profile's container +
  runtime + model load of seconds (which the policy still plans with, live and simulated alike); the
  simulated run's instances take the live run's measured ones instead (by function, in time order);
- the loop's stalls: while a policy pass, a round of worker starts or anything else on the machine holds
  the gateway's loop, the requests that come in wait and then reach the controller together; a timer on
  the gateway's clock at each scheduled arrival (`LoopProbe`) measures how late the loop was then, and each
  simulated arrival is delayed by the later of that and the driver's own send lag
  (`LiveCosts.with_arrival_lags`), so both controllers see the same bursts.
The simulated run therefore follows the live one (`--sim-model measured`, the default; `--sim-model
profile` simulates with the shipped model alone). The policy's CPU time beyond the stalls it causes (a pass's
decisions take effect at once in the simulator) and the decisions that these shifts change (batch fill,
placement) are left to the comparison, as is the host's CPU: the live side's GPUs are processes on this
machine's cores, and when the machine is short of CPU (its own run or other work) the live side slows
where the simulated one does not. `diagnostics` reports the gateway loop's lateness (`LoopProbe`), the
host's CPU over the live run (`host_cpu`: the share of the time some task waited for a CPU, the busy
share, the run's own CPU time and the rest's; `loadgen.host_cpu`), the driver's send lag, the gateway's
decision time, the HTTP path, the measured costs (`sim_model`) and the share of each instance that each
side's policy started (`instances_started`: where they part, the pools that meet the next burst differ,
and with them that workflow's tail).

Who calls it: `gpufaas fidelity` (gateway/cli/fidelity_cmd.py) and the tests. What it changes: a temporary
data folder for the gateway (removed afterwards), the instances it starts and the driver's process (both
ended before it returns).
"""

from __future__ import annotations

import asyncio
import bisect
import secrets
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from gpufaas.loadgen import host_cpu
from gpufaas.loadgen.driver import COMPLETED, LiveRun, Record
from gpufaas.loadgen.scenario import Scenario
from gpufaas.platform.backends.process import Costs, Started
from gpufaas.platform.backends.sim import SimBackend
from gpufaas.platform.clock import NS_PER_MS, NS_PER_S, Clock, Handle, VirtualClock
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import Batch, Instance, Invocation, InvocationStatus
from gpufaas.platform.stats import quantiles

# The targets for a faithful simulator, per workflow
MAX_HIT_DIFF = 0.03   # |hit_sim - hit_live|
MAX_P50_REL = 0.15    # |p50_live - p50_sim| / p50_sim
MAX_P99_REL = 0.30    # |p99_live - p99_sim| / p99_sim
BACKENDS = ("inproc", "process")
SIM_MODELS = ("measured", "profile")
# The driver process's head start: its schedule's time 0 is this long after it reports it (Driver.on_start), so
# that the gateway's LoopProbe, armed when that report comes in (a pipe and a thread hop, well under 10 ms on
# a busy 2-core host), is in place before the first arrival.
DRIVER_HEAD_START_S = 0.25
REFUSED_KIND_PREFIX = "http_429_"  # loadgen.driver's record kind of a 429 answer: refused at admission


@dataclass(frozen=True)
class Sample:
    """One invocation of the comparison window: its workflow, whether it met its SLO, its latency (ms; None
    when it did not complete), and whether admission refused it at the door (live: an HTTP 429)."""

    workflow: str
    hit: bool
    latency_ms: float | None
    refused: bool = False


def side_stats(samples: Iterable[Sample]) -> dict[str, dict]:
    """Per workflow (sorted): invocations, SLO hit rate, p50 and p99 of the completed ones' latency (None when
    none completed), invocations refused at admission. Pure; both sides go through it, so they share one
    quantile definition."""
    by: dict[str, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.workflow, []).append(s)
    out = {}
    for w in sorted(by):
        ss = by[w]
        lat = np.fromiter((s.latency_ms for s in ss if s.latency_ms is not None), dtype=float)
        p50, p99 = (round(float(x), 3) for x in quantiles(lat, (0.5, 0.99))) if len(lat) else (None, None)
        out[w] = {"invocations": len(ss), "slo_hit_rate": round(sum(s.hit for s in ss) / len(ss), 6), "p50_ms": p50, "p99_ms": p99,
                  "refused": sum(s.refused for s in ss)}
    return out


def compare(sim: dict[str, dict], live: dict[str, dict]) -> dict[str, dict]:
    """`{WF: {"sim", "live", "diff", "within_targets"}}` for every workflow on either side: `diff` is live
    minus sim (hit rate; p50 and p99 in ms and relative to sim), `within_targets` the issue's targets
    (hit within 0.03, p50 within 15 %, p99 within 30 %). Pure."""
    out = {}
    for w in sorted(set(sim) | set(live)):
        s, lv = sim.get(w), live.get(w)
        diff: dict[str, float | None] = {}
        ok = False
        if s is not None and lv is not None:
            hit_diff = round(lv["slo_hit_rate"] - s["slo_hit_rate"], 6)
            diff["slo_hit_rate"] = hit_diff
            ok = abs(hit_diff) <= MAX_HIT_DIFF
            for key, limit in (("p50_ms", MAX_P50_REL), ("p99_ms", MAX_P99_REL)):
                a, b = s[key], lv[key]
                if a is None or b is None:
                    diff[key] = diff[key.replace("_ms", "_rel")] = None
                    ok = ok and a is None and b is None
                    continue
                diff[key] = round(b - a, 3)
                rel = (b - a) / a if a > 0 else (0.0 if b == a else float("inf"))
                diff[key.replace("_ms", "_rel")] = round(rel, 4)
                ok = ok and abs(rel) <= limit
        out[w] = {"sim": s, "live": lv, "diff": diff, "within_targets": ok}
    return out


# ---------------------------------------------------------------- the live platform's measured costs


@dataclass(frozen=True)
class Series:
    """Measured figures of one function in time order: `at_ns` (ns from the workload's start) and the
    figure measured then, `value_ns`."""

    at_ns: tuple[int, ...]
    value_ns: tuple[int, ...]

    @classmethod
    def of(cls, points: list[tuple[int, int]]) -> "Series":
        points = sorted(points)
        return cls(tuple(t for t, _ in points), tuple(v for _, v in points))

    def at(self, t_ns: int) -> int:
        """The figure measured last at or before `t_ns` (the first one, before any)."""
        return self.value_ns[max(bisect.bisect_right(self.at_ns, t_ns) - 1, 0)]


class LoopProbe:
    """The gateway loop's lateness at each scheduled arrival: a timer on the gateway's clock (the
    controller's own kind, `Clock.call_at`) at each arrival's scheduled time, `t0_ns` + its offset, and how
    late it ran (`lag_ns`, keyed (scheduled ns, target) as `Record`). A request that reaches the gateway while
    its loop is held waits as long as that timer does. One timer is armed at a time; arrivals due together
    are read at once. Who builds it: `run_live`, when the driver reports its time 0; `stop()` cancels it."""

    def __init__(self, clock: Clock, schedule: Iterable[tuple[int, int]], t0_ns: int) -> None:
        self._clock = clock
        self._it = iter(schedule)
        self._t0_ns = t0_ns
        self._next: tuple[int, int] | None = next(self._it, None)
        self._handle: Handle | None = None
        self.lag_ns: dict[tuple[int, int], int] = {}
        self._arm()

    def _arm(self) -> None:
        self._handle = None if self._next is None else self._clock.call_at(self._t0_ns + self._next[0], self._fire)

    def _fire(self) -> None:
        now = self._clock.now_ns()
        while self._next is not None and self._t0_ns + self._next[0] <= now:
            self.lag_ns[self._next] = now - (self._t0_ns + self._next[0])
            self._next = next(self._it, None)
        self._arm()

    def stop(self) -> None:
        """Cancel the armed timer; `lag_ns` keeps what was measured."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@dataclass(frozen=True)
class LiveCosts:
    """What the live backend's own path cost in one run, as the simulated run replays it, per function in
    time order: each batch's measured extra time beyond its profiled execution (`Costs.dispatch_ns`) and each
    instance's measured cold start (Start -> ready); and the median cold start of all, for a function the
    live run never started; `started`: each instance the live policy started, in order, its time from the
    workload's start (not replayed: `diagnostics.instances_started` compares it with the simulated run's);
    `arrival_lag_ns`: each invocation's live arrival lag, replayed as the delay of its simulated arrival
    (`with_arrival_lags`)."""

    dispatch: dict[str, Series]
    cold_start: dict[str, Series]
    cold_start_median_ns: int | None
    started: tuple[Started, ...] = ()
    arrival_lag_ns: dict[tuple[int, int], int] = field(default_factory=dict)
    """(scheduled ns, target) -> how late that invocation reached the live gateway's loop; see `with_arrival_lags`."""

    @classmethod
    def of(cls, costs: Costs, origin_ns: int) -> "LiveCosts":
        """The figures of a process backend's `Costs`; `origin_ns`: the workload's start on the backend's clock.
        NOTE: replayed by time, per function, not drawn by batch size: the live cost is set by what holds the
        cores at the time (the gateway's loop, the workers, whatever else runs on the machine) far more than
        by the batch's size, and it comes in spells that span many batches; a cold start likewise depends on
        how many start at once. A (function, size) cell would often hold a handful of samples."""
        batches: dict[str, list[tuple[int, int]]] = {}
        for fn, _, start_ns, extra_ns in costs.dispatch_ns:
            batches.setdefault(fn, []).append((start_ns - origin_ns, max(0, extra_ns)))  # never faster than the profile
        starts: dict[str, list[tuple[int, int]]] = {}
        for fn, start_ns, cold_ns in costs.cold_start_ns:
            starts.setdefault(fn, []).append((start_ns - origin_ns, cold_ns))
        colds = sorted(ns for _, _, ns in costs.cold_start_ns)
        return cls({fn: Series.of(xs) for fn, xs in sorted(batches.items())},
                   {fn: Series.of(xs) for fn, xs in sorted(starts.items())}, colds[len(colds) // 2] if colds else None,
                   tuple(s._replace(start_ns=s.start_ns - origin_ns) for s in costs.started))

    def with_arrival_lags(self, records: Iterable[Record], loop_lag_ns: dict[tuple[int, int], int]) -> "LiveCosts":
        """These costs and each invocation's arrival lag: the later of the driver's send lag (`Record.lag_ns`,
        its own process) and the gateway loop's lateness when it was due (`loop_lag_ns`, `LoopProbe`).
        NOTE: while the gateway's loop is held by other work (a policy pass, a round of worker starts, whatever
        else runs on the machine), the requests that come in wait in their sockets and reach the controller
        together when it ends; the rate estimate, the batches and the backlog rule all see that burst.
        Replaying each lag in the simulated run gives it the same arrivals the live controller saw (measured
        when the driver's sends were timers on the gateway's loop, their lag the loop's: with it alone, two
        fidelity rounds met 10 and 9 of 10 rows, against 8 of 10 before)."""
        lags = {(r.sched_ns, r.target): max(0, r.lag_ns) for r in records}
        for key, lag in loop_lag_ns.items():
            if lag > lags.get(key, 0):
                lags[key] = lag
        return replace(self, arrival_lag_ns=lags)

    def lag_at(self, t_ns: int, target: int) -> int:
        """The live arrival lag of the invocation scheduled at `t_ns` for `target` (0 when not measured)."""
        return self.arrival_lag_ns.get((t_ns, target), 0)

    def extra_at(self, function: str, t_ns: int) -> int:
        """The measured extra time of `function`'s live batch that started last at or before `t_ns` (0 for a
        function never measured)."""
        s = self.dispatch.get(function)
        return 0 if s is None else s.at(t_ns)

    def cold_start_at(self, function: str, t_ns: int) -> int | None:
        """The measured cold start of `function`'s live instance that started last at or before `t_ns`; the
        median of all for a function the live run never started; None when nothing was measured."""
        s = self.cold_start.get(function)
        return self.cold_start_median_ns if s is None else s.at(t_ns)

    def summary(self) -> dict:
        """The JSON of `diagnostics.sim_model`: per function the batches measured and their extra ms (p50,
        p99, mean); the median cold start in ms and the instances measured."""
        out: dict[str, dict] = {}
        for fn, s in self.dispatch.items():
            p50, p99 = quantiles(np.asarray(s.value_ns, dtype=float) / NS_PER_MS, (0.5, 0.99))
            out[fn] = {"batches": len(s.value_ns), "p50": round(float(p50), 3), "p99": round(float(p99), 3),
                       "mean": round(float(np.mean(s.value_ns)) / NS_PER_MS, 3)}
        cold = None if self.cold_start_median_ns is None else round(self.cold_start_median_ns / NS_PER_MS, 1)
        return {"dispatch_ms": out, "cold_start_ms": cold, "cold_starts": sum(len(s.at_ns) for s in self.cold_start.values()),
                "arrival_lags": len(self.arrival_lag_ns),
                "arrival_lag_ms_max": round(max(self.arrival_lag_ns.values(), default=0) / NS_PER_MS, 3)}


class RecordingSimBackend(SimBackend):
    """The sim backend (the shipped model, unchanged) that also records each instance the policy starts,
    in order, in `started` (`diagnostics.instances_started`).
    Who builds it: `run_sim` (through `run_scenario(sim_backend=...)`)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.started: list[Started] = []

    def start(self, inst: Instance) -> None:
        self.started.append(Started.of(inst))
        super().start(inst)


class MeasuredSimBackend(RecordingSimBackend):
    """The sim backend with the live platform's measured costs (`LiveCosts`): an instance is ready after the
    cold start that its function's live instances took at that point of the run (the policy still plans with
    the profile's, as it does live), and a batch takes its profiled latency plus the extra time that its
    function's live batches took then.
    Deterministic for given costs. Who builds it: `run_sim` (through `run_scenario(sim_backend=...)`)."""

    # NOTE: a subclass in the one module that uses it, not options of SimBackend: the simulator's hot path
    # (SimBackend.submit, once per batch) keeps no branch for a model that only fidelity runs; the shipped
    # model, and so every golden file, is unchanged. It reuses SimBackend's timer bodies (_ready, _done).
    def __init__(self, clock: Clock, costs: LiveCosts) -> None:
        super().__init__(clock)
        self.costs = costs

    def start(self, inst: Instance) -> None:
        self.started.append(Started.of(inst))
        now = self.clock.now_ns()
        cold_ns = self.costs.cold_start_at(inst.function.name, now)
        if cold_ns is None:
            SimBackend.start(self, inst)
            return
        self._live.add(inst.id)
        self.clock.call_at_fast(now + cold_ns, self._ready, inst)

    def submit(self, inst: Instance, batch: Batch) -> None:
        extra_ns = self.costs.extra_at(inst.function.name, batch.start_ns)
        self.clock.call_at_fast(batch.start_ns + inst.batch_latency_ns(len(batch.jobs)) + extra_ns, self._done, inst, batch)


# ---------------------------------------------------------------- the two sides


def run_sim(sc: Scenario, policy: str, load: float, seed: int, costs: LiveCosts | None = None,
            started: list[Started] | None = None) -> tuple[dict, list[Sample]]:
    """The simulator's report and the samples of its comparison window (invocations that arrived after the
    warm-up), from each invocation as it ended or was refused by the gateway's queue bound (applied here as
    live); with `costs`, on `MeasuredSimBackend` (else the shipped model, `RecordingSimBackend`). `started`,
    when given, gets each instance the simulated policy started, in order."""
    from gpufaas.loadgen.simdriver import run_scenario

    warmup_end_ns = int(sc.effective_warmup_s() * NS_PER_S)
    samples: list[Sample] = []

    def ended(inv: Invocation) -> None:
        if inv.arrival_ns >= warmup_end_ns:
            done = inv.status == InvocationStatus.COMPLETED
            samples.append(Sample(inv.workflow.name, done and inv.finish_ns <= inv.deadline_ns,
                                  (inv.finish_ns - inv.arrival_ns) / NS_PER_MS if done else None))

    def refused(inv: Invocation, limit: str) -> None:
        if inv.arrival_ns >= warmup_end_ns:
            samples.append(Sample(inv.workflow.name, False, None, refused=True))

    backends: list[RecordingSimBackend] = []

    def backend(clock: VirtualClock) -> SimBackend:
        b = RecordingSimBackend(clock) if costs is None else MeasuredSimBackend(clock, costs)
        backends.append(b)
        return b

    report = run_scenario(sc, policy, seed=seed, load=load, on_end=ended, queue_bounds=True, on_refused=refused,
                          sim_backend=backend, arrival_lag_ns=costs.lag_at if costs is not None and costs.arrival_lag_ns else None)
    if started is not None:
        started.extend(x for b in backends for x in b.started)
    return report, samples


def live_samples(run: LiveRun, warmup_s: float, client_side: bool = False) -> list[Sample]:
    """The live run's comparison window: records scheduled after the warm-up. Latency: the gateway's
    (`server_ms`), or with `client_side` the client's from the scheduled send time. A 429 answer
    (`http_429_*`: the gateway's admission refused it) is a refused sample."""
    out = []
    for r in run.records:
        if r.sched_ns < warmup_s * NS_PER_S:
            continue
        lat = None
        if r.kind == COMPLETED:
            lat = r.latency_ns / NS_PER_MS if client_side else r.server_ms
        out.append(Sample(run.workflows[r.target], bool(r.slo_met), lat, r.kind.startswith(REFUSED_KIND_PREFIX)))
    return out


def stack_file(scenario_path: Path, folder: Path) -> Path:
    """A stack manifest in `folder` deploying the scenario's functions and workflows as the scenario file
    names them (bundle folders and YAML files by absolute path; inline specs as they are)."""
    import yaml

    from gpufaas.loadgen.scenario import entry_path
    from gpufaas.platform.specs import read_yaml

    data = read_yaml(scenario_path)
    doc: dict = {"version": "1"}
    for key in ("functions", "workflows"):
        doc[key] = [str(entry_path(e, scenario_path.parent, f"{scenario_path}: {key}")) if isinstance(e, str) else e
                    for e in data.get(key, [])]
    p = folder / "stack.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


async def run_live(sc: Scenario, scenario_path: Path, policy: str, load: float, seed: int, backend: str,
                   folder: Path, timeout_s: float = 30.0) -> tuple[LiveRun, LiveCosts | None, dict[tuple[int, int], int]]:
    """Serve the scenario on a gateway in this process (real port, emulated execution, `backend`), deploy
    its stack over HTTP, replay its workload with the driver in a process of its own (`DriverProcess`) and
    return the run, the backend's measured costs (process backend; None for inproc, whose costs are the
    profile's) and the gateway loop's lateness at each arrival (`LoopProbe.lag_ns`). The gateway is stopped
    (its instances with it) before this returns."""
    import yaml
    from aiohttp import web

    from gpufaas.gateway.app import create_app
    from gpufaas.gateway.client import Client, deploy_stack, load_stack
    from gpufaas.gateway.config import GatewayConfig
    from gpufaas.gateway.http_io import PLATFORM
    from gpufaas.loadgen.driver_process import DriverProcess
    from gpufaas.loadgen.workload import arrivals
    from gpufaas.platform.backends.process import ProcessBackend

    cluster = folder / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(sc.cluster.model_dump(mode="json")))
    key = secrets.token_hex(16)
    cfg = GatewayConfig(backend=backend, execute="emulated", data_dir=folder / "gw", port=0, policy=policy,
                        policy_params=sc.params.get(policy, {}), cluster_file=cluster, keep_alive_s=sc.keep_alive_s,
                        invocation_timeout_s=timeout_s, admin_key=key)
    profiles = (Path(sc.profiles),) if sc.profiles else ()
    app = create_app(cfg, profiles_dirs=profiles)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    probe: LoopProbe | None = None
    driver: DriverProcess | None = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}"
        items = load_stack(stack_file(scenario_path, folder))
        await asyncio.get_running_loop().run_in_executor(None, lambda: deploy_stack(Client(url, api_key=key), items))
        plat = app[PLATFORM]
        driver = DriverProcess(gateway=url, workload=sc.workload, seed=seed, duration_s=sc.duration_s, load=load,
                               timeout_s=timeout_s, source=str(scenario_path), api_key=key, head_start_s=DRIVER_HEAD_START_S)
        await driver.start()
        origin_ns = await driver.started()
        probe = LoopProbe(plat.clock, arrivals(sc.workload, seed, sc.duration_s, load), origin_ns)
        run = await driver.finished()
        live_backend = plat.backend
        costs = None
        if isinstance(live_backend, ProcessBackend):
            costs = LiveCosts.of(live_backend.costs, origin_ns).with_arrival_lags(run.records, probe.lag_ns)
        return run, costs, probe.lag_ns
    finally:
        if probe is not None:
            probe.stop()
        if driver is not None:
            await driver.close()
        await runner.cleanup()


def _pct(xs: list[float]) -> dict | None:
    if not xs:
        return None
    p50, p99 = quantiles(np.asarray(xs, dtype=float), (0.5, 0.99))
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(max(xs)), 3)}


def pools(sim: Iterable[Started], live: Iterable[Started] | None) -> dict[str, dict]:
    """`diagnostics.instances_started`: per function (sorted), the share units of each instance that the
    policy started on each side, in start order (whole run, warm-up included; `live` None: not measured,
    the inproc backend), and in `why` each start as [seconds from the workload's start, share units, the
    policy's reason (`Start.reason`)]. Both sides run the same policy on the same arrivals, so a difference
    here means its decisions parted (different timings seen, e.g. a rate estimate), and a pool of another
    size meets the next burst: the usual cause of a tail that differs while the per-batch costs agree; the
    reason and time of the first start that only one side made say which rule parted them. Pure."""
    out: dict[str, dict] = {}
    for side, xs in (("sim", sim), ("live", live or ())):
        for s in xs:
            d = out.setdefault(s.function, {"sim": [], "live": [] if live is not None else None,
                                            "why": {"sim": [], "live": [] if live is not None else None}})
            d[side].append(s.share_units)
            d["why"][side].append([round(s.start_ns / NS_PER_S, 3), s.share_units, s.reason])
    return {fn: out[fn] for fn in sorted(out)}


def diagnostics(run: LiveRun, warmup_s: float, loop_lag_ns: dict[tuple[int, int], int]) -> dict:
    """What explains live minus sim, measured in the live run: the gateway loop's lateness at each arrival
    (`LoopProbe`), the driver's send lag (its own process), the gateway's decision time per pass, the HTTP
    path (client minus gateway latency per completed invocation) and the live errors."""
    cut_ns = warmup_s * NS_PER_S
    window = [r for r in run.records if r.sched_ns >= cut_ns]
    http = [r.latency_ns / NS_PER_MS - r.server_ms for r in window if r.kind == COMPLETED and r.server_ms is not None]
    return {"loop_lateness_ms": _pct([lag / NS_PER_MS for (t, _), lag in loop_lag_ns.items() if t >= cut_ns]),
            "driver_lag_ms": _pct([r.lag_ns / NS_PER_MS for r in window]),
            "decision_us": (run.usage_after or {}).get("decision_us"),
            "http_path_ms": _pct(http),
            "live_errors": {k: sum(1 for r in window if r.kind == k) for k in sorted({r.kind for r in window} - {COMPLETED})}}


def check_scenario(sc: Scenario) -> None:
    """UserError (one line) for a scenario the live side cannot replay as the simulator runs it: one with
    tenants (the live gateway would need a tenant, a key and per-tenant copies for each)."""
    from gpufaas.gateway.tenants import DEFAULT_TENANT

    if sc.tenants or any(t.tenant != DEFAULT_TENANT for t in sc.workload.targets()):
        raise UserError(f"--scenario: {sc.name} has tenants; fidelity replays single-tenant scenarios (chain, video, mixed)")


def load_checked(path: Path, duration_s: float) -> Scenario:
    """The scenario at `path` as a fidelity run replays it: `duration_s` of arrivals; UserError when the live
    side cannot replay it (`check_scenario`), SpecError when its warm-up is not shorter than `duration_s`.
    Who calls it: `run_fidelity`, and `gpufaas fidelity` for every scenario of a study before its first run."""
    from gpufaas.loadgen.scenario import load_scenario

    sc = load_scenario(path)
    check_scenario(sc)
    sc = sc.model_copy(update={"duration_s": duration_s})
    sc.effective_warmup_s()  # SpecError when the scenario's warm-up is not shorter than --duration
    return sc


def run_fidelity(scenario_path: str | Path, *, duration_s: float, policy: str = "esg", load: float = 1.0,
                 seed: int | None = None, backend: str = "process", sim_model: str = "measured") -> dict:
    """Run the scenario live, then simulated (module docstring; `sim_model` "measured": with the live
    run's measured costs, "profile": the shipped model alone) and return the JSON of `gpufaas fidelity
    --json`: `per_workflow` (`compare`), the client-side live figures, `diagnostics` and `meta`."""
    import uvloop

    from gpufaas.loadgen.results import effective_params, file_sha256, run_meta

    if backend not in BACKENDS:
        raise UserError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if sim_model not in SIM_MODELS:
        raise UserError(f"--sim-model: {sim_model!r} is not one of {', '.join(SIM_MODELS)}")
    path = Path(scenario_path)
    sc = load_checked(path, duration_s)
    warmup_s = sc.effective_warmup_s()
    seed = sc.seed if seed is None else seed
    cpu0 = host_cpu.snapshot()
    # NOTE: on uvloop, as `gpufaas up` serves (gateway.app.serve): the live side measures the gateway users run.
    with tempfile.TemporaryDirectory(prefix="gpufaas-fidelity-") as tmp, \
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        run, costs, loop_lag_ns = runner.run(run_live(sc, path, policy, load, seed, backend, Path(tmp)))
    host = host_cpu.usage(cpu0, host_cpu.snapshot(), host_cpu.cores())  # the gateway, its workers and the driver ended
    sim_started: list[Started] = []
    report, sim_samples = run_sim(sc, policy, load, seed, costs if sim_model == "measured" else None, sim_started)
    live = live_samples(run, warmup_s)
    per = compare(side_stats(sim_samples), side_stats(live))
    client = side_stats(live_samples(run, warmup_s, client_side=True))
    for w, d in per.items():
        if d["live"] is not None and w in client:
            d["live"]["client_p50_ms"] = client[w]["p50_ms"]
            d["live"]["client_p99_ms"] = client[w]["p99_ms"]
    dg = diagnostics(run, warmup_s, loop_lag_ns)
    dg["host_cpu"] = host
    dg["sim_model"] = costs.summary() if costs is not None and sim_model == "measured" else None
    dg["instances_started"] = pools(sim_started, costs.started if costs is not None else None)
    # refused at admission in the comparison window (per workflow: `per_workflow.*.{sim,live}.refused`)
    dg["refused"] = {"sim": sum(s.refused for s in sim_samples), "live": sum(s.refused for s in live),
                     "sim_by_limit": report["admission_rejected"]}
    return {"scenario": sc.name, "policy": policy, "backend": backend, "sim_model": sim_model, "load": load, "seed": seed,
            "duration_s": duration_s, "warmup_s": warmup_s, "per_workflow": per,
            "within_targets": all(d["within_targets"] for d in per.values()),
            "diagnostics": dg,
            "sim_decision_us": report["decision_us"],
            "meta": run_meta(file_sha256(path), seed, effective_params(sc, [policy]))}
