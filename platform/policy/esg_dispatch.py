"""ESG_Dispatch with late binding: jobs wait in their workflow's queues until an instance is idle, and
are shed under contention when they can no longer meet their deadline.

- **Order.** A function's queued jobs (all its AFW queues) are served earliest *stage* deadline first.
  A job's stage deadline is its segment's budget from the time actually left (dominator split,
  `slo.stage_budget_ns`): now + (deadline - now) x the stage's budget weight. One queue is FIFO.
- **Bind late.** A batch goes only to an idle instance, most recently idle first and draining ones
  (surplus to the pool's need, `esg_pool`) last, so that surplus instances stay idle and are
  released; among the first few, the one on the head's input GPU (data locality). A batch never
  queues behind a busy or cold-starting instance: nothing is committed where it cannot start now.
- **Size.** The batch takes as many jobs as the instance's `max_batch` allows, shrunk while the head
  could not finish its stage by the latest time that still lets its deadline be met.
- **Shed.** Under contention (more jobs than the idle instances take now) a job is shed when it
  cannot meet its deadline on the planned path (`planned_after_ns`: the later stages' planned runs,
  which is what busy pools give it); a job that cannot meet it even on the fastest path
  (`fastest_after_ns`) is rejected when its workflow says `on_deadline_miss: reject`; otherwise it
  runs and counts as a miss. At a tick, a function whose queue exceeds one round of all its
  instances projects each job's finish in queue order and sheds those that would miss, so the
  capacity goes to jobs that can still make it (goodput).

  NOTE: under contention the fastest path is the wrong test: an overloaded first stage served
  earliest deadline first passes on jobs just before they become hopeless by it, with too little
  time left for the later stages' real batches, and every one of them misses downstream (the
  earliest-deadline-first domino: on 4 V100s at twice their capacity, hit fell to 0.29 once
  preprocess became the bottleneck).

Who calls it: `esg.EsgPolicy.schedule`. Reads the view; appends `Dispatch`/`Reject` actions.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterable, Iterator

from gpufaas.platform.decisions import Dispatch, Reject
from gpufaas.platform.policy.esg_plan import WorkflowPlan
from gpufaas.platform.runtime import AfwQueue, Instance, InstanceState, Job
from gpufaas.platform.views import ClusterView

_STARTING = InstanceState.STARTING
_REJECT_REASON = "shed: cannot meet its deadline and the function's capacity is contended"
_MISS_REASON = "deadline cannot be met (workflow on_deadline_miss: reject)"
# NOTE: how many idle instances the locality preference looks through for the head's input GPU: a
# bound on per-pass work at large clusters; beyond it the most recently idle instance is used
LOCALITY_SCAN = 8


def by_function(queues: Iterable[AfwQueue]) -> dict[str, list[AfwQueue]]:
    """Ready queues grouped by function, in the controller's order."""
    out: dict[str, list[AfwQueue]] = {}
    for q in queues:
        lst = out.get(q.function)
        if lst is None:
            out[q.function] = [q]
        else:
            lst.append(q)
    return out


def ordered_jobs(qs: list[AfwQueue], plans: dict[str, WorkflowPlan], now_ns: int) -> Iterator[Job]:
    """A function's queued jobs, earliest stage deadline first (module docstring)."""
    if len(qs) == 1:
        return iter(qs[0].jobs)

    def keyed(q: AfwQueue) -> Iterator[tuple[float, int, Job]]:
        plan = plans.get(q.workflow.name)
        w = plan.budget_weight[q.stage.index] if plan is not None else 1.0
        for j in q.jobs:
            yield now_ns + (j.inv.deadline_ns - now_ns) * w, j.id, j

    return (t[2] for t in heapq.merge(*(keyed(q) for q in qs)))


def _after(plans: dict[str, WorkflowPlan], job: Job, planned: bool) -> int:
    """The time `job` needs after its stage: on the planned path (`planned`) or the fastest one."""
    plan = plans.get(job.inv.workflow.name)
    if plan is None:
        return 0
    return (plan.planned_after_ns if planned else plan.fastest_after_ns)[job.stage.index]


def _hopeless(plans: dict[str, WorkflowPlan], job: Job, start_ns: int, run_ns: int, planned: bool) -> bool:
    return start_ns + run_ns + _after(plans, job, planned) > job.inv.deadline_ns


