"""`ClusterView`: what a policy sees of the cluster and the queues during one call.

NOTE: the view is a read-only facade over the controller's live state, not a deep copy. A policy runs
once per scheduling pass, tens of thousands of times per simulated second, and copying every GPU,
instance and queue each time would cost more than the decision. The controller is single-threaded
and changes nothing while the policy runs, so the facade is a consistent snapshot for the duration of
the call (the K8s scheduler's `Snapshot` contract). It must not be kept across calls, and the policy
must not mutate what it reaches through it: `Controller(check_purity=True)` fingerprints the state
around every call and fails loudly if a policy does (the test suite runs every policy that way).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from gpufaas.platform.runtime import AfwQueue, FunctionRt, Gpu, Instance, Job, WorkflowRt
from gpufaas.platform.specs import NetworkSpec


class ClusterView:
    """Read-only facade: GPUs, instances, deployed functions/workflows and non-empty AFW queues.

    Who builds it: the `Controller` (one per controller, reused). Who reads it: `Policy.schedule`.
    """

    __slots__ = ("_ctl", "idle_by_function", "instances_by_function")

    def __init__(self, controller) -> None:
        self._ctl = controller
        # NOTE: a plain attribute, not a property: the hot loop of a policy reads it once per queue.
        self.idle_by_function: Mapping[str, Mapping[int, Instance]] = controller.idle_by_fn
        """Per deployed function, its idle instances by id, longest idle first (see `idle_instances`)."""
        self.instances_by_function: Mapping[str, list[Instance]] = controller.instances_by_fn
        """Per deployed function, its live instances, oldest first (see `instances`)."""

    @property
    def now_ns(self) -> int:
        return self._ctl.clock.now_ns()

    @property
    def capacity_epoch(self) -> int:
        """Changes whenever an instance starts, becomes ready, goes idle or stops."""
        return self._ctl.capacity_epoch

    @property
    def network(self) -> NetworkSpec:
        """The cluster's interconnect: host and network bandwidth, network latency."""
        return self._ctl.cluster.network

    @property
    def gpus(self) -> list[Gpu]:
        """All GPUs, by id (index = id)."""
        return self._ctl.gpus

    @property
    def functions(self) -> Mapping[str, FunctionRt]:
        return self._ctl.functions

    @property
    def workflows(self) -> Mapping[str, WorkflowRt]:
        return self._ctl.workflows

    def ready_queues(self) -> Iterable[AfwQueue]:
        """Queues that hold at least one job, in the order they last became non-empty."""
        return self._ctl.ready_queues.values()

    def arrivals_by_function(self) -> dict[str, int]:
        """Arrivals so far per function, summed over its AFW queues (the pool baselines' rate samples)."""
        out: dict[str, int] = {}
        for wf in self.workflows.values():
            for st in wf.stages:
                out[st.function] = out.get(st.function, 0) + st.queue.arrivals
        return out

    def queue(self, workflow: str, stage: str) -> AfwQueue:
        return self._ctl.workflows[workflow].by_name[stage].queue

    def instances(self, function: str) -> list[Instance]:
        """Live instances of `function` (starting, idle or busy), oldest first."""
        return self._ctl.instances_by_fn.get(function, [])

    def idle_instances(self, function: str) -> Iterable[Instance]:
        """Idle (warm, not stopping, nothing queued on them) instances of `function`, longest idle first.
        A live view maintained by the controller: iterate it, do not keep it."""
        return self._ctl.idle_by_fn.get(function, {}).values()

    def starting_count(self, function: str) -> int:
        """How many instances of `function` are cold-starting now."""
        return self._ctl.starting_by_fn.get(function, 0)

    def instance(self, instance_id: int) -> Instance:
        return self._ctl.instances[instance_id]

    def transfer_ns(self, job: Job, gpu: Gpu) -> int:
        """Time to move `job`'s inputs from where its predecessors ran onto `gpu`."""
        return self._ctl.transfer_ns(job, gpu)

    def cold_start_ns(self, function: str, gpu: Gpu) -> int:
        """Profiled cold-start time of `function` on a GPU of `gpu`'s type."""
        return self._ctl.cold_start_ns(self._ctl.functions[function], gpu)

    def keeps_warm(self, function: str) -> bool:
        """Whether the residency policy wants `function` (with no queued work) to have an instance now: False
        only while it has released it on purpose (evicted down to no instance since its last arrival, or
        `Residency.keeps_warm`), which a pool that keeps one instance per active function should not undo
        with a start (a cold start, and an eviction of another function where room is short)."""
        ctl = self._ctl
        return (function not in ctl.evicted_fns
                and ctl.residency.keeps_warm(ctl.functions[function], ctl.clock.now_ns()))

    def latency_ns(self, function: str, gpu_type: str, batch: int, share_units: int, units_per_gpu: int) -> int:
        """Profiled execution time of one batch."""
        return self._ctl.functions[function].latency_ns(gpu_type, batch, share_units, units_per_gpu)
