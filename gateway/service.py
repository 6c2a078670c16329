"""What the gateway's handlers call: the embedded platform (controller, backend, store) behind one narrow facade.

`Platform` owns the controller, its backend and the SQLite store of one gateway; the route modules in
`gateway/routes/` call only its public methods and never reach into the controller. Built by
`gateway.app.create_app` (no side effects); `start()` and `close()` run in the app's cleanup context.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from gpufaas.gateway import api
from gpufaas.gateway.api import BadInput
from gpufaas.gateway.config import DEFAULT_CLUSTER, GatewayConfig
from gpufaas.gateway.invocation_body import STATUS_NAMES, json_shape, result_doc, result_json
from gpufaas.gateway.metrics import Metrics
from gpufaas.gateway.store import Store, StoreUnavailable
from gpufaas.gateway.tenants import (DEFAULT_TENANT, Admission, Limits, QuotaExceeded, Tenant, TenantExists, check_tenant_name, key_hash,
                                     new_key, qualify, short, tenant_of)
from gpufaas.platform.admission import QueueBounds, cluster_units, queue_floor
from gpufaas.platform.residency.registry import make_residency
from gpufaas.platform.bundle import BundleChecker
from gpufaas.platform.backends.interface import LiveBackend
from gpufaas.platform.backends.registry import build_backend
from gpufaas.platform.clock import NS_PER_S, LoopClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.runtime import FunctionRt, Invocation, WorkflowRt
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, TensorSpec, WorkflowSpec, load_yaml, parse

log = logging.getLogger("gpufaas.gateway")


def resolve_policy_name(name: str | None) -> str:
    """`name`, or the default: 'esg' when the registry has it, else 'batch1-wholegpu'."""
    from gpufaas.platform.policy import names
    from gpufaas.platform.policy.registry import builtin_registry

    if name:
        return name
    return names.ESG if names.ESG in builtin_registry() else names.BATCH1_WHOLEGPU


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
        # NOTE: declared, not assigned: `start()` builds the controller before the app serves any request.
        self.ctl: Controller
        self.backend: LiveBackend | None = None
        self._started = False  # the controller exists
        self._units_total = 0  # share units of the whole cluster (set with the controller)
        self.store: Store | None = None
        self.clock: LoopClock  # built by start(), with the controller
        self.policy_name = ""
        self.tenants: dict[str, Tenant] = {}  # name -> tenant
        self._by_key: dict[str, Tenant] = {}  # key hash -> tenant
        self.admission = Admission()
        self.queues = QueueBounds()
        self.checker = BundleChecker()  # deploy-time bundle checks: a bounded pool of sandboxed processes
        self._unstored: dict[str, tuple[str, str, dict, str]] = {}  # id -> (tenant, status, result, reason) the store could not take yet
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
        self.store = Store(cfg.db_path, result_retention_s=cfg.result_retention_s)
        self.recovered = self.store.recover()
        self._bootstrap_admin()
        self._load_tenants()
        self.backend = build_backend(cfg.backend, self.clock, cfg.backend_options(), self.bundle_dir)
        await loop.run_in_executor(None, self.backend.prepare, cluster)
        self.ctl = Controller(cluster, profiles, policy, self.backend, self.clock, keep_alive_s=cfg.keep_alive_s, live=True,
                              residency=make_residency(cfg.residency))
        self._started = True
        self._units_total = cluster_units(self.ctl.gpus)  # the cluster is fixed for the gateway's life
        self._push_shares()
        self.ctl.on_instance_event = self.metrics.instance_event
        self.metrics.watch(self.ctl)
        await self._restore()
        self._timeout_task = loop.create_task(self._timeouts())

    async def _restore(self) -> None:
        """Redeploy the stored functions and workflows (a bundle that no longer deploys is logged and skipped)."""
        assert self.store is not None
        for name, spec_d, files in self.store.functions():
            try:
                spec = parse(FunctionSpec, spec_d, f"stored function {name}")
                qspec = self._qualified_function(spec)
                self._write_bundle(qspec.name, spec, files)
                await self._prepare_function(qspec)
                self.ctl.deploy_function(qspec, replace=True)
                self.files[qspec.name] = sorted(files)
            except UserError as e:
                self.restore_errors.append(str(e))
                log.warning("not restored: function %s: %s", name, e)
        for name, spec_d in self.store.workflows():
            try:
                self.ctl.deploy_workflow(self._qualified_workflow(parse(WorkflowSpec, spec_d, f"stored workflow {name}")), replace=True)
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
        pending in the store: the next start ends them with RESTART_REASON. Bundle checks in flight are killed."""
        await self.checker.aclose()
        if self._timeout_task is not None:
            self._timeout_task.cancel()
            try:
                await self._timeout_task
            except asyncio.CancelledError:
                pass
        # NOTE: the backend closes first and waits for its workers to exit; the controller's shutdown then
        # only settles the accounting (its stop calls find nothing left). The other order would have the
        # backend's stop() merely ask workers to exit, and the gateway could leave before they did.
        if self.backend is not None:
            await self.backend.aclose()
        if self._started:
            self.ctl.shutdown()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ tenants

    def _bootstrap_admin(self) -> None:
        """At start: on the first start (no default tenant, or no key file), create the default tenant with the
        admin key and write that key to `<data-dir>/admin.key` (mode 0600), the one place it is ever written."""
        assert self.store is not None
        key_file = self.cfg.admin_key_file
        if any(name == DEFAULT_TENANT for name, *_ in self.store.tenants()) and key_file.exists():
            return
        key = self.cfg.admin_key or new_key()
        self.store.put_tenant(DEFAULT_TENANT, key_hash(key), True, {})
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")

    def _load_tenants(self) -> None:
        """Read the tenants from the store (at start and after every change to them); push their shares to the
        controller once it exists."""
        assert self.store is not None
        self.tenants.clear()
        self._by_key.clear()
        for name, khash, admin, limits in self.store.tenants():
            t = Tenant(name, admin, Limits.model_validate(limits))
            self.tenants[name] = t
            self._by_key[khash] = t
        if self._started:
            self._push_shares()

    def _push_shares(self) -> None:
        """The tenants' weights and share-unit caps to the controller, which enforces them for every policy."""
        self.ctl.set_tenants({t.name: t.limits.share() for t in self.tenants.values()})

    def tenant_for_key(self, key: str) -> Tenant | None:
        """The tenant whose API key is `key`, or None (the auth middleware answers 401)."""
        return self._by_key.get(key_hash(key))

    def create_tenant(self, name: str, limits: Limits) -> str:
        """A new tenant; returns its API key (shown once, stored only as a hash). UserError if it exists."""
        check_tenant_name(name)
        if name in self.tenants:
            raise TenantExists(f"tenant {name!r} exists; change it with gpufaas tenant set, or remove it first")
        key = new_key()
        assert self.store is not None
        self.store.put_tenant(name, key_hash(key), False, limits.model_dump())
        self._load_tenants()
        return key

    def set_tenant(self, name: str, limits: Limits) -> Tenant:
        """Replace `name`'s weight and quotas."""
        t = self.tenants[name]
        assert self.store is not None
        self.store.put_tenant(name, None, t.admin, limits.model_dump())
        self._load_tenants()
        return self.tenants[name]

    def remove_tenant(self, name: str) -> None:
        """Remove a tenant that owns nothing (UserError naming what it still owns), never the default one."""
        if name == DEFAULT_TENANT:
            raise UserError("the default tenant holds the admin key and cannot be removed")
        owned = [f"function {n}" for n in self.function_names(name)] + [f"workflow {n}" for n in self.workflow_names(name)]
        if owned:
            raise UserError(f"tenant {name!r} still owns {', '.join(owned[:10])}; remove them first")
        assert self.store is not None
        self.store.delete_tenant(name)
        self._load_tenants()

    # ------------------------------------------------------------------ deployments

    @staticmethod
    def _qualified_function(spec: FunctionSpec) -> FunctionSpec:
        """The spec as the shared controller holds it: named `tenant/name` (tenants.qualify)."""
        return spec.model_copy(update={"name": qualify(spec.tenant, spec.name)})

    @staticmethod
    def _qualified_workflow(spec: WorkflowSpec) -> WorkflowSpec:
        """The workflow as the controller holds it: its name and its stages' functions qualified by its tenant."""
        stages = [st.model_copy(update={"function": qualify(spec.tenant, st.function)}) for st in spec.stages]
        return spec.model_copy(update={"name": qualify(spec.tenant, spec.name), "stages": stages})

    def bundle_dir(self, function: str) -> Path:
        """Where the bundle of controller function `function` lives on disk (the backends read it from here)."""
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

    def _scratch(self, kind: str, qname: str) -> Path:
        """A private folder beside the bundles for `qname` (staging or checking), flat even for tenant names."""
        return self.cfg.bundles_dir / f".{kind}-{qname.replace('/', '~')}"

    def _write_bundle(self, qname: str, spec: FunctionSpec, files: dict[str, bytes]) -> Path:
        final = self.bundle_dir(qname)
        staging = self._scratch("staging", qname)
        self._materialize(staging, spec, files)
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)
        return final

    async def _prepare_function(self, qspec: FunctionSpec) -> None:
        assert self.backend is not None
        await asyncio.get_running_loop().run_in_executor(None, self.backend.prepare_function, qspec, self.bundle_dir(qspec.name))

    async def deploy_function(self, tenant: str, spec: FunctionSpec, files: dict[str, bytes]) -> str:
        """Validate and deploy (or replace) `tenant`'s function with its bundle. Returns 'created', 'updated' or
        'unchanged'. SpecError/UserError (-> 422) when its profile, shares or bundle do not fit."""
        ctl = self.ctl
        spec = spec.model_copy(update={"tenant": tenant})
        qspec = self._qualified_function(spec)
        q = qspec.name
        old = ctl.functions.get(q)
        if old is not None and old.spec == qspec and sorted(files) == self.files.get(q) and self._same_files(q, files):
            return "unchanged"
        FunctionRt(qspec, ctl.cluster, ctl.profiles, ctl.keep_alive_s)  # profile and shares fit (SpecError names the field)
        if self.cfg.backend != "inproc":
            # NOTE: the bundle check imports the handler in a fresh, sandboxed interpreter (torch): seconds,
            # in the checker's own bounded pool. The inproc backend never runs a handler, so it deploys specs without a check
            # (the tests and the overhead benchmark deploy bare specs).
            staging = self._scratch("check", q)
            try:
                self._materialize(staging, spec, files)
                await self.checker.check(staging, spec, self.cfg.execute)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self._write_bundle(q, spec, files)
        await self._prepare_function(qspec)
        ctl.deploy_function(qspec, replace=True)
        self.files[q] = sorted(files)
        assert self.store is not None
        self.store.put_function(q, spec.model_dump(mode="json"), files)
        return "created" if old is None else "updated"

    def _same_files(self, qname: str, files: dict[str, bytes]) -> bool:
        d = self.bundle_dir(qname)
        try:
            return all((d / rel).read_bytes() == content for rel, content in files.items())
        except OSError:
            return False

    def deploy_workflow(self, tenant: str, spec: WorkflowSpec) -> str:
        """Deploy (or replace) `tenant`'s workflow. 'created', 'updated' or 'unchanged'. SpecError (422) naming
        a stage whose function the tenant has not deployed (only the tenant's own names are listed)."""
        spec = spec.model_copy(update={"tenant": tenant})
        for i, st in enumerate(spec.stages):
            if qualify(tenant, st.function) not in self.ctl.functions:
                mine = self.function_names(tenant)
                raise SpecError(f"workflow {spec.name}: stages[{i}].function: unknown function '{st.function}'; deploy it first "
                                f"(yours: {', '.join(sorted(mine)[:20]) or 'none'})")
        qspec = self._qualified_workflow(spec)
        old = self.ctl.workflows.get(qspec.name)
        if old is not None and old.spec == qspec:
            return "unchanged"
        self.ctl.deploy_workflow(qspec, replace=True)
        assert self.store is not None
        self.store.put_workflow(qspec.name, spec.model_dump(mode="json"))
        return "created" if old is None else "updated"

    def _workflows_using(self, q: str) -> list[str]:
        """The (tenant-side) names of the workflows with a stage running controller function `q`, sorted."""
        return sorted(short(w.name) for w in self.ctl.workflows.values() if any(s.function == q for s in w.stages))

    def remove_function(self, tenant: str, name: str) -> None:
        """Remove `tenant`'s function `name` (UserError -> 409 while one of its workflows uses it)."""
        q = qualify(tenant, name)
        users = self._workflows_using(q)
        if users:
            raise UserError(f"function '{name}' is used by workflow(s) {', '.join(repr(u) for u in users)}; remove those first")
        self.ctl.remove_function(q)
        assert self.store is not None
        self.store.delete_function(q)
        self.files.pop(q, None)
        shutil.rmtree(self.bundle_dir(q), ignore_errors=True)

    def remove_workflow(self, tenant: str, name: str) -> None:
        """Remove `tenant`'s workflow `name`."""
        q = qualify(tenant, name)
        self.ctl.remove_workflow(q)
        assert self.store is not None
        self.store.delete_workflow(q)

    # ------------------------------------------------------------------ invocations

    @staticmethod
    def next_id() -> str:
        """A new invocation id: 128 random bits, so ids cannot be guessed from one another."""
        return secrets.token_urlsafe(16)

    def result_of(self, inv: Invocation, inv_id: str, binary: bool) -> dict:
        """The response body of an ended (or still pending) invocation, as a document."""
        return result_doc(inv, inv_id, binary, self.clock.now_ns())

    def result_json(self, inv: Invocation, inv_id: str) -> bytes:
        """`result_of(inv, inv_id, False)` as compact JSON bytes (the sync invoke's answer)."""
        wf = inv.workflow
        shape = self._shapes.get(wf.name)
        if shape is None or shape[0] is not wf:
            shape = self._shapes[wf.name] = json_shape(wf)
        return result_json(inv, inv_id, shape, self.clock.now_ns())

    def record(self, inv: Invocation) -> None:
        """Metrics and admission bookkeeping for one ended invocation."""
        self.admission.release(inv.tenant)
        self.queues.ended(inv, self.clock.now_ns())
        self.metrics.invocation_done(inv.workflow.name, STATUS_NAMES[inv.status], (inv.finish_ns - inv.arrival_ns) / NS_PER_S, inv.slo_met)

    def _admit(self, wf: WorkflowRt, slo_ms: float | None) -> None:
        """Admission control for one invocation of `wf`, before any work is done: the workflow's queue bound
        (QueueBounds), then its tenant's quotas (QuotaExceeded -> 429 with Retry-After). `_unadmit` undoes it."""
        t = self.tenants.get(wf.tenant)
        if t is None:  # removed while the request was in flight
            raise UserError(f"tenant {wf.tenant!r} no longer exists")
        now = self.check_queue(wf, slo_ms)
        self.admission.admit(t, now, self.ctl.acct.latency_ms.mean / 1e3)
        self.queues.add(wf.name, now)

    def check_queue(self, wf: WorkflowRt, slo_ms: float | None) -> int:
        """The workflow's queue bound for one more invocation (`QueueBounds.check` at `slo_ms`, else the
        workflow's SLO): QuotaExceeded("queue") -> 429 with Retry-After when full; else the clock's now (ns).
        Who calls it: `_admit`, and the invoke route before it reads the body (a refusal then costs no body
        decode: under overload most arrivals are refused, and reading them starved the admitted ones).
        Changes only the bound's drain-rate window."""
        now = self.clock.now_ns()
        full = self.queues.check(wf.name, slo_ms or wf.spec.slo_ms, now, self.queue_floor(wf))
        if full is not None:
            raise QuotaExceeded("queue", full.message(short(wf.name)), full.retry_after_s)
        return now

    def queue_floor(self, wf: WorkflowRt) -> int:
        """The queue bound's floor for `wf` (`platform.admission.queue_floor`, shared with the simulator)."""
        return queue_floor(self.ctl.functions, wf, self._units_total)

    def _unadmit(self, wf: WorkflowRt) -> None:
        """An admitted invocation that was never submitted (the controller or the store refused it)."""
        self.admission.release(wf.tenant)
        self.queues.done(wf.name, False, self.clock.now_ns())

    async def invoke(self, wf: WorkflowRt, payload: Any, slo_ms: float | None) -> tuple[str, Invocation]:
        """Admit, submit and wait for the end (the per-invocation timeout guarantees one)."""
        self._admit(wf, slo_ms)
        fut = asyncio.get_running_loop().create_future()
        try:
            inv = self.ctl.submit(wf.name, payload, slo_ms=slo_ms, on_done=functools.partial(self._sync_done, fut))
        except Exception:
            self._unadmit(wf)
            raise
        await fut
        return self.next_id(), inv

    def _sync_done(self, fut: asyncio.Future, inv: Invocation) -> None:
        """on_done of a sync invocation: metrics, then wake the waiting handler one loop turn later (a bound
        method and a partial instead of a closure per request).
        NOTE: the GPU's next batch before the answers. The controller ends a batch's invocations (this call)
        before it looks for the instance's next work, whose pass it queues with `call_soon`; a handler woken at
        once would write its answer (the output's JSON) ahead of that pass, so an instance that finished a
        batch of n waited for n answers before it got its next batch (measured in chain at load 1: ResNet-50's
        next batch 2.2 ms after the last at the median, against 0 in the simulator, whose pass is at once).
        Deferring the wake-up by one `call_soon` queues it behind that pass."""
        self.record(inv)
        if not fut.done():
            fut.get_loop().call_soon(_wake, fut)

    def invoke_async(self, wf: WorkflowRt, payload: Any, slo_ms: float | None) -> str:
        """Admit, record in the store, then submit; the result is stored when it ends. Returns the id.
        StoreUnavailable (503) when the store cannot take the new id: nothing was started."""
        self._admit(wf, slo_ms)
        inv_id = self.next_id()
        store = self.store
        assert store is not None
        try:
            self._flush_unstored()
            store.add_invocation(inv_id, short(wf.name), wf.tenant)
        except StoreUnavailable:
            self._unadmit(wf)
            raise

        def done(inv: Invocation) -> None:
            self.record(inv)
            self._unstored[inv_id] = (inv.tenant, STATUS_NAMES[inv.status], self.result_of(inv, inv_id, False), inv.reason)
            self.pending_async.pop(inv_id, None)
            try:
                self._flush_unstored()
            except StoreUnavailable as e:
                # NOTE: kept in memory (GET answers it from there) and written by the next store call that
                # succeeds; the ids in memory are bounded: no new async id is accepted while the store fails.
                log.warning("result of %s kept in memory until the store recovers: %s", inv_id, e.text)
            except Exception:  # noqa: BLE001 (the store was closed at shutdown: the next start marks it failed)
                log.exception("could not store the result of %s", inv_id)

        try:
            inv = self.ctl.submit(wf.name, payload, slo_ms=slo_ms, on_done=done)
        except Exception as e:
            self._unadmit(wf)
            try:
                store.finish_invocation(inv_id, "failed", {}, f"not accepted: {e}")
            except StoreUnavailable as se:
                log.warning("could not mark %s failed: %s", inv_id, se.text)
            raise
        self.pending_async[inv_id] = inv
        return inv_id

    # ------------------------------------------------------------------ reads for the routes (each scoped to one tenant)

    def function_names(self, tenant: str) -> list[str]:
        """`tenant`'s functions' names."""
        return [short(q) for q in self.ctl.functions if tenant_of(q) == tenant]

    def workflow_names(self, tenant: str) -> list[str]:
        """`tenant`'s workflows' names."""
        return [short(q) for q in self.ctl.workflows if tenant_of(q) == tenant]

    def workflow(self, tenant: str, name: str) -> WorkflowRt | None:
        """`tenant`'s workflow `name` (what an invocation is submitted to), or None."""
        return self.ctl.workflows.get(qualify(tenant, name))

    def functions_doc(self, tenant: str) -> list[dict]:
        """GET /v1/functions: one summary per function of `tenant`."""
        ctl = self.ctl
        return [{"name": short(q), "model": fn.spec.model, "description": fn.spec.description,
                 "instances": len(ctl.instances_by_fn.get(q, [])), "files": self.files.get(q, [])}
                for q, fn in ctl.functions.items() if tenant_of(q) == tenant]

    def function_doc(self, tenant: str, name: str) -> dict | None:
        """GET /v1/functions/{name}: spec, bundle files, instances and the workflows using it; None if unknown."""
        ctl = self.ctl
        q = qualify(tenant, name)
        fn = ctl.functions.get(q)
        if fn is None:
            return None
        insts = [{"id": i.id, "gpu": i.gpu.id, "share": i.share, "state": i.state.name.lower(), "max_batch": i.max_batch}
                 for i in ctl.instances_by_fn.get(q, [])]
        used_by = self._workflows_using(q)
        spec = fn.spec.model_dump(mode="json")
        spec["name"] = name
        return {"name": name, "kind": "function", "spec": spec, "files": self.files.get(q, []), "instances": insts, "used_by": used_by}

    def workflows_doc(self, tenant: str) -> list[dict]:
        """GET /v1/workflows: one summary per workflow of `tenant`."""
        return [{"name": short(q), "slo_ms": wf.spec.slo_ms, "stages": [s.name for s in wf.stages],
                 "functions": sorted({short(s.function) for s in wf.stages}), "tenant": wf.tenant, "priority": wf.priority}
                for q, wf in self.ctl.workflows.items() if tenant_of(q) == tenant]

    def workflow_doc(self, tenant: str, name: str) -> dict | None:
        """GET /v1/workflows/{name}: spec and queue lengths; None if unknown."""
        wf = self.ctl.workflows.get(qualify(tenant, name))
        if wf is None:
            return None
        queues = [{"stage": s.name, "length": len(s.queue.jobs)} for s in wf.stages]
        spec = wf.spec.model_dump(mode="json")
        spec["name"] = name
        for st in spec["stages"]:
            st["function"] = short(st["function"])
        return {"name": name, "kind": "workflow", "spec": spec, "queues": queues}

    def health_doc(self) -> dict:
        """GET /healthz: nothing tenant-specific (it needs no key)."""
        return {"status": "ok", "policy": self.policy_name, "backend": self.cfg.backend,
                "loop_lag_ms": round(self.metrics.loop_lag.recent_s() * 1e3, 3)}

    def metrics_text(self) -> bytes:
        """GET /metrics: the Prometheus exposition of the gateway's metrics and the controller's state."""
        return self.metrics.render()

    def _flush_unstored(self) -> None:
        """Write the results kept in memory while the store failed (StoreUnavailable if it still does)."""
        store = self.store
        assert store is not None
        while self._unstored:
            inv_id, (_, status, doc, reason) = next(iter(self._unstored.items()))
            store.finish_invocation(inv_id, status, doc, reason)
            del self._unstored[inv_id]

    def stored_result(self, tenant: str, inv_id: str, binary: bool) -> dict | None:
        """GET /v1/invocations/{id}: `tenant`'s pending async invocation's state, or its stored result; None
        if unknown or another tenant's (the answer must not tell the two apart)."""
        inv = self.pending_async.get(inv_id)
        if inv is not None:
            return self.result_of(inv, inv_id, binary) if inv.tenant == tenant else None
        kept = self._unstored.get(inv_id)
        if kept is not None:
            owner, status, doc, reason = kept
            return {**doc, "status": status, "reason": reason} if owner == tenant else None
        assert self.store is not None
        row = self.store.get_invocation(inv_id)
        if row is None or row["tenant"] != tenant:
            return None
        result = row["result"] or {}
        if not result:
            return {"id": inv_id, "workflow": row["workflow"], "status": row["status"], "slo_met": False, "slo_ms": 0.0,
                    "latency_ms": 0.0, "stages": [], "output": None, "reason": row["reason"]}
        result["reason"] = row["reason"] or result.get("reason", "")
        result["status"] = row["status"]
        return result

    def payload(self, wf: WorkflowRt, data: Any) -> dict[str, Any] | None:
        """Input tensors as numpy arrays (dtype from the entry functions' input specs), or None."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise BadInput("invalid_payload", "data: expected a mapping of input name -> tensor")
        specs: dict[str, TensorSpec] = {}
        for e in wf.entries:
            fn = self.ctl.functions.get(wf.stages[e].function)
            if fn is not None:
                for k, ts in fn.spec.inputs.items():
                    specs.setdefault(k, ts)
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

    # ------------------------------------------------------------------ reports

    def cluster_doc(self, tenant: Tenant) -> dict:
        """GET /v1/cluster: every GPU's capacity (shared by all), and the instances and queues `tenant` owns
        (the admin sees every tenant's, with controller names)."""
        ctl = self.ctl

        def mine(q: str) -> bool:
            return tenant.admin or tenant_of(q) == tenant.name

        def name(q: str) -> str:
            return q if tenant.admin else short(q)

        gpus = [{"id": g.id, "node": g.node, "type": g.type_name, "share_units": g.share_units, "free_units": g.free_units,
                 "share_in_use": round((g.share_units - g.free_units) / g.share_units, 4), "memory_mb": g.memory_mb,
                 "free_mb": g.free_mb, "instances": sorted(i for i in g.instance_ids if mine(ctl.instances[i].function.name))}
                for g in ctl.gpus]
        insts = [{"id": i.id, "function": name(i.function.name), "gpu": i.gpu.id, "share": i.share, "max_batch": i.max_batch,
                  "state": i.state.name.lower(), "stopping": i.stopping, "batches_run": i.batches_run,
                  "backlog": len(i.backlog), "cold_start_ms": round(i.cold_start_ns / 1e6, 3),
                  "start_reason": i.start_reason}
                 for i in ctl.instances.values() if mine(i.function.name)]
        queues = [{"workflow": name(wf.name), "stage": s.name, "function": name(s.function), "length": len(s.queue.jobs),
                   "rate_per_s": round(s.queue.rate_per_s, 3)} for wf in ctl.workflows.values() if mine(wf.name) for s in wf.stages]
        return {"policy": self.policy_name, "backend": self.cfg.backend, "execute": self.cfg.execute, "gpus": gpus,
                "instances": insts, "queues": queues,
                "inflight": sum(1 for inv in ctl.inflight.values() if mine(inv.workflow.name))}

    def usage_doc(self, tenant: Tenant, of: str | None = None) -> dict:
        """GET /v1/usage: the controller's report with live instances billed up to now (`Controller.report`),
        cut to one tenant: `tenant`'s own, or for the admin, tenant `of` (None: the whole gateway)."""
        who = tenant.name if not tenant.admin else of
        rep = self.ctl.report()
        rep["policy"] = self.policy_name
        rep["backend"] = self.cfg.backend
        if who is None:
            rep["live_instances"] = len(self.ctl.instances)
            rep["inflight"] = len(self.ctl.inflight)
            rep["async_pending"] = len(self.pending_async)
            return rep
        per_wf = {short(q): v for q, v in rep["per_workflow"].items() if tenant_of(q) == who}
        per_tenant = rep.get("per_tenant", {}).get(who, {})
        n = sum(v["invocations"] for v in per_wf.values())
        hits = sum(v["invocations"] * v["slo_hit_rate"] for v in per_wf.values())
        cost = dict(per_tenant.get("cost", {}))
        for k in ("gpu_seconds_allocated", "gpu_seconds_busy"):
            if k in per_tenant:
                cost[k] = per_tenant[k]
        return {"tenant": who, "policy": self.policy_name, "backend": self.cfg.backend, "invocations": n,
                "slo_hit_rate": round(hits / n, 6) if n else 0.0, "cost": cost, "per_workflow": per_wf,
                "live_instances": sum(1 for i in self.ctl.instances.values() if tenant_of(i.function.name) == who),
                "async_pending": sum(1 for inv in self.pending_async.values() if inv.tenant == who)}


def _wake(fut: asyncio.Future) -> None:
    """Resolve a sync invocation's future (`Platform._sync_done`), unless its handler gave up meanwhile."""
    if not fut.done():
        fut.set_result(None)
