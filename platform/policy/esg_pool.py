"""ESG's pools: start what a function's plan lacks, release what its rate no longer needs, take share
back from other functions' idle instances when a function has nowhere to grow.

Per function, the plan (`esg_plan.pool_targets`) gives a configuration and the throughput its observed
rate needs. A live instance counts with its throughput at the planned batch whatever its share, so a
new plan does not throw warm instances away: the pool grows in the new configuration and sheds the
old one as it goes idle.

- **Grow**: while the live throughput is below the need, start instances of the planned configuration
  (its share; its largest batch is the largest whose run fits half the stage's budget, so a burst
  is absorbed by larger batches, not only by more instances), best fit on the GPUs of the planned
  type, near the GPUs of the function's neighbours in its workflows (their outputs are its inputs);
  functions furthest below their need go first, one start per round.
- **Consolidate**: when the planned configuration alone would hold less share than the live mix, and
  the saving over the keep-alive horizon exceeds the share the new instances hold while they start,
  the planned instances are started as if the mix were gone; the mix then drains.
- **Backlog**: a function whose oldest queued job has waited longer than its plan allows (the wait its
  pool is sized for and its own run) while more jobs wait than one round of all its instances takes
  grows at once to the rate its queue shows (queued jobs over the oldest one's wait), not after the
  rate average has caught up: the plan is being missed, whatever the estimate says. Jobs shed for
  contention, more than the plan allows, count the same way (shedding keeps the queue short and would
  hide the backlog).
- **Release** (ski rental): a surplus instance (the rest still cover the need at the upper end of the
  rate's confidence interval, `PoolTarget.keep_rps`; at the estimate itself for an instance of a
  configuration the plan has left) is *draining*: the
  dispatcher gives it work only when no other instance is idle. Once its function has had a surplus
  for as long as a cold start takes, its idle draining instances are stopped: holding surplus longer
  than that costs more than starting it again would, and releasing it sooner risks paying the cold
  start for a short lull.
- **Reclaim**: with no room for a start, idle surplus instances of other functions are stopped on a
  GPU where that makes room; a function with no instance at all may also take the longest-idle
  instance of a function that holds two or more. Failing that, the largest smaller share the function
  offers that fits a fragment is started (a saturated cluster leaves no units idle).
- **Rebalance** (saturated cluster): a function that still lacks capacity and finds no room is the
  bottleneck of its workflows; on one GPU, functions sharing a workflow with it that hold more than
  the same fraction of their own need, and its own instances of another share (fragment fills, an
  older configuration), give up instances (busy ones after their batch) until its planned share fits
  (as many planned instances as the freed room holds count as the gain), so the share goes
  where the pipeline's throughput is decided. Fragments are not filled on a GPU whose share is being
  freed that way.

Who calls it: `esg.EsgPolicy.schedule` on a tick (and when a function with queued work has no
instance). Reads the view; appends `Start`/`Stop` actions and books capacity in its own `Room`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from gpufaas.platform.decisions import Start, Stop
from gpufaas.platform.policy.esg_plan import PoolTarget
from gpufaas.platform.runtime import Instance, InstanceState
from gpufaas.platform.views import ClusterView

NS_PER_S = 1_000_000_000
_IDLE = InstanceState.IDLE
_STARTING = InstanceState.STARTING


class Room:
    """Pass-local free share units and memory per GPU (starts and stops of this pass booked in)."""

    __slots__ = ("units", "mb")

    def __init__(self, view: ClusterView) -> None:
        self.units = [g.free_units for g in view.gpus]
        self.mb = [g.free_mb for g in view.gpus]

    def fits(self, gpu_id: int, units: int, mb: float) -> bool:
        return self.units[gpu_id] >= units and self.mb[gpu_id] >= mb

    def take(self, gpu_id: int, units: int, mb: float) -> None:
        if not self.fits(gpu_id, units, mb):
            raise AssertionError(f"policy bug: would over-commit GPU {gpu_id}")
        self.units[gpu_id] -= units
        self.mb[gpu_id] -= mb

    def give(self, inst: Instance) -> None:
        self.units[inst.gpu.id] += inst.share_units
        self.mb[inst.gpu.id] += inst.memory_mb


def throughput_rps(inst: Instance, tg: PoolTarget | None) -> float:
    """Throughput of one instance (requests per second) at its function's planned batch (at its own
    largest batch if smaller, or when the function has no plan)."""
    b = inst.max_batch if tg is None else min(inst.max_batch, tg.batch)
    return b * NS_PER_S / max(1, inst.batch_latency_ns(b))


def is_planned(inst: Instance, tg: PoolTarget) -> bool:
    """Whether `inst` has the planned share on the planned GPU type and takes the planned batch."""
    return inst.share_units == tg.units and inst.gpu.type_name == tg.gpu_type and inst.max_batch >= tg.batch


def neighbours(view: ClusterView) -> dict[str, set[str]]:
    """Per function, the functions whose stages feed it or are fed by it in some workflow."""
    out: dict[str, set[str]] = {}
    for wf in view.workflows.values():
        for s in wf.stages:
            for p in s.preds:
                a, b = wf.stages[p].function, s.function
                if a != b:
                    out.setdefault(a, set()).add(b)
                    out.setdefault(b, set()).add(a)
    return out


def _place(view: ClusterView, room: Room, tg: PoolTarget, mb: float, near: set[str],
           skip: frozenset[int] | set[int] = frozenset()) -> int | None:
    """Best fit among the GPUs of the planned type (but those in `skip`): least free share left, then
    nearest to the function's neighbours (same GPU, then same node), then lowest id."""
    best = None
    best_key = None
    for g in view.gpus:
        if g.type_name != tg.gpu_type or g.id in skip or not room.fits(g.id, tg.units, mb):
            continue
        key = (room.units[g.id] - tg.units, 0, g.id)
        if near:
            on_gpu = sum(1 for i in g.instance_ids if view.instance(i).function.name in near)
            key = (key[0], -on_gpu, g.id)
        if best_key is None or key < best_key:
            best, best_key = g.id, key
    return best


