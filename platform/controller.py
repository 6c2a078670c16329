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
from typing import TYPE_CHECKING, Any, Callable

from gpufaas.platform.accounting import Accounting
from gpufaas.platform.clock import Clock, Handle, ms_to_ns, perf_ns
from gpufaas.platform.decisions import Decisions, Dispatch, Reject, Start, Stop
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.runtime import (AfwQueue, Batch, FunctionRt, Gpu, Instance, InstanceState, Invocation,
                                      InvocationStatus, Job, WorkflowRt, build_gpus)
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec
from gpufaas.platform.views import ClusterView

if TYPE_CHECKING:  # the seams' protocols (annotations only: no import cycle through the policy package)
    from gpufaas.platform.backends.interface import Backend
    from gpufaas.platform.policy.interface import Policy


# NOTE: module-level aliases of the enum members the hot path compares against, about ten times per
# job: a global read instead of a global read plus a class-attribute read.
_STARTING, _IDLE, _BUSY, _STOPPED = InstanceState.STARTING, InstanceState.IDLE, InstanceState.BUSY, InstanceState.STOPPED
_PENDING, _COMPLETED = InvocationStatus.PENDING, InvocationStatus.COMPLETED


class PolicyPurityError(AssertionError):
    """A policy changed controller state through its view (raised only with check_purity=True)."""


