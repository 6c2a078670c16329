"""`batch1-wholegpu`: classic serverless. One request per batch, one whole GPU per instance.

What it decides, per function queue: each queued job goes to an idle warm instance (whole GPU, batch
1). Jobs left over are a backlog: while it exceeds the number of instances already cold-starting, one
more instance is started on an entirely free GPU (the job is not pinned to it: whichever instance
frees first takes it). Without a free GPU it evicts the longest-idle warm instance of another function
(OpenWhisk-style container eviction); a function with no instance at all, when none is idle, drains
one busy instance of the function that holds the most GPUs (it stops after its current batch and its
GPU is reserved in the policy state), so no function starves. No batching, no sharing, no SLO
awareness: the floor every other policy is compared against.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Mapping

from gpufaas.platform.decisions import Decisions, Dispatch, Start, Stop
from gpufaas.platform.runtime import InstanceState
from gpufaas.platform.views import ClusterView


class Batch1WholeGpu:
    """State: `(reserved, next_scale_ns)`: `reserved` maps GPUs being drained to the function that has no
    instance; `next_scale_ns` is the next autoscaler tick."""

    name = "batch1-wholegpu"

    def initial_state(self, view: ClusterView) -> Any:
        return ({}, 0)

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
            for inst in idle.values():
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
        reserved_in, next_scale_ns = state
        # NOTE: scale-out runs on an autoscaler tick (Knative evaluates every 2 s; we use 100 ms), or at
        # once for a function with no instance at all; between ticks a pass only dispatches queued jobs
        # to idle instances in FIFO order (the common case, kept to the loop above), which is what the
        # standing rules Decisions.quiet_until_match and idle_pulls promise the controller. A reservation
        # is for a function with queued jobs and no instance, so none survives this branch.
        if now_ns < next_scale_ns and not orphaned:
            return Decisions(tuple(actions), next_scale_ns, True, True), (_NO_RESERVATIONS, next_scale_ns)
        backlog: dict[str, int] = {}
        for q in view.ready_queues():
            backlog[q.function] = backlog.get(q.function, 0) + len(q.jobs)
        for fname, k in taken.items():
            backlog[fname] -= k
        # a reservation lives while its function still has a backlog and no instance
        reserved = {g: f for g, f in reserved_in.items() if backlog.get(f, 0) > 0 and not view.instances(f)}
        short = [f for f, w in backlog.items() if w > 0 and w > _starting(view, f)]
        if not short:
            return Decisions(tuple(actions)), (reserved, next_scale_ns)
        free_gpus = [g for g in view.gpus if g.free_units == g.share_units]
        want = _desired(view)
        victims: list | None = None  # idle instances that could be evicted, longest idle first
        # functions without any instance first, so that none starves
        for fname in sorted(short, key=lambda f: len(view.instances(f)) > 0):
            waiting = backlog[fname]
            fn = view.functions[fname]
            live = view.instances(fname)
            starting = _starting(view, fname)
            n_live = len(live)
            while waiting > starting and n_live < want.get(fname, 1):
                gpu = next((g for g in free_gpus if reserved.get(g.id, fname) == fname
                            and g.share_units in fn.share_units.get(g.type_name, ())
                            and g.memory_mb >= fn.tables[g.type_name].memory_mb(1)), None)
                if gpu is not None:
                    free_gpus.remove(gpu)
                    reserved.pop(gpu.id, None)
                else:
                    starving = not live and not starting
                    if victims is None:
                        victims = _eviction_candidates(view, want)
                    # NOTE: a function without any instance may evict any idle instance, even the last one of
                    # its function: whole-GPU instances must time-share the cluster by eviction, else six
                    # functions on four GPUs deadlock.
                    victim = next((v for v, excess in victims if v.id not in used and v.function.name != fname
                                   and (starving or excess)
                                   and v.gpu.share_units in fn.share_units.get(v.gpu.type_name, ())), None)
                    if victim is not None:
                        used.add(victim.id)
                        actions.append(Stop(victim.id))
                        gpu = victim.gpu
                    else:
                        if not live and not starting and fname not in reserved.values():
                            drain = _drain_victim(view, fname, used, backlog, now_ns)
                            if drain is not None:
                                used.add(drain.id)
                                actions.append(Stop(drain.id))  # frees its GPU after the current batch
                                reserved[drain.gpu.id] = fname
                        break
                actions.append(Start(fname, gpu.id, gpu.share_units, 1))
                starting += 1
                n_live += 1
        return Decisions(tuple(actions)), (reserved, now_ns + SCALE_TICK_NS)


# NOTE: Knative-style sizing: an instance is wanted per (arrival rate x batch-1 service time / 0.7), the
# 0.7 being Knative's default target utilisation; at least one while there is a backlog.
TARGET_UTILISATION = 0.7
SCALE_TICK_NS = 100_000_000
_NO_RESERVATIONS: Mapping[int, str] = MappingProxyType({})


def _desired(view: ClusterView) -> dict[str, int]:
    """Instances wanted per function from its queues' arrival-rate EWMAs."""
    rate: dict[str, float] = {}
    for wf in view.workflows.values():
        for st in wf.stages:
            f = st.function
            rate[f] = rate.get(f, 0.0) + st.queue.rate_per_s
    g = view.gpus[0]
    type_name, units = g.type_name, g.share_units
    functions = view.functions
    out = {}
    for fname, r in rate.items():
        svc_s = functions[fname].latency_ns(type_name, 1, units, units) / 1e9
        out[fname] = max(1, math.ceil(r * svc_s / TARGET_UTILISATION))
    return out


def _starting(view: ClusterView, function: str) -> int:
    return view.starting_count(function)


def _eviction_candidates(view: ClusterView, want: dict[str, int]) -> list:
    """(instance, excess) for idle warm instances alone on a whole GPU, longest idle first; `excess` when
    the instance's function has more instances than it wants."""
    out = []
    for g in view.gpus:
        if len(g.instance_ids) != 1:
            continue
        inst = view.instance(next(iter(g.instance_ids)))
        if inst.state == InstanceState.IDLE and not inst.backlog and not inst.stopping and inst.share_units == g.share_units:
            out.append((inst, len(view.instances(inst.function.name)) > want.get(inst.function.name, 1)))
    out.sort(key=lambda c: c[0].idle_since_ns)
    return out


def _drain_victim(view: ClusterView, function: str, exclude: set[int], backlog: dict[str, int], now_ns: int):
    """A busy instance to drain for a function that has none: from the function with no backlog if any,
    else from the one with the most instances. None if there is no busy instance to take. An instance
    given its batch in this instant (by this pass, or by the idle-pull rule) is spared."""
    best = None
    best_key = None
    for fname in view.functions:
        if fname == function:
            continue
        busy = [i for i in view.instances(fname) if i.state == InstanceState.BUSY and not i.stopping and i.id not in exclude
                and (i.current is None or i.current.dispatch_ns != now_ns)]
        if not busy:
            continue
        key = (backlog.get(fname, 0) <= 0, len(view.instances(fname)))
        if best_key is None or key > best_key:
            best_key = key
            best = busy[-1]
    return best
