"""Specs users write: functions, workflows, GPU types and clusters (pydantic v2, frozen, extra=forbid).

Who uses them: the scenario loader, the gateway's deploy routes and the CLI validate input with these
models; the controller compiles them once into plain runtime objects (`runtime.py`) and never touches
pydantic on the hot path. `load_yaml()` turns any validation failure into a one-line `SpecError`
naming the file, the field path and what to change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import networkx as nx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpufaas.platform.errors import SpecError

NAME_RE = r"^[a-z0-9]([a-z0-9_.-]{0,62}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_RE, description="lower-case name: letters, digits, '-', '_', '.'")]


class Spec(BaseModel):
    """Base of every spec: immutable, unknown fields rejected (catches typos in YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- hardware


class GpuType(Spec):
    """A kind of GPU: memory, price and how finely it can be shared."""

    name: str = Field(description="GPU type name, e.g. 'A100-80GB'; profiles are keyed by it")
    memory_mb: int = Field(gt=0, description="GPU memory in MB")
    price_per_hour_usd: float = Field(gt=0, description="on-demand price of one whole GPU per hour, USD")
    share_units: int = Field(10, ge=1, le=100, description="how many equal share units one GPU is split into (10 = 10% steps)")
    price_source: str = Field("", description="where the price comes from (citation)")


class NodeSpec(Spec):
    """One machine: a name and how many GPUs of which type."""

    name: Name = Field(description="node name, unique in the cluster")
    gpu_type: str = Field(description="name of a GpuType declared in the cluster")
    gpus: int = Field(ge=0, le=64, description="number of GPUs on the node")


class NetworkSpec(Spec):
    """Bandwidths used for inter-stage transfer time."""

    host_gbps: float = Field(100.0, gt=0, description="GPU-to-GPU bandwidth on one node (PCIe/NVLink via host), Gbit/s")
    network_gbps: float = Field(25.0, gt=0, description="node-to-node bandwidth, Gbit/s")
    network_latency_us: float = Field(50.0, ge=0, description="one-way latency of a cross-node transfer, microseconds")


class ClusterSpec(Spec):
    """The cluster: GPU types, nodes and network."""

    gpu_types: list[GpuType] = Field(min_length=1, description="GPU types used by the nodes")
    nodes: list[NodeSpec] = Field(min_length=1, description="the nodes")
    network: NetworkSpec = Field(default_factory=NetworkSpec, description="transfer bandwidths")

    @model_validator(mode="after")
    def _check(self) -> "ClusterSpec":
        types = {t.name for t in self.gpu_types}
        if len(types) != len(self.gpu_types):
            raise ValueError("gpu_types: two GPU types share a name; give each a unique name")
        seen: set[str] = set()
        for i, n in enumerate(self.nodes):
            if n.gpu_type not in types:
                raise ValueError(f"nodes[{i}].gpu_type: unknown GPU type '{n.gpu_type}'; declare it under gpu_types (known: {sorted(types)})")
            if n.name in seen:
                raise ValueError(f"nodes[{i}].name: duplicate node name '{n.name}'")
            seen.add(n.name)
        return self

    def gpu_type(self, name: str) -> GpuType:
        """The GpuType called `name` (KeyError if absent)."""
        for t in self.gpu_types:
            if t.name == name:
                return t
        raise KeyError(name)


# ---------------------------------------------------------------- functions


class TensorSpec(Spec):
    """One named tensor of a function's input or output, per batch item (the batch dimension is implicit)."""

    dtype: str = Field(description="torch dtype name: float32, float16, int64, uint8, ...")
    shape: list[int] = Field(description="shape of one item, without the batch dimension")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype '{v}'; use one of {sorted(DTYPE_BYTES)}")
        return v

    @property
    def nbytes(self) -> int:
        """Bytes of one item."""
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}


class FunctionSpec(Spec):
    """One DNN stage: what it runs, which configurations it accepts, and which profile times it."""

    name: Name = Field(description="function name, unique per tenant")
    model: str = Field(description="profile name that times this function (see platform/profiles/)")
    handler: str = Field("handler:build", description="'module:callable' in the bundle that builds the torch model")
    description: str = Field("", description="one line for humans")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32], min_length=1, description="batch sizes the function accepts")
    shares: list[float] = Field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1, description="GPU shares (fractions of one GPU) the function accepts")
    inputs: dict[str, TensorSpec] = Field(default_factory=dict, description="input tensors per item")
    outputs: dict[str, TensorSpec] = Field(default_factory=dict, description="output tensors per item")
    keep_alive_s: float | None = Field(None, ge=0, description="idle time before an instance is stopped; None = the platform default")
    inputs_any_float: bool = Field(False, description="accept any non-empty set of float tensors per item (a fan-in head fed by "
                                   "different upstreams); `inputs` then only describes the synthetic input")
    tenant: str = Field("default", description="owning tenant")

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be >= 1, got {v}")
        return sorted(set(v))

    @field_validator("shares")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0 < s <= 1:
                raise ValueError(f"share {s} is outside (0, 1]; a share is a fraction of one GPU")
        return sorted(set(v))

    @property
    def output_bytes_per_item(self) -> int:
        """Bytes one item's output occupies, for inter-stage transfer time."""
        return sum(t.nbytes for t in self.outputs.values())


