"""`batch1-wholegpu`: classic serverless. One request per batch, one whole GPU per instance.

What it decides, per function queue: each queued job goes to an idle warm instance, the most recently
used one first (OpenWhisk's container pool and Lambda reuse the warmest container), so that instances
beyond what the load needs go idle and are reclaimed when their keep-alive expires. Jobs left over are a
backlog: while it exceeds the number of instances already cold-starting, and the function has fewer
instances than its autoscaler wants, one more instance is started on free GPU capacity (the job is
not pinned to it: whichever instance frees first takes it). Without free capacity it evicts the
longest-idle warm instance of another function (OpenWhisk-style container eviction); a function with
no instance at all, when none is idle, drains one busy instance of the function that holds the most
GPUs (it stops after its current batch and its GPU is reserved in the policy state), so no function
starves. No batching, no sharing between requests, no SLO awareness: the floor every other policy is
compared against.

"Whole GPU" is the largest share the function offers on a GPU type (its profile covers): the whole GPU
where the profile measures share 1, else its largest measured slice (3/7 on a GPU profiled only as MIG
slices 1g..3g, say). Then several such instances may sit on one GPU, placed best fit; each takes one
request at a time all the same.

Who calls it: the controller (`schedule`), through the registry name `batch1-wholegpu`. What it may
change: nothing it reaches through the view; its memory is the `Batch1State` it returns.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from gpufaas.platform.decisions import Decisions, Dispatch, Start, Stop
from gpufaas.platform.policy.params import PolicyParams, validate
from gpufaas.platform.runtime import FunctionRt, Instance, InstanceState
from gpufaas.platform.views import ClusterView

NS_PER_S = 1_000_000_000  # policies may not import the clock module (import-linter `policy-is-pure`)

# NOTE: Knative's KPA, the autoscaler of a classic serverless platform, with its defaults: instances
# wanted = in-flight requests / (container concurrency 1 x target utilisation 0.7), averaged over a 60 s
# stable window, or over a 6 s panic window when that asks for at least twice the instances there are.
# In-flight requests are estimated by Little's law as arrival rate x batch-1 service time, the rate
# counted exactly from the AFW queues' arrival counters between samples (so it does not depend on when
# the policy happens to be called). Knative averages per-second buckets over the time since its first
# one, so no rate is claimed over less than one second: an early burst cannot pass for a high rate.
# Every function's window starts at the first sample, taken at the first request of any workflow: a
# stage whose upstream was still cold-starting receives that backlog in one burst (a 50 rps chain hands
# ResNet-50 ~120 requests in 60 ms), and counting from the first sample spreads them over the time the
# requests really arrived in, instead of reading a 2000 rps rate that wants a GPU per request.
# NOTE: Little's law on the offered load leaves queueing out of "in flight", where Knative's measured
# concurrency counts it: after a cold-start backlog this scales out less than Knative's panic mode
# would (a slower drain), and under steady load it does not keep an instance per queueing burst.
TARGET_UTILISATION = 0.7
STABLE_WINDOW_NS = 60 * NS_PER_S
PANIC_WINDOW_NS = 6 * NS_PER_S
PANIC_THRESHOLD = 2.0
SAMPLE_NS = NS_PER_S
# scale-out runs on an autoscaler tick (Knative evaluates every 2 s; we use 100 ms)
SCALE_TICK_NS = 100_000_000
_NO_RESERVATIONS: Mapping[int, str] = MappingProxyType({})


class Batch1State(NamedTuple):
    """What the policy remembers between calls.

    `reserved`: GPUs being drained -> the function (with no instance) they are kept for;
    `next_scale_ns`: the next autoscaler tick; `samples`: (time, arrivals so far per function), at least
    `SAMPLE_NS` apart, reaching back just past the stable window."""

    reserved: Mapping[int, str]
    next_scale_ns: int
    samples: tuple[tuple[int, Mapping[str, int]], ...]


class Batch1WholeGpu:
    """Classic serverless: batch 1, the largest share per instance, MRU dispatch, Knative-style scale-out."""

    name = "batch1-wholegpu"
    Params = PolicyParams  # no parameters: the classic platform's defaults (module docstring)

    def __init__(self, **params: Any) -> None:
        self.params = validate(self.name, self.Params, params)

    def initial_state(self, view: ClusterView) -> Any:
        return Batch1State({}, 0, ())

    def schedule(self, view: ClusterView, now_ns: int, state: Any) -> tuple[Decisions, Any]:
        actions: list = []
        used: set[int] = set()  # instances stopped or given work in this pass: not eviction victims
        taken: dict[str, int] = {}  # jobs dispatched per function in this pass
        orphaned = False  # some function has queued jobs and no instance at all
        idle_by = view.idle_by_function
        instances_by = view.instances_by_function
        for q in view.ready_queues():
            fname = q.function
            idle = idle_by[fname]
            if not idle:
                if not orphaned and not instances_by[fname]:
                    orphaned = True
                continue
            jobs = q.jobs
            j = 0  # jobs[:j] are dispatched or skipped; each idle instance takes the next one it may run
            for inst in _most_recent_first(idle):
                if inst.id in used:
                    continue  # took a job of another workflow's queue for the same function
                while j < len(jobs) and jobs[j].excluded == inst.id:
                    j += 1  # a retry may not go back to the instance it failed on
                if j == len(jobs):
                    break
                used.add(inst.id)
                actions.append(Dispatch((jobs[j].id,), inst.id))
                taken[fname] = taken.get(fname, 0) + 1
                j += 1
        reserved_in, next_scale_ns, samples = state
        # NOTE: between ticks a pass only dispatches queued jobs to idle instances (the common case, kept
        # to the loop above), which is what the standing rules Decisions.quiet_until_match and idle_pulls
        # promise the controller; a function with no instance at all is served at once. A reservation is
        # for a function with queued jobs and no instance, so none survives this branch. The rate samples
        # are taken only below, so the calls the standing rules skip change nothing.
        if now_ns < next_scale_ns and not orphaned:
            return (Decisions(tuple(actions), next_scale_ns, True, True),
                    Batch1State(_NO_RESERVATIONS, next_scale_ns, samples))
        samples = _sample(view, now_ns, samples)
        backlog: dict[str, int] = {}
        for q in view.ready_queues():
            backlog[q.function] = backlog.get(q.function, 0) + len(q.jobs)
        for fname, k in taken.items():
            backlog[fname] -= k
        # a reservation lives while its function still has a backlog and no instance
        reserved = {g: f for g, f in reserved_in.items() if backlog.get(f, 0) > 0 and not view.instances(f)}
        short = [f for f, w in backlog.items() if w > 0 and w > view.starting_count(f)]
        if not short:
            return Decisions(tuple(actions)), Batch1State(reserved, next_scale_ns, samples)
        want = _desired(view, now_ns, samples)
        free_u = {g.id: g.free_units for g in view.gpus}
        free_m = {g.id: g.free_mb for g in view.gpus}
        victims: list | None = None  # idle instances that could be evicted, longest idle first
        # functions without any instance first, so that none starves
        for fname in sorted(short, key=lambda f: len(view.instances(f)) > 0):
            waiting = backlog[fname]
            fn = view.functions[fname]
            live = view.instances(fname)
            starting = view.starting_count(fname)
            n_live = len(live)
            while waiting > starting and n_live < want.get(fname, 1):
                gpu = _free_gpu(view, fn, reserved, free_u, free_m)
                if gpu is not None:
                    reserved.pop(gpu.id, None)
                else:
                    starving = not live and not starting
                    if victims is None:
                        victims = _eviction_candidates(view, want)
                    # NOTE: a function without any instance may evict any idle instance, even the last one of
                    # its function: whole-GPU instances must time-share the cluster by eviction, else six
                    # functions on four GPUs deadlock.
                    victim = next((v for v, excess in victims if v.id not in used and v.function.name != fname
                                   and (starving or excess) and _fits_after(fn, v, free_u, free_m)), None)
                    if victim is not None:
                        used.add(victim.id)
                        actions.append(Stop(victim.id))
                        gpu = victim.gpu
                        free_u[gpu.id] += victim.share_units
                        free_m[gpu.id] += victim.memory_mb
                    else:
                        if not live and not starting and fname not in reserved.values():
                            drain = _drain_victim(view, fn, used, backlog, now_ns, free_u, free_m)
                            if drain is not None:
                                used.add(drain.id)
                                actions.append(Stop(drain.id))  # frees its GPU after the current batch
                                reserved[drain.gpu.id] = fname
                        break
                units = whole_units(fn, gpu.type_name)
                free_u[gpu.id] -= units
                free_m[gpu.id] -= fn.tables[gpu.type_name].memory_mb(1)
                actions.append(Start(fname, gpu.id, units, 1, reason="queue"))
                starting += 1
                n_live += 1
        return Decisions(tuple(actions)), Batch1State(reserved, now_ns + SCALE_TICK_NS, samples)


def whole_units(fn: FunctionRt, gpu_type: str) -> int:
    """The "whole GPU" of `fn` on `gpu_type`: its largest offered share, in units; 0 where it cannot run
    batch 1 there (no profile for the type, or one that does not measure batch 1)."""
    units = fn.share_units.get(gpu_type)
    if not units or fn.tables[gpu_type].batches[0] != 1:
        return 0
    return max(units)


def _most_recent_first(idle: Mapping[int, Instance]):
    """Idle instances, most recently used first. The controller's map is longest idle first; instances
    that went idle in the same instant keep that order, as the controller's idle pulls do (so a pass
    decides what the pulls it stands for would)."""
    if len(idle) == 1:
        return idle.values()
    return sorted(idle.values(), key=lambda i: -i.idle_since_ns)  # stable: ties stay in map order


def _sample(view: ClusterView, now_ns: int, samples: tuple) -> tuple:
    """`samples` with one for `now_ns` if the last is `SAMPLE_NS` old, trimmed to one at or before the
    stable window's start."""
    if samples and now_ns - samples[-1][0] < SAMPLE_NS:
        return samples
    out = samples + ((now_ns, view.arrivals_by_function()),)
    cut = now_ns - STABLE_WINDOW_NS
    k = 0
    while k + 1 < len(out) and out[k + 1][0] <= cut:
        k += 1
    return out[k:]