def reconcile(view: ClusterView, now_ns: int, targets: dict[str, PoolTarget], waited: dict[str, tuple[int, int]],
              shed: set[str], room: Room, protect: set[int], actions: list, surplus_since: dict[str, int]) -> set[int]:
    """Grow, release and reclaim (module docstring). `waited`: per function, how long its oldest queued
    job has waited and how many jobs are queued; `shed`: the functions that shed more jobs for contention
    than their plan allows (`esg.EsgPolicy._shed_short`); `protect`:
    instances given work in this pass (never stopped); `surplus_since`: per function, since when it has
    had more than it needs (the policy's state, updated). Returns the draining instances (surplus to
    their function's need), which the dispatcher gives work only when no other instance is idle."""
    have: dict[str, float] = {}
    live: dict[str, list[Instance]] = {}
    for f in view.functions:  # every function: an inactive one's idle instances are reclaimable too
        insts = [i for i in view.instances(f) if not i.stopping]
        live[f] = insts
        have[f] = sum(throughput_rps(i, targets.get(f)) for i in insts)
    stopped: set[int] = set()
    draining: set[int] = set()
    # release first: what a function no longer needs may be what another one lacks
    for f, tg in targets.items():
        _release(view, now_ns, tg, live[f], have, protect, stopped, room, actions, draining, surplus_since)
    want: dict[str, int] = {}
    why: dict[str, str] = {}  # the rule that set each function's want (`Start.reason`)
    for f, tg in targets.items():
        per = tg.batch * NS_PER_S / tg.latency_ns
        cover = have[f]
        if not any(i.state == _STARTING for i in live[f]):
            # consolidate: when the plan's configuration alone would hold less share than the live mix
            # and the saving over the function's keep-alive horizon (the platform's horizon for holding
            # share on speculation) exceeds what the new instances hold while they cold-start, grow the
            # planned configuration as if the others were gone; they become surplus once it is up
            n_plan = max(1, math.ceil(tg.need_rps / per - 1e-9))
            held = sum(i.share_units for i in live[f])
            fn = view.functions[f]
            cold_ns = view.cold_start_ns(f, live[f][0].gpu) if live[f] else 0
            if (held - n_plan * tg.units) * fn.keep_alive_ns > n_plan * tg.units * cold_ns:
                cover = sum(throughput_rps(i, tg) for i in live[f] if is_planned(i, tg))
        k = math.ceil((tg.need_rps - cover) / per - 1e-9) if cover < tg.need_rps else 0
        reason = "need" if cover == have[f] else "consolidate"
        if not live[f]:
            # a function with an active workflow keeps one instance, unless the residency policy released
            # it on purpose and it has no queued work (its pre-warm, or its next job, starts one)
            k = max(k, 1) if f in waited or view.keeps_warm(f) else 0
        # NOTE: a backlog is a queue that has waited past the plan *and* holds more than one round of
        # every instance (a burst that the next round clears is what the sizing allows for). Its jobs
        # arrived within the oldest one's wait, so queued / wait is a floor on the rate arriving now:
        # the pool grows to it at once, not after the rate average has caught up (an on-off source's
        # new phase). Instances still starting count, so a backlog is not answered twice.
        wait_ns, queued_n = waited.get(f, (0, 0))
        if wait_ns > tg.wait_ns + tg.latency_ns and queued_n > sum(i.max_batch for i in live[f]):
            floor_rps = queued_n * NS_PER_S / wait_ns
            if floor_rps > have[f] and (kb := math.ceil((floor_rps - have[f]) / per - 1e-9)) > k:
                k, reason = kb, "backlog"
        # NOTE: jobs shed for contention are demand the pool did not serve, and shedding keeps the
        # queue short, so it hides the backlog above. The need is taken at the lower end of the
        # rate's interval so that noise in the estimate does not grow the pool; more sheds than the plan
        # allows (its miss budget, `esg.EsgPolicy._shed_short`) are evidence that it is short, so while
        # they come the pool grows to the need at the estimate itself
        # (one instance per sizing, none starting; on a saturated cluster there is no room and
        # nothing changes). Jobs shed while its instances cold-start are not: those count as capacity.
        if f in shed and have[f] < tg.mid_rps and not any(i.state == _STARTING for i in live[f]) and k < 1:
            k, reason = 1, "shed"
        if k > 0:
            want[f] = k
            why[f] = reason
    if not want:
        return draining
    near = neighbours(view)
    freeing = {i.gpu.id for f in view.functions for i in view.instances(f) if i.stopping}
    unmet: set[str] = set()
    order = sorted(want, key=lambda f: (have[f] / targets[f].need_rps, f))
    while order:
        nxt = []
        for f in order:
            tg = targets[f]
            fn = view.functions[f]
            mb = fn.tables[tg.gpu_type].memory_mb(tg.max_batch)
            gpu = _place(view, room, tg, mb, near.get(f, set()))
            if gpu is None:
                gpu = _reclaim(view, tg, mb, targets, have, live, protect, stopped, room, actions, starved=not live[f])
            start = tg
            if gpu is None:
                # NOTE: no GPU has the planned share free: take the largest smaller share the function
                # offers that fits a fragment (a saturated cluster otherwise leaves a few units idle on
                # every GPU while a function lacks capacity); never on a GPU where share is being freed
                # for a planned instance (`_rebalance`), which the fragment would take first
                for u in sorted(fn.share_units[tg.gpu_type], reverse=True):
                    if u < tg.units:
                        start = replace(tg, units=u)
                        gpu = _place(view, room, start, mb, near.get(f, set()), freeing)
                        if gpu is not None:
                            break
            if gpu is None:
                unmet.add(f)
                continue  # no room for this function in this pass
            room.take(gpu, start.units, mb)
            actions.append(Start(f, gpu, start.units, start.max_batch,
                                 reason=why[f] if start is tg else why[f] + ", fragment"))
            units_per_gpu = view.gpus[gpu].share_units
            have[f] += start.batch * NS_PER_S / fn.latency_ns(start.gpu_type, start.batch, start.units, units_per_gpu)
            want[f] -= 1
            if want[f] > 0:
                nxt.append(f)
        order = nxt
    for f in sorted(unmet, key=lambda f: have[f] / targets[f].need_rps):
        _rebalance(view, targets[f], targets, have, live, protect, stopped, room, actions)
    return draining


