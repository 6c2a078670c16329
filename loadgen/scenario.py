"""A `Scenario`: cluster + functions + workflows + workload + duration + seed, loadable from YAML.

The one value that `gpufaas sim` runs and that the live path can be pointed at. Functions and
workflows may be written inline or named by path (a function bundle folder holding `function.yaml`,
or a YAML file), relative to the scenario file, so scenarios reuse the bundles in `functions/`.
A scenario may also name its own `profiles:` folder (searched before the shipped profiles, so it
can run on GPU types that ship no profile), a `warmup_s` whose figures the report leaves out, and
`params:` per policy (checked against each policy's `Params` on load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationInfo, field_validator

from gpufaas.loadgen.workload import WorkloadSpec
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.shipped import scenarios_dir
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, Spec, WorkflowSpec, parse, read_yaml


WARMUP_FRACTION = 0.1  # default warm-up: this share of duration_s


class Scenario(Spec):
    """Everything one simulated (or live) experiment needs."""

    name: str = Field(description="scenario name")
    description: str = Field("", description="what it models")
    seed: int = Field(1, description="seed of the arrival streams")
    duration_s: float = Field(gt=0, description="how long invocations arrive, seconds")
    warmup_s: float | None = Field(None, ge=0, description="leading seconds left out of the report (arrivals, cost, "
                                   "cold starts, batches); None = 10% of duration_s, 0 = report everything")
    drain_s: float = Field(30.0, ge=0, description="after the arrivals end, how long in-flight invocations may still finish")
    keep_alive_s: float = Field(60.0, ge=0, description="default idle time before an instance is stopped")
    cluster: ClusterSpec = Field(description="the cluster")
    functions: list[FunctionSpec] = Field(min_length=1, description="the functions")
    workflows: list[WorkflowSpec] = Field(min_length=1, description="the workflows")
    workload: WorkloadSpec = Field(description="the offered load")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, validation_alias=AliasChoices("params", "policy_params"),
                                              description="per-policy parameters, by policy name (each checked against "
                                              "the policy's Params when the file is loaded); `policy_params` is the old name")
    profiles: str | None = Field(None, description="folder of profile YAML files (relative to the scenario file), searched "
                                 "before the shipped profiles; a profile there replaces a shipped one for the same model and GPU type")

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


def _resolve(entry: Any, base: Path, what: str, index: int) -> Any:
    """An inline mapping as is; a string is a path to a YAML file or a bundle folder with function.yaml."""
    if not isinstance(entry, str):
        return entry
    p = (base / entry).resolve()
    if p.is_dir():
        p = p / "function.yaml"
    if not p.exists():
        raise SpecError(f"{what}[{index}]: '{entry}' not found (looked for {p}); fix the path")
    return read_yaml(p)


def load_scenario(path: str | Path) -> Scenario:
    """Read, resolve and validate a scenario file; SpecError (one line) on any problem."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level (name, cluster, functions, workflows, workload, ...)")
    base = path.parent
    for key in ("functions", "workflows"):
        if isinstance(data.get(key), list):
            data[key] = [_resolve(e, base, key, i) for i, e in enumerate(data[key])]
    if isinstance(data.get("cluster"), str):
        data["cluster"] = _resolve(data["cluster"], base, "cluster", 0)
    sc = parse(Scenario, data, str(path))
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
