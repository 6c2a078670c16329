"""`per-request`: the scale-per-request model of SimFaaS (Mahmoudi & Khazaei, "SimFaaS: A Performance
Simulator for Serverless Computing Platforms", CLOSER 2021; PyPI `simfaas`), which AWS Lambda, Google
Cloud Functions and Azure Functions follow for one function.

What it decides, per queued job (request), oldest first: an idle warm instance of its function takes it,
the newest instance first (SimFaaS `ServerlessSimulator.schedule_warm_instance`: the largest creation
time among the idle ones); when none is idle, a new instance is started for it (a cold start) at the
function's largest share ("whole GPU", as `batch1-wholegpu`), and the job is its first batch, run as soon
as the instance is up. Batch 1 always; an instance is never given a second job while it runs one. Idle
instances are released by the controller after their keep-alive (the residency policy's idle time,
`fixed` = the function's `keep_alive_s`), counted from the moment the instance went idle, as SimFaaS's
`FunctionInstance.update_next_termination` counts its expiration threshold from the last departure.

NOTE: two places where SimFaaS's model and a GPU cluster part, and what this policy does there:
- SimFaaS rejects a request when `maximum_concurrency` instances are running; here capacity is the
  cluster's GPUs, and a job that finds neither an idle instance nor room for a new one waits in its queue
  for the next instance to go idle (the controller's idle pull hands it over). With enough GPUs it never
  waits, which is SimFaaS's model (the cross-check, tests/test_simfaas_crosscheck.py, sizes its cluster so).
- SimFaaS models one function with no capacity limit; this policy neither evicts nor shares a GPU, so on
  a full cluster a function with no instance waits until another function's instances expire (the chain
  golden, 200 rps on four GPUs, starves its second stage). It is a model check, not a policy for such a cluster.
- SimFaaS's "newest" is by creation time; instance ids are issued in creation order (the controller's one
  counter), so the largest idle id is the newest instance.

Who calls it: the controller (`schedule`), through the registry name `per-request`. What it may change:
nothing it reaches through the view; it keeps no state between calls.
"""

from __future__ import annotations

from typing import Any, Mapping

from gpufaas.platform.decisions import Decisions, Dispatch, Start
from gpufaas.platform.policy.batch1_wholegpu import whole_units
from gpufaas.platform.policy.params import PolicyParams, validate
from gpufaas.platform.runtime import FunctionRt, Instance
from gpufaas.platform.views import ClusterView


class PerRequestPolicy:
    """SimFaaS's platform model: per-request scale-out, newest idle instance first, batch 1, whole share."""

    name = "per-request"
    Params = PolicyParams  # no parameters: the keep-alive is the scenario's / function's

    def __init__(self, **params: Any) -> None:
        self.params = validate(self.name, self.Params, params)

    def initial_state(self, view: ClusterView) -> Any:
        return None

    def schedule(self, view: ClusterView, now_ns: int, state: Any) -> tuple[Decisions, Any]:
        actions: list = []
        used: set[int] = set()  # idle instances given a job in this pass
        room: dict[int, list] = {}  # GPU id -> [free units, free MB] left in this pass, of the GPUs looked at
        idle_by = view.idle_by_function
        for q in view.ready_queues():
            fname = q.function
            idle = idle_by[fname]
            fn: FunctionRt | None = None
            for job in q.jobs:
                inst_id = _newest_idle(idle, used, job.excluded)
                if inst_id:
                    used.add(inst_id)
                    actions.append(Dispatch((job.id,), inst_id))
                    continue
                if fn is None:
                    fn = view.functions[fname]
                start = _start_on_free_gpu(view, fn, room, job.id)
                if start is None:
                    break  # no room: the rest of this queue waits for an instance to go idle
                actions.append(start)
        # NOTE: Decisions.idle_pulls: an instance going idle while jobs wait (no room was left to start one)
        # takes the oldest, which is what this pass would give it when it is the only idle instance.
        # Decisions.arrival_push: a new job, with no other job queued, goes to its function's newest idle
        # instance, which is what this pass would give it; so a call happens only for a job that finds no
        # idle instance (a cold start), or waits behind others
        return Decisions(tuple(actions), None, False, True, True), None


def _newest_idle(idle: Mapping[int, Instance], used: set[int], excluded: int) -> int:
    """The id of the newest idle instance not in `used` and not `excluded` (a retry's failed instance); 0 if
    none. `idle` maps id -> instance, ids in creation order."""
    if not used and not excluded:
        return max(idle) if idle else 0
    best = 0
    for iid in idle:
        if iid > best and iid not in used and iid != excluded:
            best = iid
    return best


def _start_on_free_gpu(view: ClusterView, fn: FunctionRt, room: dict[int, list], job_id: int) -> Start | None:
    """A Start of `fn` at its whole share on the first GPU (cluster order) with room for it, running job
    `job_id` first; the room it takes is booked in `room` (a GPU's entry is made when first looked at: a
    pass on a large cluster looks at the first few). None when no GPU has room."""
    for g in view.gpus:
        units = whole_units(fn, g.type_name)
        if not units:
            continue
        free = room.get(g.id)
        if free is None:
            free = room[g.id] = [g.free_units, g.free_mb]
        mem = fn.tables[g.type_name].memory_mb(1)
        if free[0] >= units and free[1] >= mem:
            free[0] -= units
            free[1] -= mem
            return Start(fn.name, g.id, units, 1, (job_id,), "request")
    return None
