"""The HTTP gateway: `create_app(cfg) -> web.Application`, with the platform embedded in it.

The platform (controller + backend + emulated GPUs + SQLite store) starts and stops with the app as a
`cleanup_ctx`; shared state sits behind typed `web.AppKey`s. Nothing here installs uvloop: the entry
points (`gpufaas up`, the demo, the benchmark) do, so tests and the simulator keep their own loops.

Routes (JSON by default, `application/msgpack` for tensor payloads; errors `{"error": {"code", "message"}}`):

    POST/GET        /v1/functions            deploy (with bundle files) / list
    GET/DELETE      /v1/functions/{name}
    POST/GET        /v1/workflows            deploy / list
    GET/DELETE      /v1/workflows/{name}
    POST            /v1/workflows/{name}/invoke[?mode=async]
    GET             /v1/invocations/{id}
    GET             /v1/cluster, /v1/usage, /metrics, /openapi.json, /healthz

Who calls `create_app`: `gpufaas up`, the demo, the gateway benchmark, the tests.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import msgpack
from aiohttp import web

from gpufaas.gateway import api
from gpufaas.gateway.api import JSON, MSGPACK, BadInput
from gpufaas.gateway.config import DEFAULT_CLUSTER, GatewayConfig
from gpufaas.gateway.metrics import Metrics
from gpufaas.gateway.store import Store
from gpufaas.platform.clock import LoopClock, NS_PER_S
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.runtime import FunctionRt, Invocation, InvocationStatus
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec, load_yaml, parse

log = logging.getLogger("gpufaas.gateway")

MAX_BUNDLE_FILES = 64
STATUS_NAMES = {s: s.name.lower() for s in InvocationStatus}

# ---------------------------------------------------------------- JSON on the hot path
# `_fr` is what json writes for a finite float (float.__repr__); the result bodies only hold finite ones.
_fr = float.__repr__
_json_str = json.encoder.encode_basestring_ascii  # the default (ensure_ascii) string encoding of json.dumps


def _json_shape(wf: Any) -> tuple:
    """The constant parts of a workflow's JSON result: (wf, ',"workflow":...,', [(stage index, '{"name":...,"start_ms":')],
    exits), exits being the one exit stage's index, or [(index, encoded stage name)] for several."""
    head = f',"workflow":{_json_str(wf.name)},'
    stages = [(s.index, f'{{"name":{_json_str(s.name)},"function":{_json_str(s.function)},"start_ms":') for s in wf.stages]
    ex = [s for s in wf.stages if not s.succs]
    exits: Any = ex[0].index if len(ex) == 1 else [(s.index, _json_str(s.name)) for s in ex]
    return wf, head, stages, exits


class ApiError(Exception):
    """An HTTP error answer: status, code and a one-line message (rendered by the error middleware)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error body every 4xx/5xx uses."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# ---------------------------------------------------------------- the embedded platform


def resolve_policy_name(name: str | None) -> str:
    """`name`, or the default: 'esg' when the registry has it, else 'batch1-wholegpu'."""
    from gpufaas.platform.policy import names
    from gpufaas.platform.policy.registry import builtin_registry

    if name:
        return name
    return names.ESG if names.ESG in builtin_registry() else names.BATCH1_WHOLEGPU


def make_backend(cfg: GatewayConfig, clock: LoopClock, cluster: ClusterSpec, bundle_dir: Callable[[str], Path]) -> Any:
    """Build the backend named by `cfg.backend` (the one place that knows them). UserError when unavailable.

    Returns a backend that is ready for `Controller(...)`; blocking set-up (docker images, Ray) is done by
    `Platform.start` through `prepare`, in a thread."""
    if cfg.backend == "inproc":
        if cfg.execute != "emulated":
            raise UserError("--execute real needs --backend process (or docker/ray); the inproc backend only emulates")
        from gpufaas.platform.backends.inproc import InprocBackend

        return InprocBackend(clock, cold_start_scale=cfg.cold_start_scale)
    if cfg.backend == "process":
        mod = _optional("gpufaas.platform.backends.process", "--backend process")
        return mod.ProcessBackend(clock, execute=cfg.execute, bundle_dir=bundle_dir, threads_per_worker=cfg.threads_per_worker)
    if cfg.backend == "docker":
        mod = _optional("gpufaas.platform.backends.docker_backend", "--backend docker")
        return mod.DockerBackend(scope=f"gw{cfg.port}", bundle_root=cfg.bundles_dir, emulate_latency=cfg.execute == "emulated")
    if cfg.backend == "ray":
        mod = _optional("gpufaas.platform.backends.ray_backend", "--backend ray")
        return mod.RayBackend(emulate_latency=cfg.execute == "emulated")
    raise UserError(f"--backend: unknown backend {cfg.backend!r}; use process, inproc, docker or ray")


def _optional(modname: str, flag: str) -> Any:
    import importlib

    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name != modname:
            raise UserError(f"{flag}: needs the Python package '{e.name}', which is not installed; install it or use --backend inproc") from None
        raise UserError(f"{flag}: this checkout has no {modname}; use --backend inproc") from None


def _validate_bundle(path: Path, spec: FunctionSpec, execute: str) -> None:
    """The process backend's bundle check, when that module exists (UserError -> 422 at deploy)."""
    try:
        from gpufaas.platform.bundle import validate_bundle
    except ModuleNotFoundError as e:
        if e.name != "gpufaas.platform.bundle":
            raise
        return
    validate_bundle(path, spec, execute)


