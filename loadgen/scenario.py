"""A `Scenario`: cluster + functions + workflows + workload + duration + seed, loadable from YAML.

The one value that `gpufaas sim` runs and that the live path can be pointed at. Functions and
workflows may be written inline or named by path (a function bundle folder holding `function.yaml`,
or a YAML file), relative to the scenario file, so scenarios reuse the bundles in `functions/`. Every
path may hold `${VAR}` or `${VAR:-default}` (expanded from the environment when the file is loaded).
A scenario may also name its own `profiles:` folder (searched before the shipped profiles, so it
can run on GPU types that ship no profile), a `warmup_s` whose figures the report leaves out, and
`params:` per policy (checked against each policy's `Params` on load), and the `residency:` policy
(platform/residency/) that decides which idle instances stay resident (default `fixed`).

Variants: `function_variants: [{name, of, memory_gb}]` adds functions that run like the function `of`
(its handler, batch sizes, shares and latency profile) under their own name and GPU memory, so a
scenario can hold many distinct models without a bundle folder each (`many-models.yaml`). A variant's
profile is its base's with `memory.instance_mb` = memory_gb and the model load time scaled with the
memory (weights load at a fixed rate: the shipped cold-start estimates' rule); see `variant_profile`.

Tenants: `tenants: {NAME: {weight, max_share_units, max_concurrency, rate_rps}}` (the gateway's
`tenants.Limits`, one model for both), and a `tenant:` per stream or trace (default `default`). A workflow
belongs to one tenant, so a stream of tenant T invoking a workflow of another tenant invokes T's own copy,
named `T/NAME` as the live gateway names it (`gateway.tenants`), whose functions are T's copies likewise:
two tenants never share an instance. `load_scenario` makes the copies; a workflow or function that only
copies use is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from pydantic import AliasChoices, Field, ValidationInfo, field_validator

from gpufaas.gateway.tenants import DEFAULT_TENANT, Limits, check_tenant_name
from gpufaas.loadgen.trace import expand_env
from gpufaas.loadgen.workload import WorkloadSpec
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.profiles import ColdStartProfile, LatencyTable, MemoryProfile, Profile, Profiles
from gpufaas.platform.residency import registry as residency_registry
from gpufaas.platform.shipped import scenarios_dir
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, Name, Spec, WorkflowSpec, parse, read_yaml
from gpufaas.platform.tenancy import CLASSES, TenantShare
from gpufaas.platform.units import MAX_DURATION_S


WARMUP_FRACTION = 0.1  # default warm-up: this share of duration_s


class FunctionVariant(Spec):
    """A function that runs like `of` under its own name and GPU memory (see the module docstring)."""

    name: Name = Field(description="the variant's function name")
    of: Name = Field(description="the function (under `functions:`) it is a variant of")
    memory_gb: float = Field(gt=0, le=1024, description="GPU memory of one instance (weights + runtime), GB (1 GB = 1024 MB)")
    min_instances: int = Field(0, ge=0, description="as FunctionSpec.min_instances")
    max_instances: int | None = Field(None, ge=1, description="as FunctionSpec.max_instances")
    shares: list[float] | None = Field(None, min_length=1, description="GPU shares it accepts; None = its base's")
    base_model: str | None = Field(None, description="filled in on load: the profile name of `of`, whose profile it derives from")

    @property
    def model(self) -> str:
        """The variant's profile name: its own, so its memory and load time are its own."""
        return f"{self.name}~variant"