def _rates_rps(now_ns: int, samples: tuple, window_ns: int, counts: dict[str, int]) -> dict[str, float]:
    """Arrival rate per function over the last `window_ns` (or since the first sample), over at least a
    second. `counts`: the arrivals so far (`ClusterView.arrivals_by_function`)."""
    base_ns, base = samples[0]
    for t, c in samples:
        if t > now_ns - window_ns:
            break
        base_ns, base = t, c
    span_s = max(now_ns - base_ns, SAMPLE_NS) / NS_PER_S
    return {f: (n - base.get(f, 0)) / span_s for f, n in counts.items()}


def _service_s(view: ClusterView, fn: FunctionRt) -> float:
    """Batch-1 time of `fn` at its whole share on the first GPU's type it runs on."""
    for g in view.gpus:
        units = whole_units(fn, g.type_name)
        if units:
            return fn.latency_ns(g.type_name, 1, units, g.share_units) / NS_PER_S
    return 0.0


def _desired(view: ClusterView, now_ns: int, samples: tuple) -> dict[str, int]:
    """Instances wanted per function (Knative KPA: stable window, or panic window when it asks for at
    least `PANIC_THRESHOLD` times the live instances); at least one."""
    counts = samples[-1][1] if samples[-1][0] == now_ns else view.arrivals_by_function()
    stable = _rates_rps(now_ns, samples, STABLE_WINDOW_NS, counts)
    panic = _rates_rps(now_ns, samples, PANIC_WINDOW_NS, counts)
    out = {}
    for fname, fn in view.functions.items():
        svc_s = _service_s(view, fn)
        want = math.ceil(stable.get(fname, 0.0) * svc_s / TARGET_UTILISATION)
        want_panic = math.ceil(panic.get(fname, 0.0) * svc_s / TARGET_UTILISATION)
        if want_panic >= PANIC_THRESHOLD * max(1, len(view.instances(fname))):
            want = max(want, want_panic)
        out[fname] = max(1, want)
    return out