def dispatch(view: ClusterView, now_ns: int, fname: str, qs: list[AfwQueue], queued: int,
             plans: dict[str, WorkflowPlan], used: set[int], draining: set[int], actions: list) -> int:
    """Give `fname`'s queued jobs (`queued` of them in `qs`) to its idle instances (module docstring).
    `used`: instances given work in this pass (updated); `draining`: instances to use last. Returns
    how many of the jobs it shed for contention are evidence that the pool is short (`shed_evidence`)."""
    idle = [i for i in view.idle_instances(fname) if i.id not in used]
    if not idle:
        return 0
    idle.reverse()  # most recently idle first
    if draining:
        idle.sort(key=lambda i: i.id in draining)  # stable: draining ones last
    room = sum(i.max_batch for i in idle)
    contended = queued > room
    jobs = ordered_jobs(qs, plans, now_ns)
    shed: list[Job] = []
    missed: list[int] = []
    held: list[Job] = []  # jobs taken from the order but not yet placed (excluded here, or cut from a batch)

    def drop(j: Job, start_ns: int, run_ns: int) -> bool:
        """Reject `j` if it cannot meet its deadline and the rules say so (module docstring)."""
        if contended and _hopeless(plans, j, start_ns, run_ns, planned=True):
            shed.append(j)
        elif j.inv.workflow.spec.on_deadline_miss == "reject" and _hopeless(plans, j, start_ns, run_ns, planned=False):
            missed.append(j.id)
        else:
            return False
        return True

    while idle:
        head = held.pop(0) if held else next(jobs, None)
        if head is None:
            break
        inst = _pick(idle, head)
        if head.excluded == inst.id:  # a failed attempt there: another instance, or it waits
            alt = next((k for k, i in enumerate(idle) if i.id != head.excluded), None)
            idle.append(inst)
            if alt is None:
                break
            inst = idle.pop(alt)
        x = view.transfer_ns(head, inst.gpu) if head.stage.preds else 0
        if drop(head, now_ns + x, inst.batch_latency_ns(1)):
            idle.insert(0, inst)  # still free
            continue
        batch = [head]
        skipped: list[Job] = []
        pending, held = held, []
        run1 = inst.batch_latency_ns(1)
        for k, j in enumerate(itertools.chain(pending, jobs)):
            if len(batch) >= inst.max_batch:
                held = pending[k:]  # those of `pending` not looked at (none if k is past them)
                if k < len(pending):
                    break
                held = [j]  # from the order: looked at, not placed
                break
            if j.excluded == inst.id:
                skipped.append(j)
            elif not drop(j, now_ns, run1):
                batch.append(j)
        # shrink while the head could not finish its stage in time with the larger batch (keep >= 1)
        slack = head.inv.deadline_ns - now_ns - x - _after(plans, head, planned=False)
        k = len(batch)
        while k > 1 and inst.batch_latency_ns(k) > slack:
            k -= 1
        held = skipped + batch[k:] + held
        used.add(inst.id)
        actions.append(Dispatch(tuple(j.id for j in batch[:k]), inst.id))
    if shed:
        actions.append(Reject(tuple(j.id for j in shed), _REJECT_REASON))
    if missed:
        actions.append(Reject(tuple(missed), _MISS_REASON))
    return shed_evidence(view, fname, shed)


def shed_evidence(view: ClusterView, fname: str, shed: list[Job]) -> int:
    """How many of `shed` (jobs of `fname` shed for contention) are evidence that its pool is short: those
    that joined its queue after its newest instance was up, of invocations that waited on no cold start
    (`Invocation.cold_waited`). NOTE: a job that queued while capacity cold-started, here or at an earlier
    stage, lost its time to the cold start, not to the pool's size: right after a workflow's first instances
    come up, the jobs that piled up meanwhile are shed in numbers that depend on how long those cold starts
    took (live, on what else the machine did), and counting them grew the pool on that chance (video at
    load 1: a second vit-b16 at 1.2 s in some runs and not others). A job that came late for another reason
    (an earlier stage's backlog) still counts: a larger pool here can still serve it in time, and on bursty
    arrivals (text-pipeline, gamma cv 4, 60 ms SLO, not shipped) leaving those out gave up 0.01 of SLO hit
    for 5-9 % of cost."""
    if not shed:
        return 0
    up_ns = max((i.ready_ns for i in view.instances(fname)), default=0)
    return sum(1 for j in shed if j.enq_ns >= up_ns and not j.inv.cold_waited)


def _pick(idle: list[Instance], head: Job) -> Instance:
    """Remove and return the instance for `head`: the first (of `LOCALITY_SCAN`) on the GPU that holds
    its inputs, else the most recently idle."""
    preds = head.stage.preds
    if preds:
        src = head.inv.out_gpu[preds[0]]
        for k, inst in enumerate(itertools.islice(idle, LOCALITY_SCAN)):
            if inst.gpu is src:
                return idle.pop(k)
    return idle.pop(0)


def shed_backlog(view: ClusterView, now_ns: int, fname: str, qs: list[AfwQueue], queued: int,
                 plans: dict[str, WorkflowPlan], actions: list) -> int:
    """At a tick: if `fname`'s queue exceeds one round of all its live instances, project each job's
    finish in service order (rounds of the instances' full batches) and reject the jobs that would
    miss. Returns how many of them are evidence that the pool is short (`shed_evidence`)."""
    live = [i for i in view.instances(fname) if not i.stopping]
    if not live:
        return 0
    per_round = sum(i.max_batch for i in live)
    if queued <= per_round:
        return 0
    round_ns = sum(i.batch_latency_ns(i.max_batch) for i in live) // len(live)
    first_ns = min(_free_in_ns(view, i, now_ns) for i in live)
    admitted = 0
    shed: list[Job] = []
    for j in ordered_jobs(qs, plans, now_ns):
        finish = now_ns + first_ns + (admitted // per_round + 1) * round_ns + _after(plans, j, planned=True)
        if finish > j.inv.deadline_ns:
            shed.append(j)
        else:
            admitted += 1
    if shed:
        actions.append(Reject(tuple(j.id for j in shed), _REJECT_REASON))
    return shed_evidence(view, fname, shed)


def _free_in_ns(view: ClusterView, inst: Instance, now_ns: int) -> int:
    """How long until `inst` could take a batch: 0 if idle, else its cold start's or batch's remainder."""
    if inst.state == _STARTING:
        return max(0, inst.start_ns + view.cold_start_ns(inst.function.name, inst.gpu) - now_ns)
    b = inst.current
    if b is None:
        return 0
    return max(0, max(b.start_ns, b.not_before_ns) + inst.batch_latency_ns(len(b.jobs)) - now_ns)