class Scenario(Spec):
    """Everything one simulated (or live) experiment needs."""

    name: str = Field(description="scenario name")
    description: str = Field("", description="what it models")
    seed: int = Field(1, description="seed of the arrival streams")
    duration_s: float = Field(gt=0, description="how long invocations arrive, seconds")
    warmup_s: float | None = Field(None, ge=0, description="leading seconds left out of the report (arrivals, cost, "
                                   "cold starts, batches); None = 10% of duration_s, 0 = report everything")
    drain_s: float = Field(30.0, ge=0, description="after the arrivals end, how long in-flight invocations may still finish")
    keep_alive_s: float = Field(60.0, ge=0, le=MAX_DURATION_S, description="default idle time before an instance is stopped")
    cluster: ClusterSpec = Field(description="the cluster")
    functions: list[FunctionSpec] = Field(min_length=1, description="the functions")
    workflows: list[WorkflowSpec] = Field(min_length=1, description="the workflows")
    workload: WorkloadSpec = Field(description="the offered load")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, validation_alias=AliasChoices("params", "policy_params"),
                                              description="per-policy parameters, by policy name (each checked against "
                                              "the policy's Params when the file is loaded); `policy_params` is the old name")
    profiles: str | None = Field(None, description="folder of profile YAML files (relative to the scenario file), searched "
                                 "before the shipped profiles; a profile there replaces a shipped one for the same model and GPU type")
    residency: str = Field(residency_registry.DEFAULT, description="residency policy: "
                           f"{', '.join(residency_registry.builtin_registry().names())} (platform/residency/)")
    function_variants: list[FunctionVariant] = Field(default_factory=list, description="functions that run like another "
                                                     "one under their own name and GPU memory (added to `functions` on load)")
    tenants: dict[str, Limits] = Field(default_factory=dict, description="per tenant: fair-share weight, max_share_units "
                                       "(controller), max_concurrency and rate_rps (admission at arrival); streams and "
                                       "traces name theirs with `tenant:`")

    @field_validator("tenants")
    @classmethod
    def _check_tenants(cls, v: dict[str, Limits]) -> dict[str, Limits]:
        for name in v:
            try:
                check_tenant_name(name)
            except UserError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("residency")
    @classmethod
    def _check_residency(cls, v: str) -> str:
        try:
            return residency_registry.builtin_registry().check(v)
        except UserError as e:
            raise ValueError(str(e)) from None

    @field_validator("warmup_s")
    @classmethod
    def _check_warmup(cls, v: float | None, info: ValidationInfo) -> float | None:
        duration_s = info.data.get("duration_s")  # absent when duration_s itself failed
        if v is not None and duration_s is not None and not v < duration_s:
            raise ValueError(_warmup_message(v, duration_s))
        return v

    def effective_warmup_s(self) -> float:
        """The warm-up in seconds: `warmup_s`, or 10% of `duration_s` when unset. Who calls it: `run_scenario`,
        which checks again (SpecError) because `model_copy(update=...)` of a loaded scenario skips validators."""
        w = self.duration_s * WARMUP_FRACTION if self.warmup_s is None else self.warmup_s
        if not w < self.duration_s:
            raise SpecError(f"scenario {self.name}: warmup_s: {_warmup_message(w, self.duration_s)}")
        return w


def _warmup_message(warmup_s: float, duration_s: float) -> str:
    return (f"{warmup_s:g} s is not shorter than duration_s ({duration_s:g} s); give a warm-up below the duration "
            f"(0 reports the whole run)")


def entry_path(entry: str, base: Path, where: str) -> Path:
    """A path a scenario names (`${VAR}` expanded; relative to the scenario's folder `base`), absolute.
    Who calls it: `_resolve` and `gpufaas fidelity` (its stack manifest)."""
    return (base / expand_env(entry, where)).resolve()


def _resolve(entry: Any, base: Path, where: str) -> Any:
    """An inline mapping as is; a string is a path (`${VAR}` expanded) to a YAML file or a bundle folder with
    function.yaml, read here. `where` names the file and the field in errors."""
    if not isinstance(entry, str):
        return entry
    p = entry_path(entry, base, where)
    if p.is_dir():
        p = p / "function.yaml"
    if not p.exists():
        raise SpecError(f"{where}: '{entry}' not found (looked for {p}); fix the path")
    return read_yaml(p)


