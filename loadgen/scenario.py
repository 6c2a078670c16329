"""A `Scenario`: cluster + functions + workflows + workload + duration + seed, loadable from YAML.

The one value that `gpufaas sim` runs and that the live path can be pointed at. Functions and
workflows may be written inline or named by path (a function bundle folder holding `function.yaml`,
or a YAML file), relative to the scenario file, so scenarios reuse the bundles in `functions/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from gpufaas.loadgen.workload import WorkloadSpec
from gpufaas.platform.errors import SpecError
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, Spec, WorkflowSpec, parse, read_yaml


class Scenario(Spec):
    """Everything one simulated (or live) experiment needs."""

    name: str = Field(description="scenario name")
    description: str = Field("", description="what it models")
    seed: int = Field(1, description="seed of the arrival streams")
    duration_s: float = Field(gt=0, description="how long invocations arrive, seconds")
    drain_s: float = Field(30.0, ge=0, description="after the arrivals end, how long in-flight invocations may still finish")
    keep_alive_s: float = Field(60.0, ge=0, description="default idle time before an instance is stopped")
    cluster: ClusterSpec = Field(description="the cluster")
    functions: list[FunctionSpec] = Field(min_length=1, description="the functions")
    workflows: list[WorkflowSpec] = Field(min_length=1, description="the workflows")
    workload: WorkloadSpec = Field(description="the offered load")
    policy_params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-policy parameters, by policy name")


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
    return sc