def _rebalance(view: ClusterView, tg: PoolTarget, targets: dict[str, PoolTarget], have: dict[str, float],
               live: dict[str, list[Instance]], protect: set[int], stopped: set[int], room: Room, actions: list) -> None:
    """The cluster has no room for `tg`'s function, which can pass only `have / rate` of its arrivals:
    its workflows' invocations pass through it at that fraction at most (pipeline-conscious sizing
    under saturation). On one GPU, stop instances (busy ones finish their batch first) until the
    planned share fits: instances of functions sharing a workflow with it, and its own instances of
    another share (fragment fills, older configurations), when the planned instances the freed room
    holds serve more than its own lost ones. The GPU that loses the least of the function's own
    throughput wins; the next sizing starts `tg` there.

    NOTE: a move must make the pipeline's narrowest point wider (max-min on the fraction of its rate
    each function can pass, headroom left out): every function that gives up share keeps at least
    the fraction the bottleneck will pass after the move. A weaker rule (keep the bottleneck's
    fraction before the move) overshoots, the giver becomes the bottleneck and takes the share back,
    and each such move costs a cold start of capacity; under an on-off overload that churn cost more
    hit than the moves gained."""
    f = tg.function
    if tg.rate_rps <= 0 or have[f] >= tg.rate_rps:
        return
    mates: set[str] = set()
    for wf in view.workflows.values():
        fns = {s.function for s in wf.stages}
        if f in fns:
            mates |= fns
    mates.discard(f)
    gain = tg.batch * NS_PER_S / tg.latency_ns
    by_gpu: dict[int, list[Instance]] = {}
    for g in [f, *sorted(mates)]:
        if g != f and (g not in targets or targets[g].rate_rps <= 0):
            continue
        for inst in live[g]:
            if inst.id in protect or inst.id in stopped or inst.state == _STARTING or inst.gpu.type_name != tg.gpu_type:
                continue
            if g == f and inst.share_units == tg.units:
                continue
            by_gpu.setdefault(inst.gpu.id, []).append(inst)
    best: list[Instance] | None = None
    best_key = None
    own_up = sum(1 for i in live[f] if i.state != _STARTING and i.id not in stopped)
    for gpu_id, cands in by_gpu.items():
        free = room.units[gpu_id]
        own_left = own_up
        lost_own = 0.0
        chosen: list[Instance] = []
        # the function's own instances of other shares first, smallest first (no other stage loses
        # anything), then the other functions' largest
        for inst in sorted(cands, key=lambda i: (i.function.name != f, i.share_units if i.function.name == f
                                                 else -i.share_units, i.id)):
            if free >= tg.units:
                break
            if inst.function.name == f:
                lost_own += throughput_rps(inst, tg)
                own_left -= 1
            free += inst.share_units
            chosen.append(inst)
        # NOTE: the function's own instances are replaced only while others of it stay up: the
        # planned one cold-starts, and a pipeline stage with no instance stalls every workflow
        # NOTE: the room freed may hold more than one planned instance (an older, larger configuration
        # beside fragment fills): the next sizing starts as many as its need asks, so each counts
        fit_gain = (free // tg.units) * gain
        if free < tg.units or lost_own >= fit_gain or (lost_own and not own_left):
            continue
        after = min(1.0, (have[f] - lost_own + fit_gain) / tg.rate_rps)
        left = dict(have)
        ok = True
        for inst in chosen:
            g = inst.function.name
            if g != f:
                left[g] -= throughput_rps(inst, targets[g])
                ok = ok and left[g] >= after * targets[g].rate_rps
        if not ok:
            continue
        key = (lost_own, len(chosen), gpu_id)
        if best_key is None or key < best_key:
            best, best_key = chosen, key
    for inst in best or ():
        actions.append(Stop(inst.id))
        stopped.add(inst.id)
        g = inst.function.name
        have[g] -= throughput_rps(inst, targets.get(g))


def _idle_free(inst: Instance, protect: set[int], stopped: set[int]) -> bool:
    return inst.state == _IDLE and not inst.backlog and inst.id not in protect and inst.id not in stopped


def _release(view: ClusterView, now_ns: int, tg: PoolTarget, insts: list[Instance], have: dict[str, float],
             protect: set[int], stopped: set[int], room: Room, actions: list, draining: set[int],
             surplus_since: dict[str, int]) -> None:
    """Mark the instances the need can do without as draining (the dispatcher gives them work last) and,
    once the function has had a surplus for its cold-start time, stop those of them that are idle."""
    f = tg.function
    # instances of another configuration first, then the larger shares, then the newest
    # NOTE: only instances that are up count here: an instance still cold-starting does not make
    # another one surplus (else a pool moving to a new configuration would stop the old one first)
    ready = [i for i in insts if i.state != _STARTING and i.id not in stopped]
    cover = sum(throughput_rps(i, tg) for i in ready)
    cand = sorted((i for i in ready if i.id not in protect),
                  key=lambda i: (is_planned(i, tg), -i.share_units, -i.start_ns))
    left = len(ready)
    marked = []
    kept_other = False
    for inst in cand:
        cap = throughput_rps(inst, tg)
        if kept_other and is_planned(inst, tg):
            break  # NOTE: never drain the planned configuration while another one stays (consolidation
            # would start the planned one again at once)
        planned = is_planned(inst, tg)
        if left <= 1 or cover - cap < (tg.keep_rps if planned else tg.mid_rps):
            kept_other = kept_other or not planned
            continue
        cover -= cap
        have[f] -= cap
        left -= 1
        marked.append(inst)
    if not marked:
        surplus_since.pop(f, None)
        return
    since = surplus_since.setdefault(f, now_ns)
    ripe = now_ns - since >= max(view.cold_start_ns(f, i.gpu) for i in marked)
    for inst in marked:
        draining.add(inst.id)
        if ripe and _idle_free(inst, protect, stopped):
            actions.append(Stop(inst.id))
            stopped.add(inst.id)
            room.give(inst)


def _reclaim(view: ClusterView, tg: PoolTarget, mb: float, targets: dict[str, PoolTarget], have: dict[str, float],
             live: dict[str, list[Instance]], protect: set[int], stopped: set[int], room: Room, actions: list,
             starved: bool) -> int | None:
    """Stop one idle instance of another function on a GPU where that makes room for `tg`; the GPU id
    or None. Surplus instances (their function still covers its need without them) first; a function
    with no instance may also take from a function that holds two or more."""
    best = None
    best_key = None
    for f, insts in live.items():
        if f == tg.function:
            continue
        other = targets.get(f)
        n_left = sum(1 for i in insts if i.id not in stopped)
        for inst in insts:
            if not _idle_free(inst, protect, stopped):
                continue
            g = inst.gpu
            if g.type_name != tg.gpu_type:
                continue
            if room.units[g.id] + inst.share_units < tg.units or room.mb[g.id] + inst.memory_mb < mb:
                continue
            surplus = other is None or have[f] - throughput_rps(inst, other) >= other.need_rps
            if not surplus and not (starved and n_left >= 2):
                continue
            key = (not surplus, inst.idle_since_ns)
            if best_key is None or key < best_key:
                best, best_key = inst, key
    if best is None:
        return None
    actions.append(Stop(best.id))
    stopped.add(best.id)
    room.give(best)
    f = best.function.name
    have[f] = have.get(f, 0.0) - throughput_rps(best, targets.get(f))
    return best.gpu.id
