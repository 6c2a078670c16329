"""ESG_Dispatch: where a chosen (batch, share) runs, and how soon it could start there.

`Capacity` is a pass-local model of the cluster built from the view at the start of one policy call:
free share units and memory per GPU, and for each live instance the time it is expected to be free
(idle now, or after its current batch and backlog, or after its cold start). Decisions taken earlier in
the same call update it, so two queues never get the same idle instance or the same free share, and no
decision over-commits a GPU. It is rebuilt on every call and never kept across calls (a view must not be
kept either).

Placement order for a (function, batch, share): a warm idle instance with that share (preferring the GPU,
then the node, that holds the predecessors' outputs); else a busy or starting instance with that share
that frees in time (the batch queues behind it); else a GPU with free share and memory (best fit: the one
left with the fewest free units, locality first among equals) and a cold start. Which of these a
configuration gets determines its start delay, and the search sees that delay, so the next-best
configuration wins when the best one has nowhere to run in time.

Who calls it: `policy/esg.py`. It reads the view and changes only its own `Capacity`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufaas.platform.runtime import FunctionRt, Instance, InstanceState, Job
from gpufaas.platform.views import ClusterView

NEW = 0  # placement kinds
WARM = 1


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one configuration would run: an existing instance (`instance_id`) or a new one on `gpu_id`;
    `delay_ns` until it could start the batch."""

    kind: int
    instance_id: int
    gpu_id: int
    units: int
    delay_ns: int


class Capacity:
    """Pass-local free capacity and instance availability (see the module docstring)."""

    __slots__ = ("view", "now_ns", "free_units", "free_mb", "free_at", "used", "by_fn", "started")

    def __init__(self, view: ClusterView, now_ns: int) -> None:
        self.view = view
        self.now_ns = now_ns
        self.free_units = [g.free_units for g in view.gpus]
        self.free_mb = [g.free_mb for g in view.gpus]
        self.free_at: dict[int, int] = {}
        self.used: set[int] = set()  # instances given work or stopped in this call
        self.by_fn: dict[str, list[Instance]] = {}
        self.started: set[str] = set()  # functions given a new instance in this call

    def instances(self, function: str) -> list[Instance]:
        """Live, not-stopping instances of `function` (cached for the call)."""
        v = self.by_fn.get(function)
        if v is None:
            v = self.by_fn[function] = [i for i in self.view.instances(function) if not i.stopping]
        return v

    def free_at_ns(self, inst: Instance) -> int:
        """When `inst` is expected to be free: now if idle, else after its cold start / current batch and
        the batches queued behind it, each timed by the profile."""
        t = self.free_at.get(inst.id)
        if t is not None:
            return t
        now = self.now_ns
        gpu = inst.gpu
        fn = inst.function
        if inst.state == InstanceState.IDLE and not inst.backlog:
            t = now
        else:
            if inst.state == InstanceState.STARTING:
                t = inst.start_ns + self.view.cold_start_ns(fn.name, gpu)
            elif inst.current is not None:
                b = inst.current
                t = max(b.start_ns, b.not_before_ns) + fn.latency_ns(gpu.type_name, len(b.jobs), inst.share_units, gpu.share_units)
            else:
                t = now
            for b in inst.backlog:
                t += fn.latency_ns(gpu.type_name, len(b.jobs), inst.share_units, gpu.share_units)
            t = max(t, now)
        self.free_at[inst.id] = t
        return t

    def placements_by_units(self, fn: FunctionRt, gpu_type: str, units: tuple[int, ...], start_mb: float, cold_ns: int,
                            job: Job) -> dict[int, tuple[list, Placement | None]]:
        """Per share level: the existing instances with that share, quickest (then most local) first, as
        `(delay_ns, -locality, max_batch, instance_id)`, and the cold-start placement (None: no GPU has room).
        One sweep over the function's instances and the GPUs serves every batch size of a decision."""
        out: dict[int, tuple[list, Placement | None]] = {}
        insts: dict[int, list] = {}
        now = self.now_ns
        for inst in self.instances(fn.name):
            if inst.gpu.type_name != gpu_type or inst.id == job.excluded:
                continue
            insts.setdefault(inst.share_units, []).append(
                (self.free_at_ns(inst) - now, -_locality(job, inst.gpu), inst.max_batch, inst.id, inst.gpu.id))
        for u in units:
            cand = insts.get(u, [])
            cand.sort()
            gpu_id = self.best_fit_gpu(gpu_type, u, start_mb, job)
            out[u] = (cand, Placement(NEW, 0, gpu_id, u, cold_ns) if gpu_id is not None else None)
        return out

    @staticmethod
    def pick(entry: tuple[list, Placement | None], units: int, batch: int) -> Placement | None:
        """The quickest placement for a batch of `batch` from a `placements_by_units` entry."""
        cand, new = entry
        for delay, _, max_batch, inst_id, gpu_id in cand:
            if max_batch >= batch:
                if new is not None and new.delay_ns < delay:
                    return new
                return Placement(WARM, inst_id, gpu_id, units, delay)
        return new

    def best_fit_gpu(self, gpu_type: str, units: int, mem_mb: float, job: Job | None) -> int | None:
        """The GPU of `gpu_type` with room for `units` and `mem_mb` that is left with the fewest free units
        (locality to the job's inputs breaks ties); None if none has room."""
        best = None
        best_key = None
        for g in self.view.gpus:
            if g.type_name != gpu_type:
                continue
            fu = self.free_units[g.id]
            if fu < units or self.free_mb[g.id] < mem_mb:
                continue
            key = (fu - units, -_locality(job, g) if job is not None else 0, g.id)
            if best_key is None or key < best_key:
                best_key = key
                best = g.id
        return best

    def take_instance(self, inst: Instance, run_ns: int) -> None:
        """Book a batch of `run_ns` on `inst` (it is busy until then, as far as this call knows)."""
        self.free_at[inst.id] = self.free_at_ns(inst) + run_ns
        self.used.add(inst.id)

    def take_gpu(self, gpu_id: int, units: int, mem_mb: float) -> None:
        """Book share and memory for a new instance."""
        if self.free_units[gpu_id] < units or self.free_mb[gpu_id] < mem_mb:
            raise AssertionError(f"policy bug: would over-commit GPU {gpu_id}")
        self.free_units[gpu_id] -= units
        self.free_mb[gpu_id] -= mem_mb


def _locality(job: Job | None, gpu) -> int:
    """2 when every finished predecessor's output is on `gpu`, 1 when on its node, else 0."""
    if job is None or not job.stage.preds:
        return 0
    out = job.inv.out_gpu
    score = 2
    for p in job.stage.preds:
        src = out[p]
        if src is None or src is gpu:
            continue
        score = min(score, 1 if src.node_index == gpu.node_index else 0)
    return score
