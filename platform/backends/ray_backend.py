"""The ray backend: one Ray actor per instance, placed by the policy, packed by fractional GPUs.

Who calls what: the gateway calls `prepare(cluster)` once at `gpufaas up` (connects to the Ray cluster
at `address`, or starts a local one that declares the cluster spec's nodes; checks that every node of
the spec is present), `prepare_function` at deploy (a no-op: an actor gets its spec when it starts) and
`aclose()` at exit (the LiveBackend protocol). The controller calls `start`, `submit` and `stop`
(interface.py); answers come back through `on_instance_ready`, `on_batch_done` and `on_instance_failed`
from tasks on the running loop.

How an instance reaches Ray:
- `num_gpus` = the instance's share (Ray packs fractional GPUs: four 0.25 actors share one GPU, a fifth
  waits until one leaves). Where the machines have no GPU, nodes declare logical GPUs (`--num-gpus`).
- a custom resource `gpufaas-gpu-<GPU type>` (amount = share), which only nodes of that type declare;
- the policy's node as `NodeAffinitySchedulingStrategy(node_id, soft=False)`: a node of the cluster spec
  is the Ray node that declares the resource `gpufaas-node-<node name>` (see deploy/ray-cluster.yaml).
Cold start = actor creation + model build (the actor's constructor), measured until `ready()` returns.
A dead actor (killed, OOM, node lost) fails its instance with Ray's reason; the controller retries its
jobs once and the policy starts a replacement.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpufaas.platform.backends.interface import UNBOUND, BackendHost
from gpufaas.platform.backends.process import report_result
from gpufaas.platform.clock import perf_ns
from gpufaas.platform.errors import UserError
from gpufaas.platform.runtime import Batch, Instance

if TYPE_CHECKING:
    from gpufaas.platform.specs import ClusterSpec, FunctionSpec

NODE_RESOURCE_PREFIX = "gpufaas-node-"
GPU_TYPE_RESOURCE_PREFIX = "gpufaas-gpu-"


def node_resource(node: str) -> str:
    """The custom resource a Ray node declares to stand for cluster-spec node `node`."""
    return NODE_RESOURCE_PREFIX + node


def gpu_type_resource(gpu_type: str) -> str:
    """The custom resource, one unit per GPU, that nodes with GPUs of `gpu_type` declare."""
    return GPU_TYPE_RESOURCE_PREFIX + gpu_type


def node_resources(node: str, gpu_type: str, gpus: int) -> dict[str, float]:
    """Custom resources for `ray start --resources` (or `Cluster.add_node`) of one cluster-spec node."""
    return {node_resource(node): 1000.0, gpu_type_resource(gpu_type): float(gpus)}


class FunctionActor:
    """The body of one instance, run by Ray in its own worker process.

    It runs the platform worker's `Runner` (platform/worker.py), the same code the process and docker
    backends' workers run, in `emulated` mode: inputs checked against the spec, the batch held for the
    profiled latency the backend sends, zeros of the declared output shapes returned. The constructor
    is the model build (`build_ms` lets a test or a config stand for a real weight load).
    """

    def __init__(self, spec_json: dict, gpu_type: str, share: float, build_ms: float = 0.0) -> None:
        t0 = time.perf_counter()
        from gpufaas.platform.specs import FunctionSpec
        from gpufaas.platform.worker import Runner

        spec = FunctionSpec.model_validate(spec_json)
        self.function = spec.name
        self.runner = Runner(spec, "emulated", gpu_type=gpu_type, share=share)
        if build_ms > 0:
            time.sleep(build_ms / 1000.0)
        self.build_ms = (time.perf_counter() - t0) * 1000.0

    def ready(self) -> dict:
        import os

        import ray

        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "build_ms": round(self.build_ms, 3)}

    def run(self, items: list, hold_ns: int) -> dict:
        """One batch, answered as the socket worker answers (a RESULT message's fields): {"outputs",
        "errors"} per item, or {"error"} when the whole batch failed."""
        from gpufaas.platform.worker import BatchError

        try:
            outputs, errors = self.runner.run(items, hold_ns)
        except BatchError as e:
            return {"error": str(e)}
        return {"outputs": outputs, "errors": errors}


class _Actor:
    __slots__ = ("inst", "handle", "task", "stopped", "pending")

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.handle: Any = None
        self.task: asyncio.Task | None = None
        self.stopped = False
        self.pending: set[asyncio.Task] = set()


class RayBackend:
    """An actor per instance on a Ray cluster. See the module docstring for the call flow."""

    name = "ray"
    takes_not_before = False

    def __init__(self, *, address: str | None = None, namespace: str = "gpufaas", emulate_latency: bool = True,
                 build_ms: float = 0.0, local_num_cpus: int = 2, object_store_mb: int = 100) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None  # None: start a local Ray
        self.namespace = namespace
        self.emulate_latency = emulate_latency
        self.build_ms = build_ms
        self.local_num_cpus = local_num_cpus
        self.object_store_mb = object_store_mb
        self.ctl: BackendHost = UNBOUND
        self.node_ids: dict[str, str] = {}  # cluster-spec node name -> Ray node id
        self._actors: dict[int, _Actor] = {}
        self._actor_cls: Any = None
        self.test_hold_ms: float | None = None  # test hook: hold every batch this long (kill mid-batch)

    # ------------------------------------------------------------------ set-up (gateway)

    def prepare(self, cluster: ClusterSpec | None = None) -> None:
        """Connect to Ray (or start a local Ray declaring `cluster`'s nodes) and map node names. Blocking.

        Who calls it: the gateway at `gpufaas up`, the tests. Raises UserError when Ray cannot be reached or
        a node of `cluster` has no Ray node declaring its resource.
        """
        import ray

        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, namespace=self.namespace, log_to_driver=False,
                             configure_logging=False)
                else:
                    if cluster is None:
                        raise UserError("ray backend: no address and no cluster spec to declare a local Ray with")
                    res: dict[str, float] = {}
                    total_gpus = 0
                    for n in cluster.nodes:
                        for k, v in node_resources(n.name, n.gpu_type, n.gpus).items():
                            res[k] = res.get(k, 0.0) + v
                        total_gpus += n.gpus
                    # NOTE: a local Ray is one Ray node standing for every node of the spec: placement is
                    # still expressed as node affinity, all of it onto this node. Logical GPUs: Ray
                    # schedules fractions of them, nothing touches a device.
                    ray.init(namespace=self.namespace, num_cpus=self.local_num_cpus, num_gpus=total_gpus,
                             resources=res, object_store_memory=self.object_store_mb * 1024 * 1024,
                             include_dashboard=False, log_to_driver=False, configure_logging=False)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 (ray raises ConnectionError, RuntimeError, ValueError ...)
                where = self.address or "a local Ray"
                raise UserError(f"ray backend: cannot start or reach {where}: {str(e).splitlines()[0]}; "
                                f"check `ray status` or pass the head's address") from None
        self._actor_cls = ray.remote(FunctionActor)
        self.refresh_nodes()
        if cluster is not None:
            missing = [n.name for n in cluster.nodes if n.name not in self.node_ids]
            if missing:
                raise UserError(f"ray backend: no Ray node declares {node_resource(missing[0])!r} for cluster node "
                                f"'{missing[0]}'; start that node with --resources '{{\"{node_resource(missing[0])}\": 1000}}' "
                                f"(see deploy/ray-cluster.yaml)")

    def refresh_nodes(self) -> None:
        """Re-read which Ray node stands for which cluster-spec node (alive nodes only)."""
        import ray

        self.node_ids = {}
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            for key in n.get("Resources", {}):
                if key.startswith(NODE_RESOURCE_PREFIX):
                    self.node_ids[key[len(NODE_RESOURCE_PREFIX):]] = n["NodeID"]

    def actor_of(self, inst: Instance) -> Any:
        """The Ray actor handle of a live instance (None if it has none); tests and operators use it."""
        a = self._actors.get(inst.id)
        return None if a is None else a.handle

    def prepare_function(self, spec: FunctionSpec, bundle_dir: Path) -> None:
        """Nothing to build: an actor gets the spec when it starts (emulated only, no bundle is read)."""

    async def aclose(self) -> None:
        """Cancel every pending reply (no callback follows), then `close()` in a thread: the gateway's exit."""
        for a in self._actors.values():
            a.stopped = True
            for t in [a.task, *a.pending]:
                if t is not None:
                    t.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Kill every actor this backend started; no callback follows. Blocking (tests, `aclose`)."""
        import ray

        for a in list(self._actors.values()):
            a.stopped = True
            if a.handle is not None:
                ray.kill(a.handle, no_restart=True)
        self._actors.clear()

    # ------------------------------------------------------------------ the Backend protocol

    def bind(self, host: BackendHost) -> None:
        """Called once by the controller's constructor."""
        self.ctl = host

    def start(self, inst: Instance) -> None:
        if self._actor_cls is None:
            raise UserError("ray backend: prepare() was not called; the gateway calls it at start-up")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        a = _Actor(inst)
        self._actors[inst.id] = a
        node_id = self.node_ids.get(inst.gpu.node)
        if node_id is None:
            self.refresh_nodes()
            node_id = self.node_ids.get(inst.gpu.node)
        if node_id is None:
            asyncio.get_running_loop().call_soon(self._fail, a, f"ray backend: no live Ray node for cluster node '{inst.gpu.node}'")
            return
        share = inst.share
        # NOTE: num_cpus=0: an actor holds a GPU share, not a CPU; Ray's default (1 CPU to place an actor)
        # would cap instances at the node's CPU count, which has nothing to do with GPU sharing.
        a.handle = self._actor_cls.options(
            num_cpus=0, num_gpus=share, resources={gpu_type_resource(inst.gpu.type_name): share},
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False), max_restarts=0,
            max_concurrency=1, name=None,
        ).remote(inst.function.spec.model_dump(mode="json"), inst.gpu.type_name, share, self.build_ms)
        a.task = asyncio.get_running_loop().create_task(self._await_ready(a, perf_ns()))

    def submit(self, inst: Instance, batch: Batch) -> None:
        a = self._actors.get(inst.id)
        if a is None or a.handle is None:
            self.ctl.on_batch_done(inst, batch, None, "ray backend: instance has no live actor")
            return
        hold_ms = (inst.batch_latency_ns(len(batch.jobs)) / 1e6
                   if self.emulate_latency else 0.0)
        if self.test_hold_ms is not None:
            hold_ms = self.test_hold_ms
        ref = a.handle.run.remote(batch.outputs or [None] * len(batch.jobs), int(hold_ms * 1e6))
        t = asyncio.get_running_loop().create_task(self._await_batch(a, batch, ref))
        a.pending.add(t)
        t.add_done_callback(a.pending.discard)

    def stop(self, inst: Instance) -> None:
        a = self._actors.pop(inst.id, None)
        if a is None:
            return
        a.stopped = True
        if a.task is not None and not a.task.done():
            a.task.cancel()
        for t in list(a.pending):
            t.cancel()
        if a.handle is not None:
            import ray

            ray.kill(a.handle, no_restart=True)

    # ------------------------------------------------------------------ internals

    def _fail(self, a: _Actor, why: str) -> None:
        if not a.stopped:
            self._actors.pop(a.inst.id, None)
            self.ctl.on_instance_failed(a.inst, why)

    async def _await_ready(self, a: _Actor, t0_ns: int) -> None:
        try:
            info = await a.handle.ready.remote()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 (RayActorError and friends: the reason is in the message)
            self._fail(a, f"ray actor for {a.inst.function.name} died while starting: {_reason(e)}")
            return
        if a.stopped:
            return
        cold_ms = (perf_ns() - t0_ns) / 1e6
        info = dict(info)
        build_ms = info.pop("build_ms")
        info = {"backend": "ray", "cold_start_ms": round(cold_ms, 3), "actor_create_ms": round(cold_ms - build_ms, 3),
                "model_build_ms": build_ms, "node": a.inst.gpu.node, **info}
        self.ctl.on_instance_ready(a.inst, info)

    async def _await_batch(self, a: _Actor, batch: Batch, ref: Any) -> None:
        try:
            result = await ref
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            if a.stopped:
                return
            from ray.exceptions import RayActorError

            if isinstance(e, RayActorError):
                self._fail(a, f"ray actor for {a.inst.function.name} died mid-batch: {_reason(e)}")
            else:
                self.ctl.on_batch_done(a.inst, batch, None, f"ray task error: {_reason(e)}")
            return
        if not a.stopped:
            report_result(self.ctl, a.inst, batch, result)


def _reason(e: BaseException) -> str:
    """The first meaningful line of a Ray exception (they span many lines)."""
    for line in str(e).splitlines():
        line = line.strip()
        if line and not line.startswith("(") and "Traceback" not in line:
            return line[:300]
    return type(e).__name__
