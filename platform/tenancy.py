"""Tenants and priority classes in the controller: weighted fair share of the GPUs, share quotas, and
batch work that yields to realtime work, for every policy.

Policies stay pure functions over the view and know nothing of tenants. The controller asks this
module, around every policy call (`Controller._pass`) and at every Start it applies:

- `before_pass()` looks at the queues once: which tenants have work waiting that the cluster cannot place
  now, each tenant's weighted share, and whether any realtime job is waiting for room. Under contention it
  releases idle instances of tenants above their share, and makes room for waiting realtime work by
  releasing batch instances (idle ones at once, busy ones after their batch).
- `order()` puts the policy's Starts in the order the rule below serves tenants (realtime before batch,
  then the tenant furthest below its share first), so that one pass cannot give a later tenant's room to an
  earlier one's Start.
- `check_start()` refuses a Start that would put a tenant over its `max_share_units`, a batch Start while
  realtime work waits for room, and under contention a Start of a tenant beyond its weighted share. The
  controller counts each refusal with its reason (`Accounting.refuse`).

The rule: weighted max-min fairness over one resource, GPU share held (in GPUs: an instance holding
`units` of a GPU split in `share_units` holds units / share_units), which is Dominant Resource Fairness
with a single resource (Ghodsi, Zaharia, Hindman, Konwinski, Shenker, Stoica, "Dominant Resource
Fairness: Fair Allocation of Multiple Resource Types", NSDI 2011, section 4: progressive filling).
A tenant's demand is unbounded while it has work waiting that cannot be placed, and what it holds
otherwise, so a tenant that needs less than its share leaves the rest to the others (work-conserving);
a tenant may hold more than its share whenever no tenant below its share is waiting.

Who builds it: the `Controller` (one per controller). Who sets the shares: `Controller.set_tenants` (the
gateway from its tenant table, the simulator from the scenario's `tenants:`). What it changes: only
instances, through the controller's own stop path, and its own counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from gpufaas.platform.decisions import Decisions, Start
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import FunctionRt, Gpu, Instance, InstanceState

if TYPE_CHECKING:  # annotations only: the controller imports this module
    from gpufaas.platform.controller import Controller

_IDLE, _STARTING = InstanceState.IDLE, InstanceState.STARTING

DEFAULT_TENANT = "default"
REALTIME, BATCH = "realtime", "batch"
CLASSES = (REALTIME, BATCH)

# NOTE: shares are compared in GPUs (floats summed from integer units); a tolerance far below any share
# unit (the finest shipped split is 1/10 of a GPU) keeps rounding from deciding a comparison.
_EPS = 1e-9


@dataclass(frozen=True)
class TenantShare:
    """A tenant's weight under contention and its hard cap on share units held (None: no cap).

    Who builds it: the gateway (from `gpufaas tenant create|set`) and the simulator (from the scenario's
    `tenants:`); `Controller.set_tenants` takes a map of them. ValueError on a weight that is not a
    positive finite number or a cap below 1."""

    weight: float = 1.0
    max_share_units: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight: {self.weight!r} is not a positive number")
        if self.max_share_units is not None and self.max_share_units < 1:
            raise ValueError(f"max_share_units: {self.max_share_units!r} is below 1; give at least 1 or no cap")


_DEFAULT_SHARE = TenantShare()


def weighted_max_min(capacity: float, weights: Mapping[str, float], demands: Mapping[str, float]) -> dict[str, float]:
    """Progressive filling (DRF, NSDI'11 section 4, with one resource): every tenant's allocation grows in
    proportion to its weight until it reaches its demand or `capacity` is used up. Pure; `before_pass`
    and the tests call it. A demand may be `math.inf` (the tenant takes whatever its weight gives it)."""
    out: dict[str, float] = {}
    left = dict(weights)
    rem = capacity
    while left:
        total_w = sum(left.values())
        done = [t for t, w in left.items() if demands[t] <= rem * w / total_w + _EPS]
        if not done:
            for t, w in left.items():
                out[t] = rem * w / total_w
            break
        for t in done:
            out[t] = demands[t]
            rem -= demands[t]
            del left[t]
    return out


class Tenancy:
    """Per-controller tenant state: shares, what each tenant holds, and what the last pass found.

    `active` is False while every function belongs to one tenant, no tenant has a share cap and no workflow
    is `batch`: the controller then skips every per-pass step, so single-tenant runs are exactly what they
    were before tenants existed."""

    def __init__(self, ctl: "Controller") -> None:
        self._ctl = ctl
        self.shares: dict[str, TenantShare] = {}
        self.held_units: dict[str, int] = {}  # tenant -> share units its live instances hold
        self.held_gpus: dict[str, float] = {}  # the same in GPUs (units / units per GPU)
        self.batch_fns: set[str] = set()  # functions that only batch workflows use (their instances yield)
        self.fns_by_tenant: dict[str, list[str]] = {}
        self.active = False
        # what the last before_pass found
        self.caps: dict[str, float] = {}  # under contention: tenant -> the GPUs it may hold; empty otherwise
        self.realtime_waiting = False
        self.served_first: dict[str, float] = {}  # tenant -> held / entitlement (lower: served first)

    # ------------------------------------------------------------------ configuration

    def set_shares(self, shares: Mapping[str, TenantShare]) -> None:
        """Replace the whole map (a tenant not in it has the defaults). Called by `Controller.set_tenants`."""
        for name, s in shares.items():
            if not isinstance(s, TenantShare):
                raise UserError(f"tenant {name!r}: expected a TenantShare, got {type(s).__name__}")
        self.shares = dict(shares)
        self.refresh()

    def share(self, tenant: str) -> TenantShare:
        return self.shares.get(tenant, _DEFAULT_SHARE)

    def refresh(self) -> None:
        """Recompute what depends on the deployed functions and workflows. Called by the controller after
        every deploy and remove, and by `set_shares`."""
        ctl = self._ctl
        by_tenant: dict[str, list[str]] = {}
        for name, fn in ctl.functions.items():
            by_tenant.setdefault(fn.tenant, []).append(name)
        self.fns_by_tenant = by_tenant
        realtime_fns = {s.function for wf in ctl.workflows.values() if wf.priority != BATCH for s in wf.stages}
        self.batch_fns = {s.function for wf in ctl.workflows.values() if wf.priority == BATCH
                          for s in wf.stages} - realtime_fns
        self.active = (len(by_tenant) > 1 or bool(self.batch_fns)
                       or any(s.max_share_units is not None for s in self.shares.values()))
        if not self.active:
            self.caps = {}
            self.realtime_waiting = False

    # ------------------------------------------------------------------ holdings

    def hold(self, inst: Instance, sign: int) -> None:
        """Count an instance's share in (+1, when it starts) or out (-1, when it is released) of its tenant's
        holdings. Called by the controller for every instance, tenants active or not."""
        t = inst.function.tenant
        self.held_units[t] = self.held_units.get(t, 0) + sign * inst.share_units
        self.held_gpus[t] = self.held_gpus.get(t, 0.0) + sign * inst.share_units / inst.gpu.share_units

    # ------------------------------------------------------------------ the controller's hooks

    def check_start(self, fn: FunctionRt, gpu: Gpu, units: int) -> str:
        """Why a Start of `fn` with `units` of `gpu` must be refused ('' if it may go ahead). The reason's
        text up to ':' is the kind `Accounting.refuse` counts."""
        t = fn.tenant
        cap = self.share(t).max_share_units
        held = self.held_units.get(t, 0)
        if cap is not None and held + units > cap:
            return f"tenant quota: tenant {t} holds {held} share units, max_share_units is {cap}, asked {units} more"
        if not self.active:
            return ""
        if self.realtime_waiting and fn.name in self.batch_fns:
            return f"batch yields: {fn.name} is batch work and realtime work is waiting for room"
        limit = self.caps.get(t)
        if limit is not None:
            have = self.held_gpus.get(t, 0.0)
            want = units / gpu.share_units
            if have + want > limit + _EPS:
                return (f"fair share: tenant {t} holds {have:.2f} GPUs, asked {want:.2f} more, its weighted share "
                        f"under contention is {limit:.2f}")
        return ""

    def yields(self, inst: Instance) -> bool:
        """Whether `inst`, going idle, should not pull more work without a pass (the pass may release it)."""
        if inst.function.name in self.batch_fns and self.realtime_waiting:
            return True
        limit = self.caps.get(inst.function.tenant)
        return limit is not None and self.held_gpus.get(inst.function.tenant, 0.0) > limit + _EPS

    def order(self, decisions: Decisions) -> Decisions:
        """The policy's decisions with its Starts moved behind its other actions and sorted: realtime
        before batch, then the tenant with the smallest held / entitlement first (the tenant WFQ would
        serve next: Demers, Keshav, Shenker, "Analysis and Simulation of a Fair Queueing Algorithm",
        SIGCOMM 1989). Stable, so a policy's own order stands within one tenant and class. Other actions
        keep their order; Stops coming first only frees room sooner."""
        acts = decisions.actions
        starts = [a for a in acts if type(a) is Start]
        if len(starts) < 2:
            return decisions
        fns = self._ctl.functions
        rank = self.served_first

        def key(a: Start) -> tuple[int, float]:
            fn = fns.get(a.function)
            if fn is None:
                return (2, 0.0)  # refused anyway; last
            return (int(fn.name in self.batch_fns), rank.get(fn.tenant, 0.0))

        rest = [a for a in acts if type(a) is not Start]
        return decisions._replace(actions=tuple(rest) + tuple(sorted(starts, key=key)))

    def before_pass(self) -> None:
        """Find contention and act on it before the policy is asked (see the module docstring).

        A tenant's queued job *waits for room* when its function has no idle instance, no GPU has room for
        one more instance of it (`_placeable`), and either the function has no live instance at all
        (*starved*: it cannot run anywhere) or the job has waited longer than one batch of the function's
        slowest instance (until then a busy instance may still take it)."""
        ctl = self._ctl
        now = ctl.clock.now_ns()
        waiting: set[str] = set()
        tenants: set[str] = {t for t, g in self.held_gpus.items() if g > _EPS}
        queued_fns: set[str] = set()
        realtime_fns: list[str] = []
        starved: list[str] = []
        placeable: dict[str, bool] = {}
        for q in ctl.ready_queues.values():
            f = q.function
            wf = q.workflow
            tenants.add(wf.tenant)
            queued_fns.add(f)
            if ctl.idle_by_fn[f]:
                continue
            insts = ctl.instances_by_fn[f]
            live = any(not i.stopping for i in insts)
            if live and now - q.jobs[0].enq_ns <= max((i.batch_latency_ns(i.max_batch) for i in insts), default=0):
                continue
            ok = placeable.get(f)
            if ok is None:
                ok = placeable[f] = self._placeable(ctl.functions[f], insts)
            if ok:
                continue
            waiting.add(wf.tenant)
            if not live and f not in starved:
                starved.append(f)
            if wf.priority != BATCH and f not in realtime_fns:
                realtime_fns.append(f)
        self.realtime_waiting = bool(realtime_fns)
        if realtime_fns:
            batch_fns = self.batch_fns
            self._make_room(realtime_fns, lambda inst: inst.function.name in batch_fns)
        self._fair_share(tenants, waiting, starved, queued_fns)

    # ------------------------------------------------------------------ internals

    def _fair_share(self, tenants: set[str], waiting: set[str], starved: list[str], queued_fns: set[str]) -> None:
        held = self.held_gpus
        weights = {t: self.share(t).weight for t in tenants}
        demands = {t: math.inf if t in waiting else held.get(t, 0.0) for t in tenants}
        # NOTE: every GPU counts as one, whatever its type: the share of a GPU is what the platform sells.
        ent = weighted_max_min(float(len(self._ctl.gpus)), weights, demands)
        self.served_first = {t: held.get(t, 0.0) / e if e > _EPS else math.inf for t, e in ent.items()}
        below = [t for t in waiting if held.get(t, 0.0) < ent[t] - _EPS]
        over = {t for t in tenants if held.get(t, 0.0) > ent[t] + _EPS}
        if not (below and over):
            self.caps = {}
            return
        self.caps = ent
        ctl = self._ctl
        # a starved function of a tenant below its share gets room on one GPU from tenants above theirs
        fns = ctl.functions
        mine = [f for f in starved if fns[f].tenant in below]
        if mine:
            self._make_room(mine, lambda inst: inst.function.tenant in over)
        for t in over:
            # NOTE: idle instances of a tenant above its share go, longest idle first, until it is down to
            # it; not those of a function with queued jobs (the next pass would give them work: stopping
            # them only trades a warm instance for a cold start), nor a function's last live instance, so
            # each stage of the tenant's workflows keeps running
            for f in self.fns_by_tenant.get(t, ()):
                if f in queued_fns:
                    continue
                live = sum(1 for i in ctl.instances_by_fn[f] if not i.stopping)
                for inst in list(ctl.idle_by_fn[f].values()):
                    if held.get(t, 0.0) <= ent[t] + _EPS or live <= 1:
                        break
                    ctl.stop_instance(inst)
                    live -= 1
                if held.get(t, 0.0) <= ent[t] + _EPS:
                    break

    @staticmethod
    def _need(fn: FunctionRt, insts: Iterable[Instance], gpu_type: str) -> tuple[int, float]:
        """The room (units, MB) one more instance of `fn` takes on `gpu_type`: the largest share and memory
        its live instances there hold (the policy's choice), else its largest accepted share at its
        smallest batch (the most a policy may ask for a function it has not started yet)."""
        units, mem = 0, 0.0
        for i in insts:
            if i.gpu.type_name == gpu_type:
                units, mem = max(units, i.share_units), max(mem, i.memory_mb)
        if units:
            return units, mem
        return fn.share_units[gpu_type][-1], fn.tables[gpu_type].memory_mb(fn.batch_sizes[0])

    def _placeable(self, fn: FunctionRt, insts: list[Instance]) -> bool:
        """Whether some GPU has room now for one more instance of `fn` (`_need`)."""
        need: dict[str, tuple[int, float]] = {}
        for g in self._ctl.gpus:
            if g.type_name not in fn.tables:
                continue
            n = need.get(g.type_name)
            if n is None:
                n = need[g.type_name] = self._need(fn, insts, g.type_name)
            if g.free_units >= n[0] and g.free_mb >= n[1]:
                return True
        return False

    def _make_room(self, fnames: Iterable[str], victim: Callable[[Instance], bool]) -> None:
        """For each function of `fnames` (waiting for room), free one GPU's room for one more instance of it
        (`_need`) by releasing instances that `victim` accepts there: idle ones at once, busy ones after
        their batch (starting ones last: their cold start is already paid). The GPU chosen needs the
        fewest busy ones stopped; room that stopping instances will free already counts, so a pass does
        not stop more while earlier stops take effect."""
        ctl = self._ctl
        free_u: dict[int, float] = {g.id: g.free_units for g in ctl.gpus}
        free_m = {g.id: g.free_mb for g in ctl.gpus}
        by_gpu: dict[int, list[Instance]] = {}
        for inst in ctl.instances.values():
            if inst.stopping:
                free_u[inst.gpu.id] += inst.share_units
                free_m[inst.gpu.id] += inst.memory_mb
            elif victim(inst):
                by_gpu.setdefault(inst.gpu.id, []).append(inst)
        for f in fnames:
            fn = ctl.functions[f]
            best: tuple[tuple[int, int], list[Instance], int] | None = None
            for g in ctl.gpus:
                if g.type_name not in fn.tables:
                    continue
                need_u, need_m = self._need(fn, ctl.instances_by_fn[f], g.type_name)
                u, m = free_u[g.id], free_m[g.id]
                take: list[Instance] = []
                for inst in sorted(by_gpu.get(g.id, ()), key=lambda i: (i.state != _IDLE, i.state == _STARTING, i.id)):
                    if u >= need_u and m >= need_m:
                        break
                    take.append(inst)
                    u += inst.share_units
                    m += inst.memory_mb
                if u < need_u or m < need_m:
                    continue
                key = (sum(1 for i in take if i.state != _IDLE), len(take))
                if best is None or key < best[0]:
                    best = (key, take, g.id)
            if best is None:
                continue
            _, take, gid = best
            for inst in take:
                by_gpu[gid].remove(inst)
                ctl.stop_instance(inst)
            free_u[gid] = free_m[gid] = -math.inf  # this GPU's room is promised to `f`