def load_scenario(path: str | Path) -> Scenario:
    """Read, resolve and validate a scenario file; SpecError (one line) on any problem.

    Every path in it (`cluster`, `functions`, `workflows`, `profiles`, `workload.traces[].path`) may hold
    `${VAR}` / `${VAR:-default}`, expanded from the environment; an unset variable without a default is a
    one-line SpecError naming the variable and the field."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level (name, cluster, functions, workflows, workload, ...)")
    base = path.parent
    for key in ("functions", "workflows"):
        if isinstance(data.get(key), list):
            data[key] = [_resolve(e, base, f"{path}: {key}[{i}]") for i, e in enumerate(data[key])]
    if isinstance(data.get("cluster"), str):
        data["cluster"] = _resolve(data["cluster"], base, f"{path}: cluster")
    if isinstance(data.get("profiles"), str):
        data["profiles"] = expand_env(data["profiles"], f"{path}: profiles")
    sc = with_variants(parse(Scenario, data, str(path)), str(path))
    fnames = {f.name for f in sc.functions}
    wnames = set()
    for i, wf in enumerate(sc.workflows):
        wnames.add(wf.name)
        for j, st in enumerate(wf.stages):
            if st.function not in fnames:
                raise SpecError(f"{path}: workflows[{i}].stages[{j}].function: unknown function '{st.function}'; "
                                f"add it under functions (known: {', '.join(sorted(fnames))})")
    for i, s in enumerate(sc.workload.streams):
        if s.workflow not in wnames:
            raise SpecError(f"{path}: workload.streams[{i}].workflow: unknown workflow '{s.workflow}' (known: {', '.join(sorted(wnames))})")
    for j, tr in enumerate(sc.workload.traces):
        for w in tr.workflows:
            if w not in wnames:
                raise SpecError(f"{path}: workload.traces[{j}].workflows: unknown workflow '{w}' (known: {', '.join(sorted(wnames))})")
    sc = with_tenant_copies(sc, str(path))
    if sc.workload.traces:  # trace paths resolve against this file's folder; a missing file fails here
        sc = sc.model_copy(update={"workload": sc.workload.resolved(base, str(path))})
    reg = builtin_registry()
    for name, values in sc.params.items():  # every policy's parameters checked before any run
        try:
            reg.check(name, values)
        except UserError as e:
            raise SpecError(f"{path}: params: {e}") from None
    if sc.profiles is not None:  # resolved against this file's folder; a missing folder fails here
        d = (base / sc.profiles).resolve()
        if not d.is_dir():
            raise SpecError(f"{path}: profiles: folder '{sc.profiles}' not found (looked for {d}); "
                            f"fix the path (it is relative to the scenario file) or remove the key")
        sc = sc.model_copy(update={"profiles": str(d)})
    return sc


def with_variants(sc: Scenario, where: str) -> Scenario:
    """`sc` with each of its `function_variants` added to `functions` (SpecError naming `where` for a variant
    of an unknown function or a name already taken). Who calls it: `load_scenario`."""
    if not sc.function_variants:
        return sc
    fns = {f.name: f for f in sc.functions}
    added: list[FunctionSpec] = []
    variants = []
    for i, v in enumerate(sc.function_variants):
        base = fns.get(v.of)
        if base is None:
            raise SpecError(f"{where}: function_variants[{i}].of: unknown function '{v.of}'; add it under functions "
                            f"(known: {', '.join(sorted(fns))})")
        if v.name in fns or any(a.name == v.name for a in added):
            raise SpecError(f"{where}: function_variants[{i}].name: '{v.name}' is already a function; give the variant its own name")
        update = {"name": v.name, "model": v.model, "min_instances": v.min_instances, "max_instances": v.max_instances}
        if v.shares is not None:
            update["shares"] = sorted(set(v.shares))
        # NOTE: validated again (model_copy skips validators): the bounds and the shares must hold
        added.append(parse(FunctionSpec, {**base.model_dump(), **update}, f"{where}: function_variants[{i}]"))
        variants.append(v.model_copy(update={"base_model": base.model}))
    # NOTE: a base that no workflow runs is only a template: it is not deployed (its own shares need not fit
    # the cluster's units, as a variant may declare others)
    used = {st.function for w in sc.workflows for st in w.stages}
    bases = {v.of for v in sc.function_variants}
    kept = [f for f in sc.functions if f.name in used or f.name not in bases]
    return sc.model_copy(update={"functions": [*kept, *added], "function_variants": variants})


def variant_profile(table: LatencyTable, v: FunctionVariant) -> Profile:
    """The profile of variant `v` on `table`'s GPU type: `table`'s latencies (a variant runs like its base),
    instance memory `v.memory_gb`, and the model load time scaled by the memory ratio (weights are loaded
    at the base's rate, as the shipped cold-start estimates assume: time proportional to size)."""
    mem_mb = v.memory_gb * 1024.0
    base_mb = max(table.memory.instance_mb, 1.0)
    cs = table.cold_start
    shares = [1.0 / x for x in reversed(table.inv_shares)]
    return Profile(model=v.model, gpu_type=table.gpu_type, source=f"variant of {table.model}: memory {v.memory_gb:g} GB, "
                   f"model load scaled x{mem_mb / base_mb:.2f} (loadgen.scenario.variant_profile)",
                   batches=list(table.batches), shares=shares, latency_ms=[list(reversed(r)) for r in table.lat],
                   memory=MemoryProfile(instance_mb=mem_mb, per_item_mb=table.memory.per_item_mb),
                   cold_start=ColdStartProfile(container_ms=cs.container_ms, runtime_init_ms=cs.runtime_init_ms,
                                               model_load_ms=cs.model_load_ms * mem_mb / base_mb, source=cs.source))


def add_variant_profiles(sc: Scenario, profiles: Profiles) -> Profiles:
    """Add the profile of every variant of `sc` on every GPU type its base has one for; returns `profiles`.
    Who calls it: `loadgen.simdriver.scenario_profiles`."""
    gpu_types = [t.name for t in sc.cluster.gpu_types]
    for v in sc.function_variants:
        for t in gpu_types:
            if v.base_model is not None and profiles.has(v.base_model, t):
                profiles.add(variant_profile(profiles.table(v.base_model, t), v))
    return profiles


def with_tenant_copies(sc: Scenario, where: str) -> Scenario:
    """`sc` with every stream and trace pointing at its own tenant's copy of its workflows (see the module
    docstring); `sc` itself when every one already does. SpecError naming `where` for a tenant that is not
    declared under `tenants:` (only `default` need not be).
    Who calls it: `load_scenario`."""
    declared = set(sc.tenants) | {DEFAULT_TENANT}
    wfs = {w.name: w for w in sc.workflows}
    fns = {f.name: f for f in sc.functions}
    uses = [(f"workload.streams[{i}]", s.tenant, [s.workflow]) for i, s in enumerate(sc.workload.streams)]
    uses += [(f"workload.traces[{j}]", tr.tenant, list(tr.workflows)) for j, tr in enumerate(sc.workload.traces)]
    for field, tenant, _ in uses:
        if tenant not in declared:
            raise SpecError(f"{where}: {field}.tenant: tenant '{tenant}' is not declared; add it under tenants: "
                            f"(declared: {', '.join(sorted(declared))})")
    if all(wfs[w].tenant == tenant for _, tenant, names in uses for w in names):
        return sc
    new_fns = dict(fns)
    new_wfs = dict(wfs)
    copied: set[str] = set()

    def copy_name(tenant: str, name: str) -> str:
        return f"{tenant}/{name}"  # NOTE: gateway.tenants.qualify's form, also for the default tenant's copies

    def workflow_for(tenant: str, name: str) -> str:
        wf = wfs[name]
        if wf.tenant == tenant:
            return name
        q = copy_name(tenant, name)
        if q not in new_wfs:
            stages = []
            for st in wf.stages:
                fn = fns[st.function]
                fq = st.function if fn.tenant == tenant else copy_name(tenant, st.function)
                if fq not in new_fns:
                    new_fns[fq] = fn.model_copy(update={"name": fq, "tenant": tenant})
                    copied.add(st.function)
                stages.append(st.model_copy(update={"function": fq}))
            new_wfs[q] = wf.model_copy(update={"name": q, "tenant": tenant, "stages": stages})
            copied.add(name)
        return q

    streams = [s.model_copy(update={"workflow": workflow_for(s.tenant, s.workflow)}) for s in sc.workload.streams]
    traces = [tr.model_copy(update={"workflows": [workflow_for(tr.tenant, w) for w in tr.workflows]})
              for tr in sc.workload.traces]
    invoked = {s.workflow for s in streams} | {w for tr in traces for w in tr.workflows}
    keep_wfs = [w for n, w in new_wfs.items() if n in invoked or n not in copied]
    used_fns = {st.function for w in keep_wfs for st in w.stages}
    keep_fns = [f for n, f in new_fns.items() if n in used_fns or n not in copied]
    workload = sc.workload.model_copy(update={"streams": streams, "traces": traces})
    return sc.model_copy(update={"workflows": keep_wfs, "functions": keep_fns, "workload": workload})


def tenant_shares(sc: Scenario) -> dict[str, TenantShare]:
    """The controller's view of the scenario's tenants (`Controller.set_tenants`): weight and share cap."""
    return {name: lim.share() for name, lim in sc.tenants.items()}


def target_filter(sc: Scenario, tenants: Iterable[str] = (), classes: Iterable[str] = ()) -> frozenset[int] | None:
    """The indices of `sc.workload.targets()` that `gpufaas sim --tenants A,B --classes realtime` keeps (None:
    all of them, when neither is given). UserError naming the flag for a tenant or class the scenario has
    none of, or when nothing is left."""
    tenants, classes = tuple(tenants), tuple(classes)
    if not tenants and not classes:
        return None
    targets = sc.workload.targets()
    priority = {w.name: w.priority for w in sc.workflows}
    have_t = sorted({t.tenant for t in targets})
    have_c = sorted({priority[t.workflow] for t in targets})
    for t in tenants:
        if t not in have_t:
            raise UserError(f"--tenants: scenario {sc.name} has no stream of tenant '{t}' (its tenants: {', '.join(have_t)})")
    for c in classes:
        if c not in CLASSES:
            raise UserError(f"--classes: '{c}' is not a class; use {' or '.join(CLASSES)}")
    keep = frozenset(i for i, t in enumerate(targets)
                     if (not tenants or t.tenant in tenants) and (not classes or priority[t.workflow] in classes))
    if not keep:
        raise UserError(f"--tenants/--classes: nothing of scenario {sc.name} is left (tenants {', '.join(tenants) or 'all'}, "
                        f"classes {', '.join(classes) or 'all'}); its classes: {', '.join(have_c)}")
    return keep


SHIPPED_SCENARIOS = scenarios_dir()


def resolve_scenario(name_or_path: str, flag: str) -> Path:
    """A shipped scenario's name (`chain`) or a path to a scenario file; UserError naming `flag` and the
    shipped names if neither exists. Who calls it: `gpufaas sim`, `gpufaas results`, `gpufaas bench scheduler`."""
    p = Path(name_or_path)
    if not p.is_file() and p.suffix not in (".yaml", ".yml"):
        p = SHIPPED_SCENARIOS / f"{name_or_path}.yaml"
    if not p.is_file():
        shipped = ", ".join(sorted(q.stem for q in SHIPPED_SCENARIOS.glob("*.yaml")))
        if Path(name_or_path).suffix in (".yaml", ".yml") or "/" in name_or_path:
            raise UserError(f"{flag}: {name_or_path}: file not found; check the path, or name a shipped scenario ({shipped})")
        raise UserError(f"{flag}: no scenario '{name_or_path}'; give a file path or one of {shipped}")
    return p