def _free_gpu(view: ClusterView, fn: FunctionRt, reserved: dict[int, str], free_u: dict[int, int],
              free_m: dict[int, float]):
    """The GPU with free room for one whole-share instance of `fn` that leaves the least share over (then
    the first in cluster order), not reserved for another function; None if there is none."""
    best = None
    best_key = None
    mem: dict[str, float] = {}
    for g in view.gpus:
        units = whole_units(fn, g.type_name)
        if not units or free_u[g.id] < units or reserved.get(g.id, fn.name) != fn.name:
            continue
        m = mem.get(g.type_name)
        if m is None:
            m = mem[g.type_name] = fn.tables[g.type_name].memory_mb(1)
        if free_m[g.id] < m:
            continue
        key = (free_u[g.id] - units) / g.share_units
        if best_key is None or key < best_key:
            best, best_key = g, key
    return best


def _fits_after(fn: FunctionRt, victim: Instance, free_u: dict[int, int], free_m: dict[int, float]) -> bool:
    """Whether a whole-share instance of `fn` fits on `victim`'s GPU once the victim has left it."""
    g = victim.gpu
    units = whole_units(fn, g.type_name)
    return (units > 0 and free_u[g.id] + victim.share_units >= units
            and free_m[g.id] + victim.memory_mb >= fn.tables[g.type_name].memory_mb(1))


def _eviction_candidates(view: ClusterView, want: dict[str, int]) -> list:
    """(instance, excess) for idle warm instances at their function's whole share, longest idle first;
    `excess` when the instance's function has more instances than it wants."""
    out = []
    for g in view.gpus:
        for iid in g.instance_ids:
            inst = view.instance(iid)
            if (inst.state == InstanceState.IDLE and not inst.backlog and not inst.stopping
                    and inst.share_units == whole_units(inst.function, g.type_name)):
                out.append((inst, len(view.instances(inst.function.name)) > want.get(inst.function.name, 1)))
    out.sort(key=lambda c: (c[0].idle_since_ns, c[0].gpu.id, c[0].id))
    return out


def _drain_victim(view: ClusterView, fn: FunctionRt, exclude: set[int], backlog: dict[str, int], now_ns: int,
                  free_u: dict[int, int], free_m: dict[int, float]):
    """A busy instance to drain for `fn`, which has none: one whose GPU then has room for `fn`, from the
    function with no backlog if any, else from the one with the most instances. None if there is no busy
    instance to take. An instance given its batch in this instant (by this pass, or by the idle-pull
    rule) is spared."""
    best = None
    best_key = None
    for fname in view.functions:
        if fname == fn.name:
            continue
        busy = [i for i in view.instances(fname) if i.state == InstanceState.BUSY and not i.stopping and i.id not in exclude
                and (i.current is None or i.current.dispatch_ns != now_ns) and _fits_after(fn, i, free_u, free_m)]
        if not busy:
            continue
        key = (backlog.get(fname, 0) <= 0, len(view.instances(fname)))
        if best_key is None or key > best_key:
            best_key = key
            best = busy[-1]
    return best
