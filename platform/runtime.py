"""Runtime state of the control plane: GPUs, instances, workflows, invocations, jobs and AFW queues.

Plain `__slots__` classes, compiled once from the pydantic specs: this is the hot path of both the
simulator and the gateway. Who mutates them: only the `Controller` (and the backends report through
its callbacks). Policies receive them through a `ClusterView` and must treat them as read-only
(`Controller(check_purity=True)` verifies that in tests).
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import Any, Callable

from gpufaas.platform.accounting import WorkflowTally
from gpufaas.platform.units import NS_PER_S, ms_to_ns, s_to_ns
from gpufaas.platform.errors import ProfileError, SpecError
from gpufaas.platform.profiles import LatencyTable, Profiles
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec


class InstanceState(IntEnum):
    """Lifecycle: STARTING -> IDLE <-> BUSY -> STOPPED (keep-alive expiry, Stop, or failure)."""

    STARTING = 0
    IDLE = 1
    BUSY = 2
    STOPPED = 3


class InvocationStatus(IntEnum):
    """How an invocation ended. Every invocation ends exactly once."""

    PENDING = 0
    COMPLETED = 1
    FAILED = 2
    REJECTED = 3
    TIMED_OUT = 4


class Gpu:
    """One physical GPU: share units and memory, both tracked as free amounts."""

    __slots__ = ("id", "node", "node_index", "type_name", "share_units", "free_units", "memory_mb", "free_mb",
                 "usd_per_unit_ns", "instance_ids")

    def __init__(self, gpu_id: int, node: str, node_index: int, type_name: str, share_units: int, memory_mb: float, price_per_hour_usd: float) -> None:
        self.id = gpu_id
        self.node = node
        self.node_index = node_index
        self.type_name = type_name
        self.share_units = share_units
        self.free_units = share_units
        self.memory_mb = float(memory_mb)
        self.free_mb = float(memory_mb)
        # cost of holding one share unit for one nanosecond
        self.usd_per_unit_ns = price_per_hour_usd / 3600.0 / NS_PER_S / share_units
        self.instance_ids: set[int] = set()

    def __repr__(self) -> str:
        return f"Gpu({self.id}@{self.node} {self.type_name} free={self.free_units}/{self.share_units} mem={self.free_mb:.0f}/{self.memory_mb:.0f})"


class FunctionRt:
    """A deployed function compiled for the cluster: per GPU type, its profile and the share options that
    profile covers, and the batch sizes it accepts.

    Who builds it: `Controller.deploy_function` (and tests); nothing changes it afterwards. Policies read
    `tables`, `share_units` and `batch_sizes` to enumerate the (batch, share) configurations they may use.

    - `tables` / `share_units`: only the GPU types of the cluster where the function can run: a profile
      exists, and at least one declared share (in the type's units) and one declared batch size lie
      inside its measured range. `share_units[t]` lists exactly the covered shares, increasing.
    - `batch_sizes`: the declared batch sizes covered on every type in `tables` (one list for all types,
      so a policy may pair any of them with any share of any type).
    - `uncovered`: per GPU type left out or trimmed, one line saying what its profile does not cover.

    NOTE: a profile need not be a full batch x share grid (MIG slices 1/7..3/7 only, say), nor cover all
    that a function declares: the function keeps what is covered and raises SpecError only when nothing
    is covered on any GPU type. A declared share that no GPU type of the cluster can express in its share
    units is another mistake (a typo, not a missing measurement) and stays a SpecError.
    """

    __slots__ = ("name", "spec", "tables", "batch_sizes", "shares", "share_units", "uncovered", "keep_alive_ns",
                 "output_bytes", "tenant", "min_instances", "max_instances", "_lat_ns")

    # NOTE: a share names a whole number of units when it is within this many units of one (0.142857 or
    # 0.1429 for 1/7 of a 7-unit GPU); the share used everywhere is then exactly units / share_units.
    SHARE_TOLERANCE_UNITS = 1e-3

    def __init__(self, spec: FunctionSpec, cluster: ClusterSpec, profiles: Profiles, default_keep_alive_s: float) -> None:
        self.name = spec.name
        self.spec = spec
        self.tenant = spec.tenant
        self.shares: tuple[float, ...] = tuple(spec.shares)
        self.tables: dict[str, LatencyTable] = {}
        self.share_units: dict[str, tuple[int, ...]] = {}
        self.uncovered: dict[str, str] = {}
        batches: tuple[int, ...] = ()
        for name, (table, units, type_batches) in self._covered(spec, cluster, profiles).items():
            keep = tuple(b for b in type_batches if not batches or b in batches)
            if not keep:  # the types before it (the first GPU's first) decided the batch sizes
                self.uncovered[name] = (f"profile {spec.model}@{name} covers batch sizes {list(type_batches)}, none of "
                                        f"{list(batches)} covered on the GPU types listed before it")
                continue
            batches = keep
            self.tables[name] = table
            self.share_units[name] = units
        self.batch_sizes: tuple[int, ...] = batches
        self.keep_alive_ns = s_to_ns(spec.keep_alive_s if spec.keep_alive_s is not None else default_keep_alive_s)
        self.output_bytes = spec.output_bytes_per_item
        self.min_instances = spec.min_instances  # the controller keeps this many live (`Controller._top_up`)
        self.max_instances = spec.max_instances  # None: no limit; the controller refuses a Start above it
        self._lat_ns: dict[tuple[str, int, int, int], int] = {}

    def _units(self, share: float, units_per_gpu: int) -> int | None:
        """`share` in whole units of a GPU split into `units_per_gpu`, or None if it is no whole number."""
        u = share * units_per_gpu
        return int(round(u)) if abs(u - round(u)) <= self.SHARE_TOLERANCE_UNITS and round(u) >= 1 else None

    def _covered(self, spec: FunctionSpec, cluster: ClusterSpec,
                 profiles: Profiles) -> dict[str, tuple[LatencyTable, tuple[int, ...], tuple[int, ...]]]:
        """Per GPU type in use (in node order), its table, covered share units and covered batch sizes;
        notes in `uncovered` what is left out. SpecError (ProfileError) when nothing is covered anywhere."""
        types = [cluster.gpu_type(n) for n in dict.fromkeys(n.gpu_type for n in cluster.nodes if n.gpus > 0)]
        odd = [s for s in spec.shares if all(self._units(s, t.share_units) is None for t in types)]
        if odd:
            t = types[0]
            raise SpecError(f"function {spec.name}: shares: {odd[0]:g} is not a multiple of 1/{t.share_units} "
                            f"(GPU type {t.name} is shared in {t.share_units} units), nor of any other GPU type's unit "
                            f"in the cluster; use multiples of {1 / t.share_units:g}")
        out: dict[str, tuple[LatencyTable, tuple[int, ...], tuple[int, ...]]] = {}
        missing: list[ProfileError] = []
        measured: list[str] = []
        for t in types:
            try:
                table = profiles.table(spec.model, t.name)
            except ProfileError as e:
                missing.append(e)
                self.uncovered[t.name] = str(e)
                continue
            measured.append(f"profile {spec.model}@{t.name} measures batch sizes {table.batches[0]}..{table.max_batch}, "
                            f"shares {table.min_share:.3g}..{1.0 / table.inv_shares[0]:.3g}")
            units: dict[int, None] = {}
            lost_shares = []
            for s in spec.shares:
                u = self._units(s, t.share_units)
                if u is not None and table.covers(table.batches[0], u / t.share_units):
                    units[u] = None
                else:
                    lost_shares.append(s)
            batches = tuple(b for b in spec.batch_sizes if table.covers(b, 1.0 / table.inv_shares[0]))
            lost_batches = [b for b in spec.batch_sizes if b not in batches]
            if lost_shares or lost_batches:
                self.uncovered[t.name] = (f"profile {spec.model}@{t.name} does not cover shares {lost_shares}, "
                                          f"batch sizes {lost_batches}")
            if units and batches:
                out[t.name] = (table, tuple(sorted(units)), batches)
        if not measured:
            raise missing[0]  # no profile on any GPU type: its message says where it looked and what to add
        if not out:
            raise SpecError(f"function {spec.name}: no declared (batch, share) lies inside its profile on any GPU type of "
                            f"the cluster ({'; '.join(measured)}; declared batch_sizes {list(spec.batch_sizes)}, shares "
                            f"{list(spec.shares)}); declare batch_sizes and shares inside a measured range, or measure "
                            f"the ones you need with `gpufaas profile`")
        return out

    def latency_ns(self, gpu_type: str, batch: int, share_units: int, units_per_gpu: int) -> int:
        """Profiled execution time of one batch (memoized: the tables never change after deploy)."""
        key = (gpu_type, batch, share_units, units_per_gpu)
        v = self._lat_ns.get(key)
        if v is None:
            v = self._lat_ns[key] = ms_to_ns(self.tables[gpu_type].latency_ms(batch, share_units / units_per_gpu))
        return v


class StageRt:
    """One stage of a compiled workflow."""

    __slots__ = ("name", "index", "function", "preds", "succs", "queue")

    def __init__(self, name: str, index: int, function: str) -> None:
        self.name = name
        self.index = index
        self.function = function
        self.preds: tuple[int, ...] = ()
        self.succs: tuple[int, ...] = ()
        # NOTE: declared, not assigned: `Controller.deploy_workflow` gives every stage its AfwQueue before
        # the workflow is visible to anything that reads queues.
        self.queue: AfwQueue


class WorkflowRt:
    """A deployed workflow: stages in topological order with predecessor/successor indices, and the tally
    its invocations count into (the controller passes its `Accounting.tally`; without one, a tally of its own)."""

    __slots__ = ("name", "spec", "stages", "by_name", "entries", "num_exits", "slo_ns", "tenant", "priority", "graph",
                 "pred_counts", "tally")

    def __init__(self, spec: WorkflowSpec, functions: dict[str, FunctionRt], tally: WorkflowTally | None = None) -> None:
        import networkx as nx

        self.name = spec.name
        self.spec = spec
        self.tenant = spec.tenant
        self.priority = spec.priority
        self.tally = tally if tally is not None else WorkflowTally(spec.name, spec.tenant, spec.priority)
        self.slo_ns = ms_to_ns(spec.slo_ms)
        g = spec.graph()
        self.graph = g
        order = list(nx.lexicographical_topological_sort(g))
        by_stage = {st.name: st for st in spec.stages}
        for i, st in enumerate(spec.stages):
            if st.function not in functions:
                raise SpecError(f"workflow {spec.name}: stages[{i}].function: unknown function '{st.function}'; deploy it first "
                                f"(known: {sorted(functions)})")
        self.stages: list[StageRt] = [StageRt(n, i, by_stage[n].function) for i, n in enumerate(order)]
        self.by_name = {s.name: s for s in self.stages}
        for s in self.stages:
            s.preds = tuple(self.by_name[p].index for p in g.predecessors(s.name))
            s.succs = tuple(sorted(self.by_name[c].index for c in g.successors(s.name)))
        self.entries = tuple(s.index for s in self.stages if not s.preds)
        self.pred_counts = [len(s.preds) for s in self.stages]  # copied into each Invocation.waiting
        self.num_exits = sum(1 for s in self.stages if not s.succs)


class Invocation:
    """One request for a workflow. `on_done(inv)` is called once, when it ends."""

    __slots__ = ("id", "workflow", "tenant", "arrival_ns", "deadline_ns", "waiting", "exits_left", "status", "finish_ns",
                 "reason", "payload", "outputs", "out_gpu", "stage_ns", "on_done", "priority", "cold_waited")

    def __init__(self, inv_id: int, workflow: WorkflowRt, arrival_ns: int, slo_ns: int, payload: Any = None,
                 on_done: Callable[["Invocation"], None] | None = None) -> None:
        self.id = inv_id
        self.workflow = workflow
        self.tenant = workflow.tenant
        self.priority = workflow.priority
        self.arrival_ns = arrival_ns
        self.deadline_ns = arrival_ns + slo_ns
        self.waiting = workflow.pred_counts[:]  # predecessors not yet done, per stage
        self.exits_left = workflow.num_exits
        self.status = InvocationStatus.PENDING
        self.finish_ns = -1
        self.reason = ""
        self.payload = payload
        self.outputs: list[Any] | None = None  # per stage, live mode only
        self.out_gpu: list[Gpu | None] = [None] * len(workflow.stages)
        self.stage_ns: list[tuple[int, int]] | None = None  # (start, end) per stage, live mode only
        self.on_done = on_done
        self.cold_waited = False  # some stage waited on a cold start (Accounting.cold_requests counts it once)

    @property
    def slo_met(self) -> bool:
        return self.status == InvocationStatus.COMPLETED and self.finish_ns <= self.deadline_ns


class Job:
    """One stage of one invocation, waiting in (or taken from) its AFW queue."""

    __slots__ = ("id", "inv", "stage", "queue", "enq_ns", "attempts", "excluded")

    def __init__(self, job_id: int, inv: Invocation, stage: StageRt, queue: "AfwQueue", enq_ns: int) -> None:
        self.id = job_id
        self.inv = inv
        self.stage = stage
        self.queue = queue
        self.enq_ns = enq_ns
        self.attempts = 0
        self.excluded: int = 0  # instance id not to retry on (ids start at 1; 0 = none)

    @property
    def deadline_ns(self) -> int:
        return self.inv.deadline_ns


class AfwQueue:
    """The application-function-wise queue of one (workflow, stage): FIFO jobs and an arrival-rate EWMA."""

    __slots__ = ("key", "workflow", "stage", "function", "jobs", "rate_per_s", "gap_ewma_s", "last_arrival_ns", "arrivals")

    # NOTE: the rate is 1 / EWMA(inter-arrival gap), weight 0.2: it adapts within a handful of arrivals,
    # which is what the batch-fill wait estimate and autoscalers need. Averaging 1/gap instead would be
    # badly biased upwards for bursty traffic (for gamma gaps with cv >= 2, E[1/gap] does not even exist).
    ALPHA = 0.2
    _KEEP = 1.0 - ALPHA

    def __init__(self, workflow: WorkflowRt, stage: StageRt) -> None:
        self.key = (workflow.name, stage.name)
        self.workflow = workflow
        self.stage = stage
        self.function = stage.function
        self.jobs: deque[Job] = deque()
        self.rate_per_s = 0.0
        self.gap_ewma_s = 0.0
        self.last_arrival_ns = -1
        self.arrivals = 0

    def note_arrival(self, now_ns: int) -> None:
        """Called by the controller when a job joins the queue: updates the arrival-rate estimate."""
        last = self.last_arrival_ns
        self.last_arrival_ns = now_ns
        self.arrivals += 1
        if last >= 0:
            gap_s = (now_ns - last or 1) / NS_PER_S
            g = gap_s if self.arrivals == 2 else self._KEEP * self.gap_ewma_s + self.ALPHA * gap_s
            self.gap_ewma_s = g
            self.rate_per_s = 1.0 / g


class Batch:
    """Jobs sent together to one instance."""

    __slots__ = ("id", "instance", "jobs", "dispatch_ns", "start_ns", "not_before_ns", "outputs")

    def __init__(self, batch_id: int, instance: "Instance", jobs: list[Job], dispatch_ns: int) -> None:
        self.id = batch_id
        self.instance = instance
        self.jobs = jobs
        self.dispatch_ns = dispatch_ns
        self.not_before_ns = dispatch_ns
        self.start_ns = -1
        self.outputs: list[Any] | None = None


class Instance:
    """A function container on one GPU with a fixed share. Memory is reserved for `max_batch` items."""

    __slots__ = ("id", "function", "gpu", "share_units", "max_batch", "memory_mb", "state", "start_ns", "ready_ns",
                 "idle_since_ns", "backlog", "current", "expiry", "stopping", "batches_run", "cold_start_ns", "info",
                 "idle_ttl_ns", "prewarm", "start_reason", "_lat_ns")

    def __init__(self, inst_id: int, function: FunctionRt, gpu: Gpu, share_units: int, max_batch: int, memory_mb: float, now_ns: int) -> None:
        self.id = inst_id
        self.function = function
        self.gpu = gpu
        self.share_units = share_units
        self.max_batch = max_batch
        self.memory_mb = memory_mb
        self.state = InstanceState.STARTING
        self.start_ns = now_ns
        self.ready_ns = -1
        self.idle_since_ns = -1
        self.backlog: deque[Batch] = deque()  # batches dispatched while starting or busy
        self.current: Batch | None = None
        self.expiry: int | None = None  # when its armed keep-alive timer fires (None: none armed)
        self.idle_ttl_ns = 0  # how long it may stay idle this time (the residency policy's answer when it went idle)
        self.prewarm = False  # started ahead of a predicted arrival and has run nothing yet
        self.start_reason = ""  # why it was started (`Start.reason`; "prewarm", "min_instances" for the residency's)
        self.stopping = False
        self.batches_run = 0
        self.cold_start_ns = 0
        self.info: dict = {}
        self._lat_ns: list[int | None] = [None] * (max_batch + 1)  # batch_latency_ns by batch size

    @property
    def share(self) -> float:
        return self.share_units / self.gpu.share_units

    def batch_latency_ns(self, batch_size: int) -> int:
        """Profiled execution time of a batch of `batch_size` on this instance's GPU type and share.
        Every backend that emulates or simulates GPU time (sim, inproc, process, docker, ray) uses it.
        NOTE: memoized per instance (sound: its GPU type, share and the profile never change)."""
        v = self._lat_ns[batch_size]
        if v is None:
            gpu = self.gpu
            v = self._lat_ns[batch_size] = self.function.latency_ns(gpu.type_name, batch_size, self.share_units,
                                                                      gpu.share_units)
        return v

    def __repr__(self) -> str:
        return f"Instance({self.id} {self.function.name} gpu={self.gpu.id} units={self.share_units} {self.state.name})"


def build_gpus(cluster: ClusterSpec) -> list[Gpu]:
    """The cluster's GPUs, numbered 0.. in node order."""
    gpus: list[Gpu] = []
    for ni, node in enumerate(cluster.nodes):
        t = cluster.gpu_type(node.gpu_type)
        for _ in range(node.gpus):
            gpus.append(Gpu(len(gpus), node.name, ni, t.name, t.share_units, t.memory_mb, t.price_per_hour_usd))
    return gpus