# ---------------------------------------------------------------- workflows


class StageSpec(Spec):
    """One node of a workflow DAG."""

    name: Name = Field(description="stage name, unique in the workflow")
    function: str = Field(description="name of the function this stage runs")
    after: list[str] = Field(default_factory=list, description="stages that must finish first (fan-in waits for all)")


class WorkflowSpec(Spec):
    """A DAG of stages with one end-to-end SLO. Validated: no cycles, no unknown or unreachable stages."""

    name: Name = Field(description="workflow name")
    slo_ms: float = Field(gt=0, description="end-to-end latency SLO in milliseconds (must be > 0)")
    stages: list[StageSpec] = Field(min_length=1, description="the stages; entry stages have no 'after'")
    tenant: str = Field("default", description="owning tenant")
    priority: str = Field("realtime", pattern="^(realtime|batch)$", description="'realtime' (has an SLO) or 'batch' (fills idle capacity)")
    on_deadline_miss: str = Field("run", pattern="^(run|reject)$",
                                  description="an invocation that can no longer meet its SLO: 'run' it anyway when capacity "
                                              "is free (it is reported as a miss; shed only under contention) or 'reject' it")

    @model_validator(mode="after")
    def _dag(self) -> "WorkflowSpec":
        validate_dag(self)
        return self

    def graph(self) -> nx.DiGraph:
        """The stage DAG as a networkx DiGraph (edges predecessor -> successor)."""
        g = nx.DiGraph()
        for s in self.stages:
            g.add_node(s.name, function=s.function)
        for s in self.stages:
            for p in s.after:
                g.add_edge(p, s.name)
        return g


def validate_dag(wf: WorkflowSpec) -> None:
    """Reject duplicate and unknown stages, cycles and unreachable stages, naming the stage."""
    names: set[str] = set()
    for i, s in enumerate(wf.stages):
        if s.name in names:
            raise ValueError(f"stages[{i}].name: duplicate stage '{s.name}'")
        names.add(s.name)
    for i, s in enumerate(wf.stages):
        for p in s.after:
            if p not in names:
                raise ValueError(f"stages[{i}].after: stage '{s.name}' waits for unknown stage '{p}'; name one of {sorted(names)}")
            if p == s.name:
                raise ValueError(f"stages[{i}].after: stage '{s.name}' waits for itself")
    g = wf.graph()
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([e[0] for e in cycle] + [cycle[0][0]])
        raise ValueError(f"stages: cycle {path}; a workflow must be a DAG")
    entries = [n for n in g.nodes if g.in_degree(n) == 0]
    reach: set[str] = set(entries)
    for e in entries:
        reach |= nx.descendants(g, e)
    for s in wf.stages:
        if s.name not in reach:
            raise ValueError(f"stages: stage '{s.name}' is unreachable from the entry stages")


# ---------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: `source: field.path: message` for the first error (and a count of the rest)."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif first["type"] == "missing":
        msg = "required field is missing; add it"
    more = len(err.errors()) - 1
    tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {loc}: {msg}{tail}"


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_yaml(path: str | Path, *, env: dict[str, str] | None = None) -> Any:
    """Read a YAML file; with `env`, substitute `${VAR}` / `${VAR:-default}` first. One-line errors."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"{p}: file not found; check the path") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory; name a YAML file") from None
    except OSError as e:
        raise SpecError(f"{p}: cannot read: {e.strerror}") from None
    if env is not None:
        def sub(m: re.Match) -> str:
            if m.group(1) in env:
                return env[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise SpecError(f"{p}: ${{{m.group(1)}}} is not set; export it or write ${{{m.group(1)}:-default}}")
        text = _ENV_RE.sub(sub, text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{p}: YAML syntax error at {where}{problem}") from None


def parse(model: type[M], data: Any, source: str) -> M:
    """Validate `data` as `model`; raise SpecError with a one-line message naming `source`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Read and validate one YAML file as `model`."""
    return parse(model, read_yaml(path), str(path))