class Platform:
    """The controller, its backend and the store of one gateway. Built by `create_app` (no side effects);
    `start()` and `close()` run in the app's cleanup context.

    Who calls it: the route handlers below (deploy, invoke, read state). What it changes: the controller's
    deployments and invocations, the store, the bundle folder and the metrics.
    """

    def __init__(self, cfg: GatewayConfig, metrics: Metrics, profiles_dirs: tuple[Path, ...] = ()) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.profiles_dirs = profiles_dirs  # user profile folders, searched before the shipped ones (`gpufaas up --profiles`)
        self.ctl: Any = None
        self.backend: Any = None
        self.store: Store | None = None
        self.clock: LoopClock | None = None
        self.policy_name = ""
        self.boot = secrets.token_hex(4)  # invocation ids are unique across restarts: "<boot>-<n>"
        self._ids = itertools.count(1)
        self.pending_async: dict[str, Invocation] = {}
        self.files: dict[str, list[str]] = {}  # function -> bundle file names
        self._timeout_task: asyncio.Task | None = None
        self.recovered = 0
        self.restore_errors: list[str] = []
        self._shapes: dict[str, tuple] = {}  # workflow name -> (WorkflowRt, the constant parts of its JSON result)
        self.timeout_reason = f"timed out after {cfg.invocation_timeout_s:g} s (gateway invocation_timeout_s)"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store, build the controller and backend, redeploy what the store holds, end stale async ids."""
        from gpufaas.platform.controller import Controller
        from gpufaas.platform.policy.registry import builtin_registry
        from gpufaas.platform.profiles import Profiles, zero_profile

        cfg = self.cfg
        cluster = load_yaml(cfg.cluster_file or DEFAULT_CLUSTER, ClusterSpec)
        profiles = Profiles.with_dirs(self.profiles_dirs)
        if cfg.zero_profile:
            for t in cluster.gpu_types:
                profiles.add(zero_profile("zero", t.name))
        self.policy_name = resolve_policy_name(cfg.policy)
        policy = builtin_registry().make(self.policy_name, **cfg.policy_params)
        loop = asyncio.get_running_loop()
        self.clock = LoopClock(loop)
        cfg.bundles_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.db_path)
        self.recovered = self.store.recover()
        self.backend = make_backend(cfg, self.clock, cluster, self.bundle_dir)
        prepare = getattr(self.backend, "prepare", None)
        if prepare is not None:
            if cfg.backend == "ray":
                await loop.run_in_executor(None, prepare, cluster)
            else:
                await loop.run_in_executor(None, prepare)
        self.ctl = Controller(cluster, profiles, policy, self.backend, self.clock, keep_alive_s=cfg.keep_alive_s, live=True)
        self.ctl.on_instance_event = self.metrics.instance_event
        await self._restore()
        self._timeout_task = loop.create_task(self._timeouts())

    async def _restore(self) -> None:
        """Redeploy the stored functions and workflows (a bundle that no longer deploys is logged and skipped)."""
        assert self.store is not None
        for name, spec_d, files in self.store.functions():
            try:
                spec = parse(FunctionSpec, spec_d, f"stored function {name}")
                self._write_bundle(spec, files)
                await self._prepare_function(spec)
                self.ctl.deploy_function(spec, replace=True)
                self.files[name] = sorted(files)
            except UserError as e:
                self.restore_errors.append(str(e))
                log.warning("not restored: function %s: %s", name, e)
        for name, spec_d in self.store.workflows():
            try:
                self.ctl.deploy_workflow(parse(WorkflowSpec, spec_d, f"stored workflow {name}"), replace=True)
            except UserError as e:
                self.restore_errors.append(str(e))
                log.warning("not restored: workflow %s: %s", name, e)

    async def _timeouts(self) -> None:
        timeout_ns = int(self.cfg.invocation_timeout_s * NS_PER_S)
        period_s = min(1.0, max(0.02, self.cfg.invocation_timeout_s / 10))
        while True:
            await asyncio.sleep(period_s)
            try:
                self.ctl.timeout_pending(self.clock.now_ns() - timeout_ns, self.timeout_reason)
            except Exception:  # noqa: BLE001 (keep the timer alive; the cause is logged)
                log.exception("timeout sweep failed")

    async def close(self) -> None:
        """Stop the timer, every instance and the backend; close the store. Pending async invocations stay
        pending in the store: the next start ends them with RESTART_REASON."""
        if self._timeout_task is not None:
            self._timeout_task.cancel()
            try:
                await self._timeout_task
            except asyncio.CancelledError:
                pass
        # NOTE: the backend closes first and waits for its workers to exit; the controller's shutdown then
        # only settles the accounting (its stop calls find nothing left). The other order would have the
        # backend's stop() merely ask workers to exit, and the gateway could leave before they did.
        b = self.backend
        if b is not None:
            if hasattr(b, "aclose"):
                await b.aclose()
            elif hasattr(b, "close"):
                await asyncio.get_running_loop().run_in_executor(None, b.close)
        if self.ctl is not None:
            self.ctl.shutdown()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ deployments

    def bundle_dir(self, function: str) -> Path:
        """Where the bundle of `function` lives on disk (the backends read it from here)."""
        return self.cfg.bundles_dir / function

    @staticmethod
    def _materialize(d: Path, spec: FunctionSpec, files: dict[str, bytes]) -> None:
        """Write a bundle folder: the uploaded files plus function.yaml from the (authoritative) spec."""
        import yaml

        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for rel, content in files.items():
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)
        (d / "function.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    def _write_bundle(self, spec: FunctionSpec, files: dict[str, bytes]) -> Path:
        final = self.bundle_dir(spec.name)
        staging = self.cfg.bundles_dir / f".staging-{spec.name}"
        self._materialize(staging, spec, files)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return final

    async def _prepare_function(self, spec: FunctionSpec) -> None:
        prep = getattr(self.backend, "prepare_function", None)
        if prep is not None:
            await asyncio.get_running_loop().run_in_executor(None, prep, spec, self.bundle_dir(spec.name))

    async def deploy_function(self, spec: FunctionSpec, files: dict[str, bytes]) -> str:
        """Validate and deploy (or replace) a function with its bundle. Returns 'created', 'updated' or
        'unchanged'. SpecError/UserError (-> 422) when its profile, shares or bundle do not fit."""
        ctl = self.ctl
        old = ctl.functions.get(spec.name)
        if old is not None and old.spec == spec and sorted(files) == self.files.get(spec.name) and \
                self._same_files(spec.name, files):
            return "unchanged"
        FunctionRt(spec, ctl.cluster, ctl.profiles, ctl.keep_alive_s)  # profile and shares fit (SpecError names the field)
        if self.cfg.backend != "inproc":
            # NOTE: the bundle check imports the handler in a fresh interpreter (torch): seconds, so it runs
            # in a thread. The inproc backend never runs a handler, so it deploys specs without a check
            # (the tests and the overhead benchmark deploy bare specs).
            staging = self.cfg.bundles_dir / f".check-{spec.name}"
            try:
                self._materialize(staging, spec, files)
                await asyncio.get_running_loop().run_in_executor(None, _validate_bundle, staging, spec, self.cfg.execute)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self._write_bundle(spec, files)
        await self._prepare_function(spec)
        ctl.deploy_function(spec, replace=True)
        self.files[spec.name] = sorted(files)
        assert self.store is not None
        self.store.put_function(spec.name, spec.model_dump(mode="json"), files)
        return "created" if old is None else "updated"

    def _same_files(self, name: str, files: dict[str, bytes]) -> bool:
        d = self.bundle_dir(name)
        try:
            return all((d / rel).read_bytes() == content for rel, content in files.items())
        except OSError:
            return False

    def deploy_workflow(self, spec: WorkflowSpec) -> str:
        """Deploy (or replace) a workflow. 'created', 'updated' or 'unchanged'."""
        old = self.ctl.workflows.get(spec.name)
        if old is not None and old.spec == spec:
            return "unchanged"
        self.ctl.deploy_workflow(spec, replace=True)
        assert self.store is not None
        self.store.put_workflow(spec.name, spec.model_dump(mode="json"))
        return "created" if old is None else "updated"

    def remove_function(self, name: str) -> None:
        self.ctl.remove_function(name)
        assert self.store is not None
        self.store.delete_function(name)
        self.files.pop(name, None)
        shutil.rmtree(self.bundle_dir(name), ignore_errors=True)

    def remove_workflow(self, name: str) -> None:
        self.ctl.remove_workflow(name)
        assert self.store is not None
        self.store.delete_workflow(name)

    # ------------------------------------------------------------------ invocations

    def next_id(self) -> str:
        return f"{self.boot}-{next(self._ids)}"

    def result_of(self, inv: Invocation, inv_id: str, binary: bool) -> dict:
        """The response body of an ended (or still pending) invocation."""
        wf = inv.workflow
        arr = inv.arrival_ns
        stages = []
        if inv.stage_ns is not None:
            for s in wf.stages:
                st, en = inv.stage_ns[s.index]
                if en >= 0:
                    stages.append({"name": s.name, "function": s.function, "start_ms": (st - arr) / 1e6, "end_ms": (en - arr) / 1e6})
        status = STATUS_NAMES[inv.status]
        output = None
        if inv.status == InvocationStatus.COMPLETED and inv.outputs is not None:
            exits = [s for s in wf.stages if not s.succs]
            if len(exits) == 1:
                output = api.encode_output(inv.outputs[exits[0].index], binary)
            else:
                output = {s.name: api.encode_output(inv.outputs[s.index], binary) for s in exits}
        end = inv.finish_ns if inv.finish_ns >= 0 else self.clock.now_ns()
        return {"id": inv_id, "workflow": wf.name, "status": status, "slo_met": inv.slo_met,
                "slo_ms": (inv.deadline_ns - arr) / 1e6, "latency_ms": (end - arr) / 1e6, "stages": stages,
                "output": output, "reason": inv.reason}

    def result_json(self, inv: Invocation, inv_id: str) -> bytes:
        """`result_of(inv, inv_id, False)` encoded as compact JSON, without building the dict first (the sync
        invoke's answer; tests/test_gateway_api.py checks that both give the same document).

        The constant parts of each workflow's body (names, stage headers) are encoded once per deployment;
        numbers are written with `float.__repr__`, which is what `json` writes for finite floats."""
        wf = inv.workflow
        shape = self._shapes.get(wf.name)
        if shape is None or shape[0] is not wf:
            shape = self._shapes[wf.name] = _json_shape(wf)
        _, head, stage_heads, exits = shape
        arr = inv.arrival_ns
        end = inv.finish_ns if inv.finish_ns >= 0 else self.clock.now_ns()
        status = inv.status
        parts = [f'{{"id":{_json_str(inv_id)}{head}"status":"{STATUS_NAMES[status]}","slo_met":{"true" if inv.slo_met else "false"},'
                 f'"slo_ms":{_fr((inv.deadline_ns - arr) / 1e6)},"latency_ms":{_fr((end - arr) / 1e6)},"stages":[']
        stage_ns = inv.stage_ns
        if stage_ns is not None:
            sep = ""
            for idx, sh in stage_heads:
                st, en = stage_ns[idx]
                if en >= 0:
                    parts.append(f'{sep}{sh}{_fr((st - arr) / 1e6)},"end_ms":{_fr((en - arr) / 1e6)}}}')
                    sep = ","
        outputs = inv.outputs
        if status == InvocationStatus.COMPLETED and outputs is not None:
            if type(exits) is int:
                parts.append(f'],"output":{api.encode_output_json(outputs[exits])},"reason":')
            else:
                parts.append('],"output":{' + ",".join(f"{k}:{api.encode_output_json(outputs[i])}" for i, k in exits)
                             + '},"reason":')
        else:
            parts.append('],"output":null,"reason":')
        parts.append(_json_str(inv.reason) + "}")
        return "".join(parts).encode()

    def record(self, inv: Invocation) -> None:
        """Metrics for one ended invocation."""
        self.metrics.invocation_done(inv.workflow.name, STATUS_NAMES[inv.status], (inv.finish_ns - inv.arrival_ns) / NS_PER_S, inv.slo_met)

    async def invoke(self, workflow: str, payload: Any, slo_ms: float | None) -> tuple[str, Invocation]:
        """Submit and wait for the end (the per-invocation timeout guarantees one)."""
        fut = asyncio.get_running_loop().create_future()
        inv = self.ctl.submit(workflow, payload, slo_ms=slo_ms, on_done=functools.partial(self._sync_done, fut))
        await fut
        return self.next_id(), inv

    def _sync_done(self, fut: asyncio.Future, inv: Invocation) -> None:
        """on_done of a sync invocation: metrics, then wake the waiting handler (a bound method and a partial
        instead of a closure per request)."""
        self.record(inv)
        if not fut.done():
            fut.set_result(None)

    def invoke_async(self, workflow: str, payload: Any, slo_ms: float | None) -> str:
        """Record in the store, then submit; the result is stored when it ends. Returns the id."""
        inv_id = self.next_id()
        store = self.store
        assert store is not None
        store.add_invocation(inv_id, workflow)

        def done(inv: Invocation) -> None:
            self.record(inv)
            self.pending_async.pop(inv_id, None)
            try:
                store.finish_invocation(inv_id, STATUS_NAMES[inv.status], self.result_of(inv, inv_id, False), inv.reason)
            except Exception:  # noqa: BLE001 (the store was closed at shutdown: the next start marks it failed)
                log.exception("could not store the result of %s", inv_id)

        try:
            inv = self.ctl.submit(workflow, payload, slo_ms=slo_ms, on_done=done)
        except Exception as e:
            store.finish_invocation(inv_id, "failed", {}, f"not accepted: {e}")
            raise
        self.pending_async[inv_id] = inv
        return inv_id

    # ------------------------------------------------------------------ reports

    def cluster_doc(self) -> dict:
        ctl = self.ctl
        gpus = [{"id": g.id, "node": g.node, "type": g.type_name, "share_units": g.share_units, "free_units": g.free_units,
                 "share_in_use": round((g.share_units - g.free_units) / g.share_units, 4), "memory_mb": g.memory_mb,
                 "free_mb": g.free_mb, "instances": sorted(g.instance_ids)} for g in ctl.gpus]
        insts = [{"id": i.id, "function": i.function.name, "gpu": i.gpu.id, "share": i.share, "max_batch": i.max_batch,
                  "state": i.state.name.lower(), "stopping": i.stopping, "batches_run": i.batches_run,
                  "backlog": len(i.backlog), "cold_start_ms": round(i.cold_start_ns / 1e6, 3)} for i in ctl.instances.values()]
        queues = [{"workflow": wf.name, "stage": s.name, "function": s.function, "length": len(s.queue.jobs),
                   "rate_per_s": round(s.queue.rate_per_s, 3)} for wf in ctl.workflows.values() for s in wf.stages]
        return {"policy": self.policy_name, "backend": self.cfg.backend, "execute": self.cfg.execute, "gpus": gpus,
                "instances": insts, "queues": queues, "inflight": len(ctl.inflight)}

    def usage_doc(self) -> dict:
        """acct.report() plus the allocated cost of the instances still alive (billed up to now)."""
        ctl = self.ctl
        rep = ctl.acct.report()
        now = self.clock.now_ns()
        live_usd = 0.0
        live_unit_ns = 0.0
        for i in ctl.instances.values():
            life = now - i.start_ns
            live_usd += life * i.share_units * i.gpu.usd_per_unit_ns
            live_unit_ns += life * i.share_units / i.gpu.share_units
        cost = rep["cost"]
        cost["allocated_usd"] = round(ctl.acct.allocated_usd + live_usd, 6)
        cost["gpu_seconds_allocated"] = round((ctl.acct.allocated_unit_ns + live_unit_ns) / NS_PER_S, 3)
        rep["live_instances"] = len(ctl.instances)
        rep["inflight"] = len(ctl.inflight)
        rep["async_pending"] = len(self.pending_async)
        rep["policy"] = self.policy_name
        rep["backend"] = self.cfg.backend
        return rep


# ---------------------------------------------------------------- app keys and middleware

CFG = web.AppKey("cfg", GatewayConfig)
PLATFORM = web.AppKey("platform", Platform)
METRICS = web.AppKey("metrics", Metrics)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "body_too_large",
               415: "unsupported_media_type", 422: "invalid", 500: "internal"}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes `{"error": {"code", "message"}}`; no traceback ever reaches the client."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message)
    except BadInput as e:
        return error_response(422, e.code, str(e))
    except SpecError as e:
        return error_response(422, "invalid_manifest", str(e))
    except UserError as e:
        return error_response(422, "invalid", str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        msg = e.text or e.reason
        if e.status == 413:
            msg = f"request body is larger than the gateway's limit of {request.app[CFG].max_body_mb:g} MB; send less or raise --max-body-mb"
        elif e.status == 404:
            msg = f"no route {request.method} {request.path}; see /openapi.json"
        elif e.status == 405:
            msg = f"method {request.method} is not allowed on {request.path}; see /openapi.json"
        return error_response(e.status, _HTTP_CODES.get(e.status, "http_error"), msg.splitlines()[0] if msg else e.reason)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; the gateway log has the details")


# ---------------------------------------------------------------- body helpers


async def read_body(request: web.Request) -> bytes:
    """The request body. HTTPRequestEntityTooLarge (413) above the app's client_max_size, as `request.read()`.

    A body that has arrived whole (the usual small JSON request) is taken from the stream at once, without
    the awaits of `request.read()`."""
    content = request.content
    if content.is_eof():
        body = content.read_nowait()
        limit = request.app[CFG].client_max_size
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return body
    return await request.read()


async def read_doc(request: web.Request, *, allow_msgpack: bool = True, allow_yaml: bool = False) -> tuple[Any, bool]:
    """Read and decode the body: (document, is_msgpack). Empty body -> ({}, False). 400/413/415 on bad input."""
    body = await read_body(request)
    if not body:
        return {}, False
    if body == b"{}" and request.headers.get("Content-Type") == JSON:
        return {}, False  # the common invoke body, without json.loads
    ctype = request.content_type
    if ctype == JSON or ctype.endswith("+json"):
        try:
            return json.loads(body), False
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "bad_json", f"request body is not valid JSON: {e}") from None
    if ctype == MSGPACK and allow_msgpack:
        try:
            return msgpack.unpackb(body, raw=False), True
        except Exception as e:  # noqa: BLE001 (msgpack raises several unrelated types)
            raise ApiError(400, "bad_msgpack", f"request body is not valid msgpack: {e}") from None
    if allow_yaml and ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
        import yaml

        try:
            return yaml.safe_load(body), False
        except yaml.YAMLError as e:
            raise ApiError(400, "bad_yaml", f"request body is not valid YAML: {str(e).splitlines()[0]}") from None
    accepted = [JSON] + ([MSGPACK] if allow_msgpack else []) + (["application/yaml"] if allow_yaml else [])
    raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype!r} is not accepted here; send one of {', '.join(accepted)}")


def reply(doc: Any, binary: bool, status: int = 200) -> web.Response:
    if binary:
        return web.Response(body=msgpack.packb(doc, use_bin_type=True), status=status, content_type=MSGPACK)
    return web.Response(body=api.json_compact(doc).encode(), status=status, content_type=JSON)


def _not_found(kind: str, name: str, known: Any) -> ApiError:
    names = sorted(known)
    hint = f"deployed: {', '.join(names[:20])}" if names else f"no {kind}s are deployed; run gpufaas deploy"
    return ApiError(404, "not_found", f"unknown {kind} '{name}'; {hint}")


# ---------------------------------------------------------------- routes: deployments


def _bundle_files(raw: dict[str, str]) -> dict[str, bytes]:
    if len(raw) > MAX_BUNDLE_FILES:
        raise ApiError(422, "invalid_manifest", f"files: {len(raw)} files; a bundle holds at most {MAX_BUNDLE_FILES}")
    out = {}
    for rel, text in raw.items():
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts or str(p) == "function.yaml":
            raise ApiError(422, "invalid_manifest", f"files.{rel}: a bundle path must be relative, stay inside the bundle "
                                                    f"and not be function.yaml (send its fields as spec)")
        out[str(p)] = text.encode() if isinstance(text, str) else bytes(text)
    return out


async def post_function(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    doc, _ = await read_doc(request, allow_yaml=True)
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_manifest", "request body: expected a mapping (a function spec, or {spec, files})")
    if "spec" in doc:
        bundle = parse(api.FunctionBundle, doc, "request body")
        spec, files = bundle.spec, _bundle_files(bundle.files)
    else:
        spec, files = parse(FunctionSpec, doc, "request body"), {}
    result = await plat.deploy_function(spec, files)
    body = {"name": spec.name, "kind": "function", "result": result}
    return web.json_response(body, status=201 if result == "created" else 200)


async def list_functions(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    out = []
    for name, fn in plat.ctl.functions.items():
        insts = plat.ctl.instances_by_fn.get(name, [])
        out.append({"name": name, "model": fn.spec.model, "description": fn.spec.description, "instances": len(insts),
                    "files": plat.files.get(name, [])})
    return web.json_response({"functions": out})


async def get_function(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    name = request.match_info["name"]
    fn = plat.ctl.functions.get(name)
    if fn is None:
        raise _not_found("function", name, plat.ctl.functions)
    insts = [{"id": i.id, "gpu": i.gpu.id, "share": i.share, "state": i.state.name.lower(), "max_batch": i.max_batch}
             for i in plat.ctl.instances_by_fn.get(name, [])]
    used_by = sorted(w.name for w in plat.ctl.workflows.values() if any(s.function == name for s in w.stages))
    return web.json_response({"name": name, "kind": "function", "spec": fn.spec.model_dump(mode="json"),
                              "files": plat.files.get(name, []), "instances": insts, "used_by": used_by})


def _remove(request: web.Request, kind: str, deployed: Any, remove: Any) -> web.Response:
    """DELETE of a function or workflow: 404 if `deployed` lacks it, 409 if `remove` refuses (in use)."""
    name = request.match_info["name"]
    if name not in deployed:
        raise _not_found(kind, name, deployed)
    try:
        remove(name)
    except UserError as e:
        raise ApiError(409, "conflict", str(e)) from None
    return web.json_response({"name": name, "kind": kind, "result": "removed"})


async def delete_function(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    return _remove(request, "function", plat.ctl.functions, plat.remove_function)


async def post_workflow(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    doc, _ = await read_doc(request, allow_yaml=True)
    spec = parse(WorkflowSpec, doc, "request body")
    try:
        result = plat.deploy_workflow(spec)
    except SpecError:
        raise
    except UserError as e:
        raise ApiError(409, "conflict", str(e)) from None
    return web.json_response({"name": spec.name, "kind": "workflow", "result": result}, status=201 if result == "created" else 200)


async def list_workflows(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    out = [{"name": n, "slo_ms": wf.spec.slo_ms, "stages": [s.name for s in wf.stages], "functions": sorted({s.function for s in wf.stages}),
            "tenant": wf.tenant, "priority": wf.priority} for n, wf in plat.ctl.workflows.items()]
    return web.json_response({"workflows": out})


async def get_workflow(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    name = request.match_info["name"]
    wf = plat.ctl.workflows.get(name)
    if wf is None:
        raise _not_found("workflow", name, plat.ctl.workflows)
    queues = [{"stage": s.name, "length": len(s.queue.jobs)} for s in wf.stages]
    return web.json_response({"name": name, "kind": "workflow", "spec": wf.spec.model_dump(mode="json"), "queues": queues})


async def delete_workflow(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    return _remove(request, "workflow", plat.ctl.workflows, plat.remove_workflow)


# ---------------------------------------------------------------- routes: invocations


def _payload(plat: Platform, wf: Any, data: Any) -> Any:
    """Input tensors as numpy arrays (dtype from the entry functions' input specs), or None."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BadInput("invalid_payload", "data: expected a mapping of input name -> tensor")
    specs: dict[str, Any] = {}
    for e in wf.entries:
        fn = plat.ctl.functions.get(wf.stages[e].function)
        if fn is not None:
            for k, t in fn.spec.inputs.items():
                specs.setdefault(k, t)
    out = {}
    for k, v in data.items():
        t = specs.get(k)
        arr = api.decode_tensor(k, v, t.dtype if t is not None else None)
        # NOTE: one invocation is one item: a declared input must have the item shape (no batch dimension);
        # the backend stacks items into batches. Undeclared names pass through (a handler may accept them).
        if t is not None and list(arr.shape) != t.shape:
            raise BadInput("invalid_payload", f"data.{k}: shape {list(arr.shape)} does not match the input's item shape {t.shape} "
                                              f"(function.yaml inputs.{k}; one invocation is one item, no batch dimension)")
        out[k] = arr
    return out


_INVOKE_KEYS = frozenset(("data", "slo_ms"))


async def invoke(request: web.Request) -> web.Response:
    """POST /v1/workflows/{name}/invoke: the hot path (no pydantic here; api.InvokeRequest documents it)."""
    plat = request.app[PLATFORM]
    ctl = plat.ctl
    name = request.match_info["name"]
    wf = ctl.workflows.get(name)
    if wf is None:
        raise _not_found("workflow", name, ctl.workflows)
    doc, binary = await read_doc(request)
    if type(doc) is not dict:
        raise ApiError(400, "bad_request", "request body: expected an object {\"data\": ..., \"slo_ms\": ...}")
    slo_ms = payload = None
    if doc:
        if not _INVOKE_KEYS.issuperset(doc):
            extra = sorted(set(doc) - _INVOKE_KEYS)
            raise BadInput("invalid_request", f"request body: unknown field(s) {extra}; send only data and slo_ms")
        slo_ms = api.parse_slo_ms(doc.get("slo_ms"))
    mode = "sync"
    if request.query_string:
        query = request.query
        if "slo_ms" in query:
            slo_ms = api.parse_slo_ms(query["slo_ms"], "query slo_ms")
        mode = query.get("mode", "sync")
    if doc:
        payload = _payload(plat, wf, doc.get("data"))
    if not binary:
        accept = request.headers.get("Accept")
        if accept is not None and MSGPACK in accept:
            binary = True
    if mode == "async":
        inv_id = plat.invoke_async(name, payload, slo_ms)
        loc = f"/v1/invocations/{inv_id}"
        return reply({"id": inv_id, "status": "pending", "location": loc}, binary, status=202)
    if mode != "sync":
        raise BadInput("invalid_request", f"query mode: {mode!r} is not a mode; use sync (default) or async")
    inv_id, inv = await plat.invoke(name, payload, slo_ms)
    if binary:
        return reply(plat.result_of(inv, inv_id, True), True)
    return web.Response(body=plat.result_json(inv, inv_id), content_type=JSON)


async def get_invocation(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    inv_id = request.match_info["id"]
    binary = MSGPACK in request.headers.get("Accept", "")
    inv = plat.pending_async.get(inv_id)
    if inv is not None:
        return reply(plat.result_of(inv, inv_id, binary), binary)
    assert plat.store is not None
    row = plat.store.get_invocation(inv_id)
    if row is None:
        raise ApiError(404, "not_found", f"unknown invocation '{inv_id}'; ids come from POST /v1/workflows/NAME/invoke?mode=async")
    result = row["result"] or {}
    if not result:
        result = {"id": inv_id, "workflow": row["workflow"], "status": row["status"], "slo_met": False, "slo_ms": 0.0,
                  "latency_ms": 0.0, "stages": [], "output": None, "reason": row["reason"]}
    else:
        result["reason"] = row["reason"] or result.get("reason", "")
        result["status"] = row["status"]
    return reply(result, binary)


# ---------------------------------------------------------------- routes: state


async def get_cluster(request: web.Request) -> web.Response:
    return web.json_response(request.app[PLATFORM].cluster_doc())


async def get_usage(request: web.Request) -> web.Response:
    return web.json_response(request.app[PLATFORM].usage_doc())


async def get_metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    body = m.render(request.app[PLATFORM].ctl)
    return web.Response(body=body, headers={"Content-Type": m.content_type})


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(api.openapi_document())


async def healthz(request: web.Request) -> web.Response:
    plat = request.app[PLATFORM]
    return web.json_response({"status": "ok", "policy": plat.policy_name, "backend": plat.cfg.backend,
                              "functions": len(plat.ctl.functions), "workflows": len(plat.ctl.workflows)})


# ---------------------------------------------------------------- the factory


async def _platform_ctx(app: web.Application):
    plat = app[PLATFORM]
    await plat.start()
    yield
    await plat.close()


def create_app(cfg: GatewayConfig, *, profiles_dirs: tuple[Path, ...] = ()) -> web.Application:
    """The gateway application for `cfg`. No side effects until it starts (the platform starts in its
    cleanup context: store opened, backend prepared, stored deployments restored). `profiles_dirs`:
    profile folders searched before the shipped profiles."""
    app = web.Application(client_max_size=cfg.client_max_size, middlewares=[error_middleware])
    metrics = Metrics()
    app[CFG] = cfg
    app[METRICS] = metrics
    app[PLATFORM] = Platform(cfg, metrics, profiles_dirs)
    app.cleanup_ctx.append(_platform_ctx)
    r = app.router
    r.add_post("/v1/functions", post_function)
    r.add_get("/v1/functions", list_functions)
    r.add_get("/v1/functions/{name}", get_function)
    r.add_delete("/v1/functions/{name}", delete_function)
    r.add_post("/v1/workflows", post_workflow)
    r.add_get("/v1/workflows", list_workflows)
    r.add_get("/v1/workflows/{name}", get_workflow)
    r.add_delete("/v1/workflows/{name}", delete_workflow)
    r.add_post("/v1/workflows/{name}/invoke", invoke)
    r.add_get("/v1/invocations/{id}", get_invocation)
    r.add_get("/v1/cluster", get_cluster)
    r.add_get("/v1/usage", get_usage)
    r.add_get("/metrics", get_metrics)
    r.add_get("/openapi.json", get_openapi)
    r.add_get("/healthz", healthz)
    return app


def run(cfg: GatewayConfig, *, print_fn: Callable[[str], None] = print, profiles_dirs: tuple[Path, ...] = ()) -> None:
    """Serve `cfg` until SIGINT/SIGTERM with uvloop (the entry point of `gpufaas up` and the demo's gateway)."""
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg, profiles_dirs=profiles_dirs)

    async def banner(app: web.Application) -> None:
        plat = app[PLATFORM]
        print_fn(f"gpufaas gateway on http://{cfg.host}:{cfg.port} (policy {plat.policy_name}, backend {cfg.backend}, "
                 f"execute {cfg.execute}, data {cfg.data_dir}; {len(plat.ctl.functions)} functions and "
                 f"{len(plat.ctl.workflows)} workflows restored, {plat.recovered} unfinished async invocations marked failed)")

    app.on_startup.append(banner)
    web.run_app(app, host=cfg.host, port=cfg.port, print=None, access_log=log if cfg.access_log else None,
                loop=uvloop.new_event_loop(), handle_signals=True, shutdown_timeout=5.0)
