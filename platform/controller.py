"""The controller: owns the AFW queues and instances, asks the policy, applies its decisions.

One controller serves both worlds: in simulation it runs on a `VirtualClock` with the `sim` backend,
live it runs on a `LoopClock` inside the gateway with a process/docker/ray backend. It never reads wall
time, never awaits, and never imports asyncio: backends report back through the `on_*` callbacks.

Who calls it: the simulation driver and the gateway (`deploy_*`, `submit`), backends (`on_instance_ready`,
`on_batch_done`, `on_instance_failed`), the clock (timers it set itself). What it changes: everything
in `runtime.py`, and the `Accounting`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from gpufaas.platform.accounting import Accounting
from gpufaas.platform.clock import Clock, Handle, ms_to_ns, perf_ns
from gpufaas.platform.decisions import Decisions, Dispatch, Reject, Start, Stop
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.residency.interface import Residency, cold_start_ns
from gpufaas.platform.residency.registry import make_residency
from gpufaas.platform.runtime import (AfwQueue, Batch, FunctionRt, Gpu, Instance, InstanceState, Invocation,
                                      InvocationStatus, Job, WorkflowRt, build_gpus)
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec
from gpufaas.platform.tenancy import Tenancy, TenantShare
from gpufaas.platform.views import ClusterView

if TYPE_CHECKING:  # the seams' protocols (annotations only: no import cycle through the policy package)
    from gpufaas.platform.backends.interface import Backend
    from gpufaas.platform.policy.interface import Policy


# NOTE: module-level aliases of the enum members the hot path compares against, about ten times per
# job: a global read instead of a global read plus a class-attribute read.
_STARTING, _IDLE, _BUSY, _STOPPED = InstanceState.STARTING, InstanceState.IDLE, InstanceState.BUSY, InstanceState.STOPPED
_PENDING, _COMPLETED = InvocationStatus.PENDING, InvocationStatus.COMPLETED
_SHED_REASON = {InvocationStatus.FAILED: "failed", InvocationStatus.REJECTED: "rejected",
                InvocationStatus.TIMED_OUT: "timed_out"}  # Accounting.SHED_REASONS


class PolicyPurityError(AssertionError):
    """A policy changed controller state through its view (raised only with check_purity=True)."""


class Controller:
    """The control plane of one cluster. See the module docstring for who calls what."""

    def __init__(self, cluster: ClusterSpec, profiles: Profiles, policy: Policy, backend: Backend, clock: Clock, *,
                 keep_alive_s: float = 60.0, max_retries: int = 1, check_purity: bool = False, live: bool = False,
                 residency: Residency | None = None) -> None:
        self.cluster = cluster
        self.profiles = profiles
        self.policy = policy
        self.backend = backend
        self.clock = clock
        self.keep_alive_s = keep_alive_s
        # which idle instances stay resident and for how long (platform/residency/); `fixed` = keep-alive, least recently used evicted first
        self.residency: Residency = residency if residency is not None else make_residency()
        self._res_learns = self.residency.learns
        self.max_retries = max_retries
        self.check_purity = check_purity
        self.live = live  # keep per-stage outputs and timings (the gateway needs them; the simulator does not)
        self.gpus: list[Gpu] = build_gpus(cluster)
        net = cluster.network
        self._ns_per_byte_host = 8.0 / net.host_gbps
        self._ns_per_byte_net = 8.0 / net.network_gbps
        self._net_latency_ns = int(net.network_latency_us * 1000)
        self.functions: dict[str, FunctionRt] = {}
        self.workflows: dict[str, WorkflowRt] = {}
        self.instances: dict[int, Instance] = {}
        self.instances_by_fn: dict[str, list[Instance]] = {}
        # idle, warm, not stopping, empty backlog: ready for a batch now (insertion order = idle since)
        self.idle_by_fn: dict[str, dict[int, Instance]] = {}
        self.starting_by_fn: dict[str, int] = {}
        self._last_config: dict[str, tuple[str, int, int]] = {}  # function -> (GPU type, units, max_batch) of its last start
        self._made_room_ns: dict[str, int] = {}  # function -> when evictions last made room for it
        # functions evicted down to no instance since their last arrival (ClusterView.keeps_warm: False)
        self.evicted_fns: set[str] = set()
        self.ready_queues: dict[tuple[str, str], AfwQueue] = {}
        self.jobs: dict[int, Job] = {}
        self.inflight: dict[int, Invocation] = {}
        self.acct = Accounting()
        self.tenancy = Tenancy(self)
        self.view = ClusterView(self)
        self._ids = itertools.count(1)
        self._pass_scheduled = False
        self._pass_cb = self._pass  # bound once: requested up to once per event
        self._wake: Handle | None = None
        self._wake_at_ns: int | None = None
        # the last pass's standing rules (Decisions.quiet_until_match, idle_pulls), until an event they
        # did not cover
        self._quiet = False
        self._pull = False
        self._push = False  # Decisions.arrival_push
        self.queued_by_fn: dict[str, int] = {}  # jobs in the queues, per function
        # NOTE: a backend with `takes_not_before = True` (the sim backend) starts a batch at
        # batch.not_before_ns itself, which saves the simulator one event per batch whose inputs are in
        # transfer; live backends get the batch when its inputs have arrived.
        self._backend_waits = backend.takes_not_before
        # bumped whenever an instance starts, becomes ready, goes idle or stops: a policy can skip work
        # that depends only on capacity while the epoch is unchanged
        self.capacity_epoch = 0
        self.on_instance_event: Callable[[str, Instance], None] | None = None  # hook for metrics
        backend.bind(self)
        self.state = policy.initial_state(self.view)

    # ------------------------------------------------------------------ deployment

    def deploy_function(self, spec: FunctionSpec, *, replace: bool = False) -> FunctionRt:
        """Compile and register a function. SpecError if its profile or shares do not fit the cluster."""
        if spec.name in self.functions and not replace:
            raise SpecError(f"function '{spec.name}' is already deployed; remove it first or redeploy with replace")
        fn = FunctionRt(spec, self.cluster, self.profiles, self.keep_alive_s)
        self._check_reservations(fn)
        if spec.name in self.functions:
            for inst in list(self.instances_by_fn.get(spec.name, ())):
                self._stop(inst)
            self._forget(spec.name)
        self.functions[spec.name] = fn
        self.instances_by_fn.setdefault(spec.name, [])
        self.idle_by_fn.setdefault(spec.name, {})
        self.queued_by_fn.setdefault(spec.name, 0)
        self.starting_by_fn.setdefault(spec.name, 0)
        self.tenancy.refresh()
        self._top_up(fn)
        return fn

    def _check_reservations(self, new: FunctionRt) -> None:
        """SpecError when, with `new` deployed (replacing its namesake), the functions' `min_instances` would hold
        more of a GPU type than it has, or leave no room for one instance of a deployed function that keeps
        none. Each function reserves min_instances x its smallest instance (`_need`'s first configuration:
        units and MB) on its first GPU type. NOTE: instances held by min_instances are never evicted, so
        without this a deployment could take every GPU for good, and every other function's invocations would
        wait until they time out. A total, not a packing: it refuses what cannot fit, not every layout that
        fragments."""
        fns = [f for n, f in self.functions.items() if n != new.name] + [new]
        by_type: dict[str, list[tuple[FunctionRt, int, float]]] = {}
        for f in fns:
            need = self._need_first(f)
            if need is not None:
                by_type.setdefault(need[0], []).append((f, need[1], need[2]))
        for t, items in by_type.items():
            gpus = [g for g in self.gpus if g.type_name == t]
            units, mb = sum(g.share_units for g in gpus), sum(g.memory_mb for g in gpus)
            r_units = sum(f.min_instances * u for f, u, _ in items)
            r_mb = sum(f.min_instances * m for f, _, m in items)
            if not r_units:
                continue
            holders = ", ".join(f"{f.name} ({f.min_instances})" for f, _, _ in items if f.min_instances)
            if r_units > units or r_mb > mb + 1e-6:
                raise SpecError(f"min_instances of {holders} would hold {r_units} of the {units} {t} share units and "
                                f"{r_mb:.0f} of {mb:.0f} MB; lower min_instances")
            for f, u, m in items:
                if not f.min_instances and (r_units + u > units or r_mb + m > mb + 1e-6):
                    raise SpecError(f"min_instances of {holders} would leave no {t} room for one instance of "
                                    f"'{f.name}'; lower min_instances")

    @staticmethod
    def _need_first(fn: FunctionRt) -> tuple[str, int, float] | None:
        """A function's smallest instance on its first GPU type: (type, units, MB at its largest batch)."""
        if not fn.tables:
            return None
        t = next(iter(fn.tables))
        return t, fn.share_units[t][0], fn.tables[t].memory_mb(fn.batch_sizes[-1])

    def deploy_workflow(self, spec: WorkflowSpec, *, replace: bool = False) -> WorkflowRt:
        """Compile and register a workflow; its functions must be deployed. One AFW queue per stage."""
        old = self.workflows.get(spec.name)
        if old is not None and not replace:
            raise SpecError(f"workflow '{spec.name}' is already deployed; remove it first or redeploy with replace")
        if old is not None and any(s.queue.jobs for s in old.stages):
            raise UserError(f"workflow '{spec.name}' has queued invocations; retry once they finish")
        wf = WorkflowRt(spec, self.functions, self.acct.tally(spec.name, spec.tenant, spec.priority))
        for s in wf.stages:
            s.queue = AfwQueue(wf, s)
        self.workflows[spec.name] = wf
        self.tenancy.refresh()
        return wf

    def remove_workflow(self, name: str) -> None:
        wf = self.workflows.get(name)
        if wf is None:
            raise UserError(f"unknown workflow '{name}'")
        if any(inv.workflow is wf for inv in self.inflight.values()):
            raise UserError(f"workflow '{name}' has invocations in flight; retry once they finish")
        del self.workflows[name]
        self.tenancy.refresh()

    def remove_function(self, name: str) -> None:
        if name not in self.functions:
            raise UserError(f"unknown function '{name}'")
        users = [w.name for w in self.workflows.values() if any(s.function == name for s in w.stages)]
        if users:
            raise UserError(f"function '{name}' is used by workflow(s) {', '.join(sorted(users))}; remove those first")
        for inst in list(self.instances_by_fn.get(name, ())):
            self._stop(inst)
        del self.functions[name]
        self.instances_by_fn.pop(name, None)
        self.idle_by_fn.pop(name, None)
        self.queued_by_fn.pop(name, None)
        self.starting_by_fn.pop(name, None)
        self._forget(name)
        self.tenancy.refresh()

    def _forget(self, name: str) -> None:
        """Drop what the controller learnt of function `name`'s previous compilation (removed or replaced: a new
        profile or share list may not accept its last configuration)."""
        self._last_config.pop(name, None)
        self._made_room_ns.pop(name, None)

    def set_tenants(self, shares: Mapping[str, TenantShare]) -> None:
        """Replace every tenant's weight and share cap (a tenant not in `shares` has the defaults: weight 1, no
        cap). Who calls it: the gateway when its tenant table changes, the simulator from the scenario's
        `tenants:`. Instances already held above a new cap stay; further Starts are refused (`tenancy`)."""
        self.tenancy.set_shares(shares)
        self._drop_rules()
        if self.ready_queues:
            self._request_pass()

    # ------------------------------------------------------------------ invocations

    def submit(self, workflow: str, payload: Any = None, *, slo_ms: float | None = None,
               on_done: Callable[[Invocation], None] | None = None) -> Invocation:
        """Accept one invocation now; its entry stages join their AFW queues. `on_done` runs when it ends."""
        wf = self.workflows.get(workflow)
        if wf is None:
            raise UserError(f"unknown workflow '{workflow}'")
        now = self.clock.now_ns()
        slo_ns = wf.slo_ns if slo_ms is None else ms_to_ns(slo_ms)
        inv = Invocation(next(self._ids), wf, now, slo_ns, payload, on_done)
        if self.live:
            inv.outputs = [None] * len(wf.stages)
            inv.stage_ns = [(-1, -1)] * len(wf.stages)
        if now >= self.acct.warmup_end_ns:  # Accounting.warmup_end_ns
            wf.tally.invocations += 1
        self.inflight[inv.id] = inv
        for e in wf.entries:
            self._enqueue(inv, wf.stages[e], now)
        return inv

    def _enqueue(self, inv: Invocation, stage, now: int, front: bool = False, job: Job | None = None) -> None:
        q = stage.queue
        if job is None:
            job = Job(next(self._ids), inv, stage, q, now)
            q.note_arrival(now)
            if self._res_learns:
                self.residency.observe_arrival(self.functions[q.function], now)
            if self.evicted_fns:
                self.evicted_fns.discard(q.function)
            # Decisions.arrival_push: with no job queued anywhere, the call would see this job alone and
            # give it the newest idle instance of its function (ids are issued in creation order)
            if self._push and not self.ready_queues and not self.tenancy.active:
                idle = self.idle_by_fn[q.function]
                if idle:
                    self._dispatch(idle[max(idle)], [job], now)
                    return
        if front:
            q.jobs.appendleft(job)
        else:
            q.jobs.append(job)
        self.jobs[job.id] = job
        if q.key not in self.ready_queues:
            self.ready_queues[q.key] = q
        fname = q.function
        self.queued_by_fn[fname] += 1
        # Decisions.quiet_until_match; tested after _pass_scheduled, which is the usual answer (4% of
        # `gpufaas bench sim`)
        if not self._pass_scheduled and (not self._quiet or self.idle_by_fn[fname] or not self.instances_by_fn[fname]):
            self._request_pass()

    def _unqueue(self, job: Job) -> None:
        q = job.queue
        if q.jobs[0] is job:
            q.jobs.popleft()
        else:
            q.jobs.remove(job)
        del self.jobs[job.id]
        self.queued_by_fn[q.function] -= 1
        if not q.jobs:
            del self.ready_queues[q.key]

    def _finish(self, inv: Invocation, status: InvocationStatus, reason: str = "", now: int = -1) -> None:
        if inv.status != _PENDING:
            return
        if now < 0:
            now = self.clock.now_ns()
        self._end(inv, status, reason, now)
        if status != _COMPLETED:
            # drop the invocation's other queued jobs (other branches of a fan-out); the standing rules
            # assumed those jobs were there
            self._drop_rules()
            self._unqueue_ended((inv,))
        if inv.on_done is not None:
            inv.on_done(inv)

    def _end(self, inv: Invocation, status: InvocationStatus, reason: str, now: int) -> None:
        """Mark one pending invocation ended and account for it (its queued jobs and on_done: the caller's)."""
        inv.status = status
        inv.finish_ns = now
        inv.reason = reason
        self._count_end(inv, status, now)
        del self.inflight[inv.id]

    def _unqueue_ended(self, invs: Iterable[Invocation]) -> None:
        """Drop every queued job of an ended invocation from the queues of `invs`' stages, each queue
        filtered once however many of `invs` it holds (`timeout_pending` ends thousands at a time)."""
        for q in {id(s.queue): s.queue for inv in invs for s in inv.workflow.stages}.values():
            if not any(j.inv.status != _PENDING for j in q.jobs):
                continue
            keep = []
            for j in q.jobs:
                if j.inv.status == _PENDING:
                    keep.append(j)
                else:
                    del self.jobs[j.id]
                    self.queued_by_fn[q.function] -= 1
            q.jobs.clear()
            q.jobs.extend(keep)
            if not keep:
                del self.ready_queues[q.key]

    def _count_end(self, inv: Invocation, status: InvocationStatus, now: int) -> None:
        """Account for one invocation that ended (unless it arrived in the warm-up)."""
        acct = self.acct
        if inv.arrival_ns >= acct.warmup_end_ns:  # Accounting.warmup_end_ns: arrived in the warm-up, not counted
            tally = inv.workflow.tally
            tally.ended += 1
            if status == _COMPLETED:
                acct.completed += 1
                acct.latency_ms.add((now - inv.arrival_ns) / 1e6)
                if now <= inv.deadline_ns:
                    tally.slo_hits += 1
            else:
                acct.shed(inv.workflow.name, _SHED_REASON[status])
                if status == InvocationStatus.REJECTED:
                    tally.rejected += 1

    def refuse_invocation(self, workflow: str, limit: str, reason: str, slo_ms: float | None = None) -> Invocation:
        """Count one invocation of `workflow` refused before it entered, by the admission `limit` it hit (a
        tenant's `max_concurrency` or `rate_rps`: the simulator applies them at arrival, as the gateway does):
        it ends at once as REJECTED with `reason`, never queued. UserError for an unknown workflow."""
        wf = self.workflows.get(workflow)
        if wf is None:
            raise UserError(f"unknown workflow '{workflow}'")
        now = self.clock.now_ns()
        inv = Invocation(next(self._ids), wf, now, wf.slo_ns if slo_ms is None else ms_to_ns(slo_ms))
        if now >= self.acct.warmup_end_ns:  # Accounting.warmup_end_ns
            wf.tally.invocations += 1
        inv.status = InvocationStatus.REJECTED
        inv.finish_ns = now
        inv.reason = reason
        self._count_end(inv, inv.status, now)
        if inv.arrival_ns >= self.acct.warmup_end_ns:
            self.acct.admission_rejected[limit] = self.acct.admission_rejected.get(limit, 0) + 1
        return inv

    def timeout_pending(self, older_than_ns: int, reason: str = "timed out") -> int:
        """End as TIMED_OUT every pending invocation that arrived before `older_than_ns`. Returns how many."""
        stale = [inv for inv in self.inflight.values() if inv.arrival_ns < older_than_ns]
        if not stale:
            return 0
        # NOTE: in bulk, not one `_finish` each: each would filter its stages' queues, and at the end of an
        # overloaded run thousands of stale invocations sit in queues thousands long (quadratic: minutes per
        # simulated cell). All end first, then every queue they touch is filtered once, then their on_done
        # run, in the same order `_finish` would have run them.
        now = self.clock.now_ns()
        for inv in stale:
            self._end(inv, InvocationStatus.TIMED_OUT, reason, now)
        self._drop_rules()
        self._unqueue_ended(stale)
        for inv in stale:
            if inv.on_done is not None:
                inv.on_done(inv)
        return len(stale)

    def fail_invocation(self, inv: Invocation, reason: str) -> None:
        """End one pending invocation as FAILED (e.g. the gateway lost its payload)."""
        self._finish(inv, InvocationStatus.FAILED, reason)

    # ------------------------------------------------------------------ the policy pass

    def _request_pass(self) -> None:
        if not self._pass_scheduled:
            self._pass_scheduled = True
            self.clock.call_soon(self._pass_cb)

    def _pass(self) -> None:
        self._pass_scheduled = False
        now = self.clock.now_ns()
        tenancy = self.tenancy
        if tenancy.active:
            # NOTE: before the policy looks: instances released for fair share or for realtime work are
            # gone from its view, so it plans with the room that is there (tenancy's module docstring)
            tenancy.before_pass()
        fp = self._fingerprint() if self.check_purity else None
        t0 = perf_ns()
        decisions, self.state = self.policy.schedule(self.view, now, self.state)
        self.acct.decision_us.add((perf_ns() - t0) / 1000.0)
        if fp is not None and fp != self._fingerprint():
            raise PolicyPurityError(f"policy {getattr(self.policy, 'name', self.policy)!r} changed controller state through its view")
        wake = decisions.wake_at_ns
        due = wake is not None and now < wake <= self.clock.now_ns()
        if due:
            # NOTE(live): the wake was in the future when the policy was asked but fell due while the pass ran
            # (live passes take real time: a first plan, a round of starts on a busy machine). apply() refuses a
            # wake that is not in the future, and with its standing rules the policy was then not called again
            # until some other event: `gpufaas fidelity` measured a live gateway without ticks (rate estimates
            # frozen) for over a second. The pass it asked for runs at once instead. Never in the simulator,
            # whose passes take no virtual time.
            decisions = decisions._replace(wake_at_ns=None)
        self.apply(tenancy.order(decisions) if tenancy.active else decisions)
        if due:
            self._request_pass()
        if self.residency.evicts and self.ready_queues:
            self._relieve_pressure(now)

    def apply(self, decisions: Decisions) -> None:
        """Apply a policy's decisions in order. Each refused action is counted with its reason."""
        for a in decisions.actions:
            t = type(a)
            if t is Dispatch:
                self._apply_dispatch(a)
            elif t is Start:
                self._apply_start(a)
            elif t is Stop:
                inst = self.instances.get(a.instance_id)
                if inst is None:
                    self.acct.refuse(f"stop: instance {a.instance_id} is not live")
                elif len(self.instances_by_fn[inst.function.name]) <= inst.function.min_instances:
                    self.acct.refuse(f"min_instances: {inst.function.name} keeps {inst.function.min_instances} live")
                else:
                    self._stop(inst)
            elif t is Reject:
                for jid in a.job_ids:
                    job = self.jobs.get(jid)
                    if job is not None:
                        self._unqueue(job)
                        self._finish(job.inv, InvocationStatus.REJECTED, a.reason)
            else:
                self.acct.refuse(f"unknown action: {a!r}")
        self._quiet = decisions.quiet_until_match
        self._pull = decisions.idle_pulls
        self._push = decisions.arrival_push
        wake = decisions.wake_at_ns
        if wake == self._wake_at_ns:
            return  # the timer asked for is already set
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
            self._wake_at_ns = None
        if wake is not None:
            if wake <= self.clock.now_ns():
                self.acct.refuse("wake: wake_at_ns is not in the future")
            else:
                self._wake = self.clock.call_at(wake, self._on_wake)
                self._wake_at_ns = wake

    def _drop_rules(self) -> None:
        """Forget the last pass's standing rules: an event they did not cover happened."""
        self._quiet = False
        self._pull = False
        self._push = False

    def _on_wake(self) -> None:
        self._wake = None
        self._wake_at_ns = None
        self._request_pass()

    def _take_jobs(self, job_ids: tuple[int, ...], fn: FunctionRt, inst_id: int, max_batch: int) -> list[Job] | None:
        """Validate and remove jobs from their queues; None (and a counted refusal) if any is invalid."""
        if not job_ids:
            self.acct.refuse("dispatch: empty batch")
            return None
        if len(job_ids) > max_batch:
            self.acct.refuse(f"dispatch: batch of {len(job_ids)} exceeds the instance's max_batch {max_batch}")
            return None
        jobs = []
        queued = self.jobs
        fname = fn.name
        for jid in job_ids:
            job = queued.get(jid)
            if job is None:
                self.acct.refuse(f"dispatch: job {jid} is not queued")
                return None
            if job.stage.function != fname:
                self.acct.refuse(f"dispatch: job {jid} is for function {job.stage.function}, not {fname}")
                return None
            if job.excluded == inst_id:
                self.acct.refuse(f"dispatch: job {jid} already failed on instance {inst_id}")
                return None
            jobs.append(job)
        if len(job_ids) > 1 and len(set(job_ids)) != len(job_ids):
            self.acct.refuse("dispatch: a job appears twice in one batch")
            return None
        for job in jobs:
            self._unqueue(job)
        return jobs

    def _apply_dispatch(self, a: Dispatch) -> None:
        job_ids, inst_id = a
        inst = self.instances.get(inst_id)
        if inst is None or inst.stopping:
            self.acct.refuse(f"dispatch: instance {inst_id} is not live")
            return
        jobs = self._take_jobs(job_ids, inst.function, inst_id, inst.max_batch)
        if jobs is not None:
            self._dispatch(inst, jobs)

    def _apply_start(self, a: Start) -> None:
        fn = self.functions.get(a.function)
        if fn is None:
            self.acct.refuse(f"start: unknown function {a.function}")
            return
        if not 0 <= a.gpu_id < len(self.gpus):
            self.acct.refuse(f"start: unknown GPU {a.gpu_id}")
            return
        gpu = self.gpus[a.gpu_id]
        table = fn.tables.get(gpu.type_name)
        if table is None or a.share_units not in fn.share_units[gpu.type_name]:
            self.acct.refuse(f"start: {a.function} does not accept {a.share_units} units on {gpu.type_name}")
            return
        if not 1 <= a.max_batch <= table.max_batch:
            self.acct.refuse(f"start: max_batch {a.max_batch} outside the profile")
            return
        mem = table.memory_mb(a.max_batch)
        if fn.max_instances is not None and len(self.instances_by_fn[fn.name]) >= fn.max_instances:
            self.acct.refuse(f"max_instances: {fn.name} has {fn.max_instances} live instance(s), its max_instances")
            return
        # NOTE: an eviction happens only for a Start that would then go ahead (its tenancy check passes); evicting
        # only lowers what tenants hold, so the check's answer before it stands after it
        why = self.tenancy.check_start(fn, gpu, a.share_units)
        if ((gpu.free_units < a.share_units or gpu.free_mb < mem)
                and (why or not self._make_room(gpu, a.share_units, mem, fn))):
            self.acct.refuse(f"over-commit: GPU {gpu.id} has {gpu.free_units} units / {gpu.free_mb:.0f} MB free, "
                             f"asked {a.share_units} / {mem:.0f}")
            return
        if why:
            self.acct.refuse(why)
            return
        jobs: list[Job] = []
        if a.job_ids:
            taken = self._take_jobs(a.job_ids, fn, -1, a.max_batch)
            if taken is None:
                return
            jobs = taken
        self._launch(fn, gpu, a.share_units, a.max_batch, mem, jobs, a.reason)

    def _launch(self, fn: FunctionRt, gpu: Gpu, units: int, max_batch: int, mem: float, jobs: list[Job],
                reason: str, prewarm: bool = False) -> Instance:
        """Book room on `gpu` (the caller checked it fits) and start an instance; `jobs` form its first batch;
        `reason`: why (`Start.reason`)."""
        now = self.clock.now_ns()
        gpu.free_units -= units
        gpu.free_mb -= mem
        inst = Instance(next(self._ids), fn, gpu, units, max_batch, mem, now)
        inst.prewarm = prewarm
        inst.start_reason = reason
        gpu.instance_ids.add(inst.id)
        self.instances[inst.id] = inst
        self.tenancy.hold(inst, 1)
        self.instances_by_fn[fn.name].append(inst)
        self.starting_by_fn[fn.name] += 1
        self._last_config[fn.name] = (gpu.type_name, units, max_batch)
        # NOTE: a pre-warm is a cold start no request waits for: it is counted under prewarms (used or
        # wasted), not cold_starts, which counts the starts the scheduling policy asked for
        if now >= self.acct.warmup_end_ns and not prewarm:  # Accounting.warmup_end_ns
            self.acct.cold_starts += 1
        self.capacity_epoch += 1
        if jobs:
            self._dispatch(inst, jobs)
        if self.on_instance_event:
            self.on_instance_event("start", inst)
        self.backend.start(inst)
        return inst

    # ------------------------------------------------------------------ residency

    def _evictable(self, gpu: Gpu, fn: FunctionRt | None, now: int) -> list[Instance]:
        """Idle instances on `gpu` that an eviction may take: not of `fn`, not held by min_instances, idle for at
        least one cold start of their own. NOTE: the ski-rental bound (as esg_pool's release): an instance idle
        for less than a cold start is as likely as not to be reused before a new one could be ready."""
        out = []
        for iid in gpu.instance_ids:
            inst = self.instances[iid]
            f = inst.function
            if (inst.state == _IDLE and not inst.stopping and not inst.backlog and f is not fn
                    and len(self.instances_by_fn[f.name]) > f.min_instances and now - inst.idle_since_ns >= self.cold_start_ns(f, gpu)):
                out.append(inst)
        return out

    def _make_room(self, gpu: Gpu, units: int, mem: float, fn: FunctionRt | None) -> bool:
        """Evict idle instances on `gpu`, in the residency policy's order, until `units` and `mem` fit.
        Evicts nothing (and returns False) when all the evictable ones together would not make room, or
        when the residency policy does not evict. Only idle instances go: room is never over-committed."""
        if gpu.free_units >= units and gpu.free_mb >= mem:
            return True
        if not self.residency.evicts:
            return False
        now = self.clock.now_ns()
        cands = self.residency.victims(self._evictable(gpu, fn, now), fn, now)
        if (gpu.free_units + sum(i.share_units for i in cands) < units
                or gpu.free_mb + sum(i.memory_mb for i in cands) < mem - 1e-6):
            return False
        for victim in cands:
            if gpu.free_units >= units and gpu.free_mb >= mem:
                break
            if now >= self.acct.warmup_end_ns:  # Accounting.warmup_end_ns
                self.acct.evictions += 1
            self._stop(victim)
            left = len(self.instances_by_fn[victim.function.name])
            if not left:
                self.evicted_fns.add(victim.function.name)
            self.residency.evicted(victim, left, now)
        return gpu.free_units >= units and gpu.free_mb >= mem

    def _need(self, fn: FunctionRt) -> tuple[str, int, int, float] | None:
        """What a new instance of `fn` needs: its last configuration (GPU type, units, max batch, MB), else
        its smallest share at its largest covered batch on its first GPU type."""
        cfg = self._last_config.get(fn.name)
        if cfg is None:
            first = self._need_first(fn)
            return None if first is None else (first[0], first[1], fn.batch_sizes[-1], first[2])
        t, units, max_batch = cfg
        return t, units, max_batch, fn.tables[t].memory_mb(max_batch)

    def _place(self, fn: FunctionRt, evict: bool) -> Gpu | None:
        """A GPU for a new instance of `fn` (`_need`): the best fit (least memory left over) where it fits
        now, else (with `evict`) the GPU whose eviction costs least in the residency policy's order (they
        are evicted there)."""
        need = self._need(fn)
        if need is None:
            return None
        t, units, _, mem = need
        fits = [g for g in self.gpus if g.type_name == t and g.free_units >= units and g.free_mb >= mem]
        if fits:
            return min(fits, key=lambda g: (g.free_mb - mem, g.id))
        if evict and self.residency.evicts:
            g = self._cheapest_room(t, units, mem, fn)
            if g is not None and self._make_room(g, units, mem, fn):
                return g
        return None

    def _cheapest_room(self, gpu_type: str, units: int, mem: float, fn: FunctionRt) -> Gpu | None:
        """The GPU of `gpu_type` where making room for (`units`, `mem`) evicts only instances ranked earliest
        by the residency policy over all such GPUs (the latest-ranked victim needed decides; then fewer
        victims, then lower id); None where no GPU can make room. NOTE: ranking each GPU on its own and taking
        the first that can make room evicted what another GPU would have given up more cheaply (a function
        about to be reused on GPU 0 before a function never seen again on GPU 2), and the evicted function's
        next arrival evicted another: thrashing."""
        now = self.clock.now_ns()
        cands = [i for g in self.gpus if g.type_name == gpu_type for i in self._evictable(g, fn, now)]
        rank = {inst.id: k for k, inst in enumerate(self.residency.victims(cands, fn, now))}
        best: tuple[tuple[int, int, int], Gpu] | None = None
        for g in self.gpus:
            if g.type_name != gpu_type:
                continue
            free_u, free_m, last, n = g.free_units, g.free_mb, -1, 0
            for inst in sorted((i for i in cands if i.gpu is g and i.id in rank), key=lambda i: rank[i.id]):
                if free_u >= units and free_m >= mem:
                    break
                free_u += inst.share_units
                free_m += inst.memory_mb
                last, n = rank[inst.id], n + 1
            if free_u >= units and free_m >= mem - 1e-6 and (best is None or (last, n, g.id) < best[0]):
                best = ((last, n, g.id), g)
        return best[1] if best is not None else None

    def _start_for_residency(self, fn: FunctionRt, prewarm: bool) -> bool:
        """Start one instance of `fn` outside the policy (min_instances, pre-warm). False if nothing fits."""
        need = self._need(fn)
        if need is None:
            return False
        gpu = self._place(fn, evict=True)
        if gpu is None or self.tenancy.check_start(fn, gpu, need[1]):
            return False
        self._launch(fn, gpu, need[1], need[2], need[3], [], "prewarm" if prewarm else "min_instances", prewarm=prewarm)
        return True

    def _top_up(self, fn: FunctionRt) -> None:
        """Start instances of `fn` until it has `min_instances` live (as many as fit)."""
        while len(self.instances_by_fn[fn.name]) < fn.min_instances and self.functions.get(fn.name) is fn:
            if not self._start_for_residency(fn, prewarm=False):
                return

    def _relieve_pressure(self, now: int) -> None:
        """After a pass: a function with queued jobs and no live instance, for which no GPU has room, gets
        room by evicting idle instances (the residency policy's victims); the release asks for a pass, in
        which the scheduling policy starts it. NOTE: the policies plan with the free room they see, so
        they never ask for a Start that needs an eviction; this is where memory pressure evicts."""
        for q in list(self.ready_queues.values()):
            fname = q.function
            if self.instances_by_fn[fname] or self.starting_by_fn[fname]:
                continue
            fn = self.functions[fname]
            # NOTE: at most one eviction round per starving function per cold start of it: if the scheduling
            # policy leaves the room unused (it wanted another configuration), evicting again would only thrash
            if not fn.tables:
                continue
            last = self._made_room_ns.get(fname)
            if last is not None and now - last < cold_start_ns(fn):
                continue
            if self._place(fn, evict=True) is not None:
                self._made_room_ns[fname] = now

    def _prewarm(self, fname: str) -> None:
        """Timer of a pre-warm (`Residency.prewarm_at_ns`): start one instance of `fname` unless it has one
        live or queued work (the scheduling policy starts those itself)."""
        fn = self.functions.get(fname)
        if fn is None or self.instances_by_fn[fname] or self.queued_by_fn[fname]:
            return
        if fn.max_instances is not None and fn.max_instances < 1:
            return
        self._start_for_residency(fn, prewarm=True)

    # ------------------------------------------------------------------ execution

    def transfer_ns(self, job: Job, gpu: Gpu) -> int:
        """Inter-stage transfer time of `job`'s inputs onto `gpu`: 0 on the same GPU, host bandwidth on the
        same node, network latency + bandwidth across nodes; the slowest predecessor decides."""
        worst = 0
        inv = job.inv
        out_gpu = inv.out_gpu
        for p in job.stage.preds:
            src = out_gpu[p]
            if src is None or src is gpu:
                continue
            nbytes = self.functions[inv.workflow.stages[p].function].output_bytes
            if src.node_index == gpu.node_index:
                t = int(nbytes * self._ns_per_byte_host)
            else:
                t = self._net_latency_ns + int(nbytes * self._ns_per_byte_net)
            if t > worst:
                worst = t
        return worst

    def cold_start_ns(self, fn: FunctionRt, gpu: Gpu) -> int:
        """Profiled cold-start time (the live backends measure the real one)."""
        return cold_start_ns(fn, gpu.type_name)

    def _dispatch(self, inst: Instance, jobs: list[Job], now: int = -1) -> None:
        if now < 0:
            now = self.clock.now_ns()
        if inst.prewarm:
            inst.prewarm = False
            if now >= self.acct.warmup_end_ns:  # Accounting.warmup_end_ns
                self.acct.prewarms_used += 1
        batch = Batch(next(self._ids), inst, jobs, now)
        # Accounting.cold_requests: a job queued before its instance was up waited on that cold start
        ready_ns = inst.ready_ns if inst.state != _STARTING else now + 1
        t = 0
        for job in jobs:
            if job.enq_ns < ready_ns and not job.inv.cold_waited:
                self._count_cold(job.inv)
            if job.stage.preds:
                x = self.transfer_ns(job, inst.gpu)
                if x > t:
                    t = x
        if t:
            batch.not_before_ns = now + t
        if inst.state == _IDLE and not inst.backlog:
            self._run(inst, batch, now)
        else:
            inst.backlog.append(batch)

    def _count_cold(self, inv: Invocation) -> None:
        """Mark `inv` as having waited on a cold start; count it once (unless it arrived in the warm-up)."""
        inv.cold_waited = True
        if inv.arrival_ns >= self.acct.warmup_end_ns:  # Accounting.warmup_end_ns
            self.acct.cold_requests += 1

    def _run(self, inst: Instance, batch: Batch, now: int) -> None:
        if inst.state == _IDLE:
            self.idle_by_fn[inst.function.name].pop(inst.id, None)
        inst.state = _BUSY
        inst.current = batch
        if batch.not_before_ns > now and not self._backend_waits:
            self.clock.call_at_fast(batch.not_before_ns, self._submit, inst, batch)
        else:
            self._submit(inst, batch, now)

    def _submit(self, inst: Instance, batch: Batch, now: int = -1) -> None:
        if inst.current is not batch:
            return  # the instance failed while the inputs were in transfer
        if now < 0:
            now = self.clock.now_ns()
        batch.start_ns = batch.not_before_ns if batch.not_before_ns > now else now
        if self.live:
            self._fill_inputs(batch)
        self.backend.submit(inst, batch)

    def _fill_inputs(self, batch: Batch) -> None:
        """Live mode: each job's input is its invocation payload (entry stage) or its predecessors' outputs."""
        payloads = []
        for job in batch.jobs:
            inv = job.inv
            preds = job.stage.preds
            if not preds:
                payloads.append(inv.payload)
            elif len(preds) == 1:
                payloads.append(inv.outputs[preds[0]])  # type: ignore[index]  # live mode: set at submit
            else:
                merged: dict = {}
                for p in preds:
                    out = inv.outputs[p]  # type: ignore[index]  # live mode: set at submit
                    if isinstance(out, dict):
                        merged.update(out)
                payloads.append(merged)
            inv.stage_ns[job.stage.index] = (batch.start_ns, -1)  # type: ignore[index]  # live mode: set at submit
        batch.outputs = payloads  # the backend replaces these with the outputs

    def on_instance_ready(self, inst: Instance, info: dict | None = None) -> None:
        """Backend callback: the instance finished its cold start."""
        if inst.state != _STARTING:
            return
        now = self.clock.now_ns()
        inst.ready_ns = now
        inst.cold_start_ns = now - inst.start_ns
        if info:
            inst.info = info
        self.starting_by_fn[inst.function.name] -= 1
        inst.state = _BUSY  # _next_or_idle decides: run the backlog, stop, or go idle
        self.capacity_epoch += 1
        self._next_or_idle(inst, now)

    def on_batch_done(self, inst: Instance, batch: Batch, outputs: list[Any] | None = None, error: str = "") -> None:
        """Backend callback: a batch finished (outputs per job, or an error for all of them)."""
        if inst.current is not batch:
            return  # stale: the instance was already declared failed
        now = self.clock.now_ns()
        exec_ns = now - batch.start_ns
        acct = self.acct
        gpu = inst.gpu
        if batch.start_ns >= acct.warmup_end_ns:  # Accounting.warmup_end_ns: the one compare after the warm-up
            acct.bill_busy(exec_ns, inst.share_units, gpu, batch.jobs)
            acct.batches += 1
            acct.batched_jobs += len(batch.jobs)
        elif now > acct.warmup_end_ns:  # began in the warm-up: bill only the part after it, count no batch
            acct.bill_busy(now - acct.warmup_end_ns, inst.share_units, gpu, batch.jobs)
        inst.current = None
        inst.batches_run += 1
        if error:
            for job in batch.jobs:
                self._retry_or_fail(job, inst, error)
        else:
            for i, job in enumerate(batch.jobs):
                inv = job.inv
                if inv.status != _PENDING:
                    continue
                stage = job.stage
                inv.out_gpu[stage.index] = gpu
                if inv.outputs is not None:
                    inv.outputs[stage.index] = outputs[i] if outputs is not None else None
                    inv.stage_ns[stage.index] = (batch.start_ns, now)  # type: ignore[index]  # set with outputs
                if not stage.succs:
                    inv.exits_left -= 1
                    if inv.exits_left == 0:
                        # NOTE: `_finish` less its checks (the invocation is pending and completed): one call
                        # less per invocation on the simulator's hot path
                        self._end(inv, _COMPLETED, "", now)
                        if inv.on_done is not None:
                            inv.on_done(inv)
                else:
                    waiting = inv.waiting
                    for s in stage.succs:
                        waiting[s] -= 1
                        if waiting[s] == 0:
                            self._enqueue(inv, inv.workflow.stages[s], now)
        self._next_or_idle(inst, now)

    def on_instance_failed(self, inst: Instance, reason: str) -> None:
        """Backend callback: the instance died (crash, hang, OOM). Its jobs are retried or failed."""
        if inst.state == _STOPPED:
            return
        batches = ([inst.current] if inst.current is not None else []) + list(inst.backlog)
        inst.current = None
        inst.backlog.clear()
        self._release(inst)
        for b in batches:
            for job in b.jobs:
                self._retry_or_fail(job, inst, reason)
        if self.on_instance_event:
            self.on_instance_event("failed", inst)
        if self.functions.get(inst.function.name) is inst.function:
            self._top_up(inst.function)  # min_instances: a failed instance is replaced

    def _retry_or_fail(self, job: Job, inst: Instance, reason: str) -> None:
        inv = job.inv
        if inv.status != _PENDING:
            return
        job.attempts += 1
        if job.attempts <= self.max_retries:
            self.acct.retries += 1
            job.excluded = inst.id
            self._enqueue(inv, job.stage, self.clock.now_ns(), front=True, job=job)
        else:
            self._finish(inv, InvocationStatus.FAILED,
                         f"stage '{job.stage.name}' failed after {job.attempts} attempt(s): {reason}")

    def _next_or_idle(self, inst: Instance, now: int = -1) -> None:
        if now < 0:
            now = self.clock.now_ns()
        if inst.backlog:
            self._run(inst, inst.backlog.popleft(), now)
            return
        if inst.state == _STARTING:
            return
        inst.state = _IDLE
        self.capacity_epoch += 1
        if inst.stopping:
            self._stop(inst)
            return
        inst.idle_since_ns = now
        fname = inst.function.name
        idle = self.idle_by_fn[fname]
        idle[inst.id] = inst
        # NOTE: at most one live keep-alive timer per instance: armed when it goes idle with none armed (or
        # one armed for later than the residency policy's new answer), and when it fires on an instance that
        # worked since, re-armed for idle_since + its idle TTL (see _expire). A timer that fires for another
        # time than the armed one is stale and does nothing. No timer is cancelled on the hot path.
        ttl = inst.idle_ttl_ns = self.residency.idle_ttl_ns(inst, now)
        due = now + ttl
        if inst.expiry is None or due < inst.expiry:
            inst.expiry = due
            self.clock.call_at_fast(due, self._expire, inst, due)
        if self.ready_queues:
            queued = self.queued_by_fn[fname]
            # Decisions.idle_pulls, unless a longer-idle instance of the function is first in line
            if (queued and self._pull and len(idle) == 1 and not (self.tenancy.active and self.tenancy.yields(inst))
                    and self._pull_job(inst)):
                return
            if queued or not self._quiet:  # Decisions.quiet_until_match
                self._request_pass()

    def _pull_job(self, inst: Instance) -> bool:
        """Decisions.idle_pulls: give the idle `inst` the oldest queued job it may run. False if none."""
        fname = inst.function.name
        for q in self.ready_queues.values():
            if q.function != fname:
                continue
            for job in q.jobs:
                if job.excluded != inst.id:
                    self._unqueue(job)
                    self._dispatch(inst, [job])
                    return True
        return False

    def _expire(self, inst: Instance, armed_ns: int) -> None:
        if inst.expiry != armed_ns:
            return  # stale: a sooner timer was armed since
        if self._pass_scheduled and inst.state == _IDLE:
            # NOTE: a pass is due at this instant and may give this instance work: the keep-alive counts idle
            # time, and an instance is not idle until the policy has looked. Checked again after that pass (the
            # clock runs call_soon callbacks in order, on both clocks). Without it a keep-alive of 0 stopped
            # every instance the moment it was ready, before the pass could dispatch the jobs it was started
            # for: such a function never served (found by the schemathesis test: invocations timed out).
            self.clock.call_soon(lambda: self._expire(inst, armed_ns))
            return
        inst.expiry = None
        if inst.state == _STOPPED:
            return
        now = self.clock.now_ns()
        if inst.state != _IDLE or inst.backlog:
            return  # busy: _next_or_idle arms the timer again when the instance next goes idle
        due = inst.idle_since_ns + inst.idle_ttl_ns
        if now >= due:
            fn = inst.function
            if len(self.instances_by_fn[fn.name]) <= fn.min_instances:
                return  # held by min_instances: armed again when it next goes idle
            self._stop(inst)
            at = self.residency.prewarm_at_ns(fn, now)
            if at is not None:
                self.clock.call_at_fast(at, self._prewarm, fn.name)
            return
        inst.expiry = due
        self.clock.call_at_fast(due, self._expire, inst, due)

    def stop_instance(self, inst: Instance) -> None:
        """Stop `inst`: at once when idle or starting, after its current batch (and backlog) when busy. Who
        calls it: `Tenancy` (fair share, realtime room); the controller's own paths call `_stop`. Refused (and
        counted) when it would take the function below its `min_instances`."""
        if len(self.instances_by_fn[inst.function.name]) <= inst.function.min_instances:
            self.acct.refuse(f"min_instances: {inst.function.name} keeps {inst.function.min_instances} live")
            return
        self._stop(inst)

    def _stop(self, inst: Instance) -> None:
        if inst.state == _STOPPED:
            return
        if inst.state == _BUSY or inst.backlog:
            inst.stopping = True
            self.idle_by_fn[inst.function.name].pop(inst.id, None)
            return
        self._release(inst)
        if self.on_instance_event:
            self.on_instance_event("stop", inst)

    def _release(self, inst: Instance) -> None:
        now = self.clock.now_ns()
        if inst.state == _STARTING:
            self.starting_by_fn[inst.function.name] -= 1
        self.idle_by_fn[inst.function.name].pop(inst.id, None)
        inst.state = _STOPPED
        self.capacity_epoch += 1
        gpu = inst.gpu
        gpu.free_units += inst.share_units
        gpu.free_mb += inst.memory_mb
        gpu.instance_ids.discard(inst.id)
        del self.instances[inst.id]
        self.tenancy.hold(inst, -1)
        self.instances_by_fn[inst.function.name].remove(inst)
        self.acct.bill_allocated(inst, now)  # the part of its lifetime after the warm-up
        if inst.prewarm and now >= self.acct.warmup_end_ns:  # pre-warmed, released without running anything
            self.acct.prewarms_wasted += 1
        self.backend.stop(inst)
        self._drop_rules()
        if self.ready_queues:
            self._request_pass()

    def report(self) -> dict:
        """`Accounting.report()` with the live instances billed up to now: the gateway's `/v1/usage` figures
        (the simulation driver reads `acct.report()` after `shutdown`, when none is live). Changes nothing."""
        return self.acct.report(self.instances.values(), self.clock.now_ns())

    def shutdown(self) -> None:
        """Stop every instance now (ends allocated-cost accounting); pending invocations stay pending."""
        for inst in list(self.instances.values()):
            inst.backlog.clear()
            inst.current = None
            self._release(inst)

    # ------------------------------------------------------------------ checks

    def _fingerprint(self) -> tuple:
        return (
            tuple((g.free_units, g.free_mb, tuple(sorted(g.instance_ids))) for g in self.gpus),
            tuple((i.id, i.state, i.stopping, len(i.backlog), i.share_units, i.max_batch) for i in self.instances.values()),
            tuple((k, tuple(j.id for j in q.jobs)) for k, q in self.ready_queues.items()),
            tuple(sorted(self.jobs)),
            len(self.inflight),
        )

    def check_invariants(self) -> None:
        """Assert that no GPU is over-committed and that free amounts match the live instances."""
        for g in self.gpus:
            units = sum(self.instances[i].share_units for i in g.instance_ids)
            mem = sum(self.instances[i].memory_mb for i in g.instance_ids)
            assert units <= g.share_units, f"GPU {g.id} over-committed in share: {units}/{g.share_units}"
            assert mem <= g.memory_mb + 1e-6, f"GPU {g.id} over-committed in memory: {mem}/{g.memory_mb}"
            assert g.free_units == g.share_units - units, f"GPU {g.id} share accounting drifted"
            assert abs(g.free_mb - (g.memory_mb - mem)) < 1e-6, f"GPU {g.id} memory accounting drifted"
        for fname, idle in self.idle_by_fn.items():
            expect = {i.id for i in self.instances_by_fn[fname]
                      if i.state == _IDLE and not i.stopping and not i.backlog}
            assert set(idle) == expect, f"idle set of {fname} drifted: {sorted(idle)} vs {sorted(expect)}"
            starting = sum(1 for i in self.instances_by_fn[fname] if i.state == _STARTING)
            assert self.starting_by_fn[fname] == starting, f"starting count of {fname} drifted"