class Controller:
    """The control plane of one cluster. See the module docstring for who calls what."""

    def __init__(self, cluster: ClusterSpec, profiles: Profiles, policy: Policy, backend: Backend, clock: Clock, *,
                 keep_alive_s: float = 60.0, max_retries: int = 1, check_purity: bool = False, live: bool = False) -> None:
        self.cluster = cluster
        self.profiles = profiles
        self.policy = policy
        self.backend = backend
        self.clock = clock
        self.keep_alive_s = keep_alive_s
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
        self.ready_queues: dict[tuple[str, str], AfwQueue] = {}
        self.jobs: dict[int, Job] = {}
        self.inflight: dict[int, Invocation] = {}
        self.acct = Accounting()
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
        self.queued_by_fn: dict[str, int] = {}  # jobs in the queues, per function
        # NOTE: a backend that sets `takes_not_before = True` (the sim backend) starts a batch at
        # batch.not_before_ns itself, which saves the simulator one event per batch whose inputs are in
        # transfer; live backends get the batch when its inputs have arrived.
        self._backend_waits = bool(getattr(backend, "takes_not_before", False))
        # bumped whenever an instance starts, becomes ready, goes idle or stops: a policy can skip work
        # that depends only on capacity while the epoch is unchanged
        self.capacity_epoch = 0
        self.on_instance_event: Callable[[str, Instance], None] | None = None  # hook for metrics
        bind = getattr(backend, "bind", None)
        if bind is not None:
            bind(self)
        self.state = policy.initial_state(self.view)

    # ------------------------------------------------------------------ deployment

    def deploy_function(self, spec: FunctionSpec, *, replace: bool = False) -> FunctionRt:
        """Compile and register a function. SpecError if its profile or shares do not fit the cluster."""
        if spec.name in self.functions and not replace:
            raise SpecError(f"function '{spec.name}' is already deployed; remove it first or redeploy with replace")
        fn = FunctionRt(spec, self.cluster, self.profiles, self.keep_alive_s)
        if spec.name in self.functions:
            for inst in list(self.instances_by_fn.get(spec.name, ())):
                self._stop(inst)
        self.functions[spec.name] = fn
        self.instances_by_fn.setdefault(spec.name, [])
        self.idle_by_fn.setdefault(spec.name, {})
        self.queued_by_fn.setdefault(spec.name, 0)
        self.starting_by_fn.setdefault(spec.name, 0)
        return fn

    def deploy_workflow(self, spec: WorkflowSpec, *, replace: bool = False) -> WorkflowRt:
        """Compile and register a workflow; its functions must be deployed. One AFW queue per stage."""
        old = self.workflows.get(spec.name)
        if old is not None and not replace:
            raise SpecError(f"workflow '{spec.name}' is already deployed; remove it first or redeploy with replace")
        if old is not None and any(s.queue.jobs for s in old.stages):
            raise UserError(f"workflow '{spec.name}' has queued invocations; retry once they finish")
        wf = WorkflowRt(spec, self.functions)
        for s in wf.stages:
            s.queue = AfwQueue(wf, s)
        self.workflows[spec.name] = wf
        return wf

    def remove_workflow(self, name: str) -> None:
        wf = self.workflows.get(name)
        if wf is None:
            raise UserError(f"unknown workflow '{name}'")
        if any(inv.workflow is wf for inv in self.inflight.values()):
            raise UserError(f"workflow '{name}' has invocations in flight; retry once they finish")
        del self.workflows[name]

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
            self.acct.invocations += 1
        self.inflight[inv.id] = inv
        for e in wf.entries:
            self._enqueue(inv, wf.stages[e], now)
        return inv

    def _enqueue(self, inv: Invocation, stage, now: int, front: bool = False, job: Job | None = None) -> None:
        q = stage.queue
        if job is None:
            job = Job(next(self._ids), inv, stage, q, now)
            q.note_arrival(now)
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
        inv.status = status
        inv.finish_ns = now
        inv.reason = reason
        acct = self.acct
        if inv.arrival_ns >= acct.warmup_end_ns:  # Accounting.warmup_end_ns: arrived in the warm-up, not counted
            hit = status == _COMPLETED and now <= inv.deadline_ns
            if status == _COMPLETED:
                acct.completed += 1
                acct.latency_ms.add((now - inv.arrival_ns) / 1e6)
                if hit:
                    acct.slo_hits += 1
            elif status == InvocationStatus.FAILED:
                acct.failed += 1
            elif status == InvocationStatus.REJECTED:
                acct.rejected += 1
            else:
                acct.timed_out += 1
            pw = acct.per_workflow.get(inv.workflow.name)
            if pw is None:
                pw = acct.per_workflow[inv.workflow.name] = [0, 0]
            pw[0] += 1
            pw[1] += hit
        del self.inflight[inv.id]
        if status != _COMPLETED:
            # drop the invocation's other queued jobs (other branches of a fan-out); the standing rules
            # assumed those jobs were there
            self._drop_rules()
            for s in inv.workflow.stages:
                for j in [j for j in s.queue.jobs if j.inv is inv]:
                    self._unqueue(j)
        if inv.on_done is not None:
            inv.on_done(inv)

    def timeout_pending(self, older_than_ns: int, reason: str = "timed out") -> int:
        """End as TIMED_OUT every pending invocation that arrived before `older_than_ns`. Returns how many."""
        stale = [inv for inv in self.inflight.values() if inv.arrival_ns < older_than_ns]
        for inv in stale:
            self._finish(inv, InvocationStatus.TIMED_OUT, reason)
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
        fp = self._fingerprint() if self.check_purity else None
        t0 = perf_ns()
        decisions, self.state = self.policy.schedule(self.view, now, self.state)
        self.acct.decision_us.add((perf_ns() - t0) / 1000.0)
        if fp is not None and fp != self._fingerprint():
            raise PolicyPurityError(f"policy {getattr(self.policy, 'name', self.policy)!r} changed controller state through its view")
        self.apply(decisions)

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
        if gpu.free_units < a.share_units or gpu.free_mb < mem:
            self.acct.refuse(f"over-commit: GPU {gpu.id} has {gpu.free_units} units / {gpu.free_mb:.0f} MB free, "
                             f"asked {a.share_units} / {mem:.0f}")
            return
        jobs: list[Job] = []
        if a.job_ids:
            taken = self._take_jobs(a.job_ids, fn, -1, a.max_batch)
            if taken is None:
                return
            jobs = taken
        now = self.clock.now_ns()
        gpu.free_units -= a.share_units
        gpu.free_mb -= mem
        inst = Instance(next(self._ids), fn, gpu, a.share_units, a.max_batch, mem, now)
        gpu.instance_ids.add(inst.id)
        self.instances[inst.id] = inst
        self.instances_by_fn[fn.name].append(inst)
        self.starting_by_fn[fn.name] += 1
        if now >= self.acct.warmup_end_ns:  # Accounting.warmup_end_ns
            self.acct.cold_starts += 1
        self.capacity_epoch += 1
        if jobs:
            self._dispatch(inst, jobs)
        if self.on_instance_event:
            self.on_instance_event("start", inst)
        self.backend.start(inst)

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
        return ms_to_ns(fn.tables[gpu.type_name].cold_start.total_ms)

    def _dispatch(self, inst: Instance, jobs: list[Job]) -> None:
        now = self.clock.now_ns()
        batch = Batch(next(self._ids), inst, jobs, now)
        t = 0
        for job in jobs:
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
                payloads.append(inv.outputs[preds[0]])
            else:
                merged: dict = {}
                for p in preds:
                    out = inv.outputs[p]
                    if isinstance(out, dict):
                        merged.update(out)
                payloads.append(merged)
            inv.stage_ns[job.stage.index] = (batch.start_ns, -1)
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
        batch.end_ns = now
        exec_ns = now - batch.start_ns
        batch.exec_ns = exec_ns
        acct = self.acct
        gpu = inst.gpu
        if batch.start_ns >= acct.warmup_end_ns:  # Accounting.warmup_end_ns: the one compare after the warm-up
            unit_ns = exec_ns * inst.share_units
            acct.busy_unit_ns += unit_ns / gpu.share_units
            acct.busy_usd += unit_ns * gpu.usd_per_unit_ns
            acct.batches += 1
            acct.batched_jobs += len(batch.jobs)
        elif now > acct.warmup_end_ns:  # began in the warm-up: bill only the part after it, count no batch
            unit_ns = (now - acct.warmup_end_ns) * inst.share_units
            acct.busy_unit_ns += unit_ns / gpu.share_units
            acct.busy_usd += unit_ns * gpu.usd_per_unit_ns
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
                    inv.stage_ns[stage.index] = (batch.start_ns, now)
                if not stage.succs:
                    inv.exits_left -= 1
                    if inv.exits_left == 0:
                        self._finish(inv, _COMPLETED, "", now)
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
        # NOTE: at most one keep-alive timer per instance: armed when it goes idle with none armed, and when
        # it fires on an instance that worked since, re-armed for idle_since + keep-alive (see _expire). No
        # timer is set or cancelled per batch on the hot path.
        if inst.expiry is None:
            inst.expiry = True
            self.clock.call_at_fast(now + inst.function.keep_alive_ns, self._expire, inst)
        if self.ready_queues:
            queued = self.queued_by_fn[fname]
            # Decisions.idle_pulls, unless a longer-idle instance of the function is first in line
            if queued and self._pull and len(idle) == 1 and self._pull_job(inst):
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

    def _expire(self, inst: Instance) -> None:
        inst.expiry = None
        if inst.state == _STOPPED:
            return
        now = self.clock.now_ns()
        if inst.state != _IDLE or inst.backlog:
            return  # busy: _next_or_idle arms the timer again when the instance next goes idle
        due = inst.idle_since_ns + inst.function.keep_alive_ns
        if now >= due:
            self._stop(inst)
            return
        inst.expiry = True
        self.clock.call_at_fast(due, self._expire, inst)

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
        self.instances_by_fn[inst.function.name].remove(inst)
        # Accounting.warmup_end_ns: only the part of the lifetime after the warm-up is billed
        life = now - max(inst.start_ns, self.acct.warmup_end_ns)
        if life > 0:
            self.acct.allocated_unit_ns += life * inst.share_units / gpu.share_units
            self.acct.allocated_usd += life * inst.share_units * gpu.usd_per_unit_ns
        self.backend.stop(inst)
        self._drop_rules()
        if self.ready_queues:
            self._request_pass()

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
