"""The backend protocols: how the controller starts, feeds and stops instances, and how the gateway sets
a live backend up and tears it down.

- `BackendHost`: what a backend reports to and reads from; the `Controller` implements it. A backend
  reports only through its three callbacks (plus `fail_invocation` for one bad item of a batch).
- `Backend`: the four calls the controller makes (`bind`, `start`, `submit`, `stop`). The sim backend and
  the test fake implement only this. Calls never block: a live backend starts its own tasks on the
  running loop and calls back from there.
- `LiveBackend`: a `Backend` that runs real instances (inproc, process, docker, ray) and so also has the
  gateway's lifecycle: `prepare(cluster)` once at start-up, `prepare_function(spec, bundle_dir)` at each
  deploy, `aclose()` at exit. Every live backend has all three, a no-op where it needs nothing, so the
  gateway calls them without asking what a backend can do.

Backends are built by name through `platform/backends/registry.py`; tests/test_backend_conformance.py
checks every registered backend (and the sim and fake) against these protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from gpufaas.platform.runtime import Batch, FunctionRt, Gpu, Instance, Invocation, Job
    from gpufaas.platform.specs import ClusterSpec, FunctionSpec


@runtime_checkable
class BackendHost(Protocol):
    """What a backend calls back on. Implemented by `Controller`; tests use recording hosts.

    The callbacks run on the loop (or virtual clock) that drives the host; a backend calls each at most
    once per event and never after `stop(inst)` for that instance."""

    def on_instance_ready(self, inst: Instance, info: dict | None = None) -> None:
        """A cold start finished; `info` holds the measured start-up parts (`*_ms`, `cold_start_ms`)."""
        ...

    def on_batch_done(self, inst: Instance, batch: Batch, outputs: list[Any] | None = None, error: str = "") -> None:
        """A batch ended: one output per job (None where nothing is carried, as in simulation), or an error."""
        ...

    def on_instance_failed(self, inst: Instance, reason: str) -> None:
        """The instance died or could not start; `reason` is one line. No callback for it follows."""
        ...

    def fail_invocation(self, inv: Invocation, reason: str) -> None:
        """End one invocation as failed (an item its worker refused, or a function that cannot start)."""
        ...

    def cold_start_ns(self, fn: FunctionRt, gpu: Gpu) -> int:
        """The profiled cold start of `fn` on `gpu` (profile-timed backends wait this long)."""
        ...

    @property
    def jobs(self) -> Mapping[int, Job]:
        """Queued jobs by id (read only: a backend fails a function's queued jobs through `fail_invocation`)."""
        ...

    @property
    def gpus(self) -> Sequence[Gpu]:
        """The cluster's GPUs by id (read only: a backend maps an instance's GPU to a device index)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Runs instances. Who calls it: the `Controller` only (after `bind`)."""

    name: str
    # True: the backend starts a batch at `batch.not_before_ns` itself (its inputs are in transfer until
    # then), so the controller hands it over at once; False: the controller submits when inputs arrived.
    takes_not_before: bool

    def bind(self, host: BackendHost) -> None:
        """Called once by the controller's constructor: remember where to report."""
        ...

    def start(self, inst: Instance) -> None:
        """Begin a cold start; report `on_instance_ready` or `on_instance_failed` later."""
        ...

    def submit(self, inst: Instance, batch: Batch) -> None:
        """Run one batch (inputs in `batch.outputs` in live mode); report `on_batch_done` later."""
        ...

    def stop(self, inst: Instance) -> None:
        """Stop the instance and free what it holds; no callback for it follows."""
        ...


@runtime_checkable
class LiveBackend(Backend, Protocol):
    """A backend that runs real instances. Who calls the lifecycle: the gateway (and the benchmarks)."""

    def prepare(self, cluster: ClusterSpec) -> None:
        """Blocking set-up before the first deploy (engine, base image, Ray); the gateway runs it in a thread.
        Raises UserError (one line) when what the backend needs is unavailable."""
        ...

    def prepare_function(self, spec: FunctionSpec, bundle_dir: Path) -> None:
        """Blocking per-function set-up at deploy (a container image); the gateway runs it in a thread.
        Raises UserError (one line) to refuse the deploy."""
        ...

    async def aclose(self) -> None:
        """Stop every instance and release what the backend holds; at gateway exit, before the controller's
        shutdown. No callback follows."""
        ...


class _UnboundHost:
    """The host of a backend that no controller has bound yet: every call says so (a wiring mistake)."""

    def _unbound(self, *_args: Any, **_kw: Any) -> Any:
        raise RuntimeError("backend used before bind(): build a Controller with it (the controller binds it)")

    on_instance_ready = on_batch_done = on_instance_failed = fail_invocation = cold_start_ns = _unbound

    @property
    def jobs(self) -> Mapping[int, Job]:
        return self._unbound()

    @property
    def gpus(self) -> Sequence[Gpu]:
        return self._unbound()


# Every backend's host until `bind`: `self.ctl: BackendHost = UNBOUND` keeps the attribute non-optional.
UNBOUND: BackendHost = _UnboundHost()
