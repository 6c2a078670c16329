"""Specs users write: functions, workflows, GPU types and clusters (pydantic v2, frozen, extra=forbid).

Who uses them: the scenario loader, the gateway's deploy routes and the CLI validate input with these
models; the controller compiles them once into plain runtime objects (`runtime.py`) and never touches
pydantic on the hot path. `load_yaml()` turns a validation failure into a `SpecError` with one line
per error, each naming the file, the field path and what to change.

Input limits live here, once, as named constants with the reason for each figure: names (`NAME_RE`,
the one pattern every function, workflow and stage name and every reference to one must match),
stages and `after` entries per workflow, tensor shapes, bundle files, and durations (through
`units.MAX_DURATION_S`, so that every float that becomes integer nanoseconds fits the clock). Every
float in a spec must be finite (`Spec`: NaN and infinities are refused).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpufaas.platform.errors import SpecError
from gpufaas.platform.units import MAX_DURATION_MS, MAX_DURATION_S

if TYPE_CHECKING:
    import networkx as nx

# ---------------------------------------------------------------- limits

# NOTE: a name becomes a folder (`<data-dir>/bundles/.staging-<tenant>~<name>`), a Prometheus label value
# and a key in the store. 64 characters (the DNS label length, which Kubernetes uses for the same kind of
# names) plus a 32-character tenant and the 9-character prefix stay far below the 255-byte limit of a
# file name on Linux file systems, in any encoding (the pattern is ASCII only).
MAX_NAME_LEN = 64
# One pattern for every name that enters (function, workflow and stage names, `stage.function`, `after`):
# lower-case ASCII letters, digits, '-', '_', '.', starting and ending with a letter or digit. No '/',
# so a name is never a path and `tenant/name` (gateway.tenants.qualify) cannot collide; no '..'.
NAME_RE = rf"^[a-z0-9]([a-z0-9_.-]{{0,{MAX_NAME_LEN - 2}}}[a-z0-9])?$"
NAME_RULE = f"1-{MAX_NAME_LEN} lower-case letters, digits, '-', '_', '.', starting and ending with a letter or digit"
Name = Annotated[str, Field(pattern=NAME_RE, description=f"name: {NAME_RULE}")]

# NOTE: stages per workflow. What bounds it is the planning the scheduler does per workflow on the event
# loop: ESG's first plan of a workflow (A*-search over all its stages, `esg_plan`) took, on the 2-core
# machine this was measured on (tests/helpers.controller, 8 A100s, preprocess and resnet50 stages, chain,
# ladder and fan-out shapes), 15-17 ms at 16 stages, 31-35 ms at 32, 64-97 ms at 64 and 150-196 ms at 128
# (`Controller.deploy_workflow` itself stays under 1 ms). 32 keeps one plan under the 50 ms that a
# health check or an invocation may wait for the loop; the largest shipped workflow has 6 stages.
MAX_STAGES = 32
# A stage waits for distinct other stages of its workflow, so it can name at most all the others.
MAX_AFTER = MAX_STAGES - 1
# numpy's own limit on array dimensions is 64 (NPY_MAXDIMS); no DNN input needs more than a handful,
# and a short list keeps the product below (computed per item) cheap.
MAX_TENSOR_DIMS = 32
# One item of a tensor must fit in one wire frame to a worker (`wire.MAX_FRAME_BYTES`, 1 GiB); so must
# each dim (a zero elsewhere in the shape would otherwise let any integer through, past int64).
MAX_ITEM_BYTES = 1 << 30
# A stage takes and returns a handful of named tensors (the shipped ones: 1-3); the bound keeps the per-item
# byte sums and the names echoed in error messages small.
MAX_TENSORS = 64
TensorName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LEN)]
# NOTE: a batch is checked against its function's profile at deploy (the shipped ones measure up to 128);
# this bound only keeps the number a small int on every path (msgpack, numpy, SQLite), 32x above that.
MAX_BATCH = 4096
# Bundles carry code, not weights: the shipped handlers are under 10 KB each. The per-file limit is the
# CLI's (`gpufaas deploy` refuses larger files before sending); the total is half the gateway's default
# request-body limit (16 MB), which leaves room for JSON's escaping of the text.
MAX_BUNDLE_FILES = 64
MAX_BUNDLE_FILE_BYTES = 1 << 20
MAX_BUNDLE_BYTES = 8 << 20
# A bundle path's components become file names (Linux NAME_MAX: 255 bytes) under the bundle folder; the
# whole relative path is bounded so that it stays far below PATH_MAX (4096 bytes) under any data dir.
MAX_PATH_COMPONENT_BYTES = 255
MAX_BUNDLE_PATH_BYTES = 1024


class Spec(BaseModel):
    """Base of every spec: immutable, unknown fields rejected (catches typos in YAML), floats finite
    (NaN and infinities are refused with the field named: no spec has a use for them)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


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

    # NOTE: at >= 0.001 Gbit/s (1 Mbit/s) a 1 GiB item (MAX_ITEM_BYTES) moves in under 9,000 s: its transfer
    # time in integer ns stays far inside the clock's range (units.MAX_DURATION_S).
    host_gbps: float = Field(100.0, ge=1e-3, le=1e6, description="GPU-to-GPU bandwidth on one node (PCIe/NVLink via host), Gbit/s")
    network_gbps: float = Field(25.0, ge=1e-3, le=1e6, description="node-to-node bandwidth, Gbit/s")
    network_latency_us: float = Field(50.0, ge=0, le=1e6, description="one-way latency of a cross-node transfer, microseconds (<= 1 s)")


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
    shape: list[Annotated[int, Field(ge=0, le=MAX_ITEM_BYTES)]] = Field(max_length=MAX_TENSOR_DIMS,
                                                                        description="shape of one item, without the batch dimension")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype '{v}'; use one of {sorted(DTYPE_BYTES)}")
        return v

    @model_validator(mode="after")
    def _size(self) -> "TensorSpec":
        if self.nbytes > MAX_ITEM_BYTES:
            raise ValueError(f"shape {self.shape} of {self.dtype} is {self.nbytes} bytes per item; one item holds at most "
                             f"{MAX_ITEM_BYTES} (1 GiB, a wire frame)")
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of one item."""
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}
# 'module:callable', the module a dotted path of Python identifiers inside the bundle (never a file path)
HANDLER_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class FunctionSpec(Spec):
    """One DNN stage: what it runs, which configurations it accepts, and which profile times it."""

    name: Name = Field(description="function name, unique per tenant")
    model: str = Field(max_length=MAX_NAME_LEN, description="profile name that times this function (see platform/profile_tables/)")
    handler: str = Field("handler:build", pattern=HANDLER_RE, max_length=200,
                         description="'module:callable' in the bundle that builds the torch model (module: dotted Python names)")
    description: str = Field("", description="one line for humans")
    batch_sizes: list[Annotated[int, Field(le=MAX_BATCH)]] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32], min_length=1,
                                                                   description=f"batch sizes the function accepts (1-{MAX_BATCH})")
    shares: list[float] = Field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], min_length=1, description="GPU shares (fractions of one GPU) the function accepts")
    inputs: dict[TensorName, TensorSpec] = Field(default_factory=dict, max_length=MAX_TENSORS, description="input tensors per item")
    outputs: dict[TensorName, TensorSpec] = Field(default_factory=dict, max_length=MAX_TENSORS, description="output tensors per item")
    keep_alive_s: float | None = Field(None, ge=0, le=MAX_DURATION_S,
                                       description=f"idle time before an instance is stopped, <= {MAX_DURATION_S} s (a year); 0 = as soon as it is idle "
                                                   "and the scheduler has no work for it; None = the platform default")
    inputs_any_float: bool = Field(False, description="accept any non-empty set of float tensors per item (a fan-in head fed by "
                                   "different upstreams); `inputs` then only describes the synthetic input")
    tenant: str = Field("default", description="owning tenant")
    min_instances: int = Field(0, ge=0, le=MAX_BATCH, description="instances kept live whatever the load (started at deploy, "
                               "never expired or evicted below this; a deployment whose min_instances, with the other "
                               "functions', would take a GPU type's every unit or the room of a function that keeps "
                               "none is refused)")
    max_instances: int | None = Field(None, ge=1, le=MAX_BATCH, description="most live instances at once (a Start above it is "
                                      "refused); None = no limit")

    @model_validator(mode="after")
    def _instance_bounds(self) -> "FunctionSpec":
        if self.max_instances is not None and self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) is above max_instances ({self.max_instances}); "
                             f"lower min_instances or raise max_instances")
        return self

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
    def handler_file(self) -> str:
        """The bundle-relative file of the handler module ('handler:build' -> 'handler.py', 'pkg.mod:f' -> 'pkg/mod.py')."""
        return self.handler.partition(":")[0].replace(".", "/") + ".py"

    @property
    def output_bytes_per_item(self) -> int:
        """Bytes one item's output occupies, for inter-stage transfer time."""
        return sum(t.nbytes for t in self.outputs.values())


# ---------------------------------------------------------------- workflows


class StageSpec(Spec):
    """One node of a workflow DAG."""

    name: Name = Field(description="stage name, unique in the workflow")
    function: Name = Field(description="name of the function this stage runs")
    after: list[Name] = Field(default_factory=list, max_length=MAX_AFTER, description="stages that must finish first (fan-in waits for all)")


class WorkflowSpec(Spec):
    """A DAG of stages with one end-to-end SLO. Validated: no cycles, no unknown or unreachable stages."""

    name: Name = Field(description="workflow name")
    slo_ms: float = Field(gt=0, le=MAX_DURATION_MS, description=f"end-to-end latency SLO in milliseconds (> 0, <= {MAX_DURATION_MS:.0f}, a year)")
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES,
                                    description=f"the stages (at most {MAX_STAGES}); entry stages have no 'after'")
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
        # NOTE: networkx is imported where a workflow is built, not with this module: every worker process
        # imports the specs (its FunctionSpec) and never a workflow, and networkx was a quarter of an emulated
        # worker's start-up CPU (about 0.2 of 0.8 s on the 2-core development machine)
        import networkx as nx

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
        if len(set(s.after)) != len(s.after):
            dup = sorted({p for p in s.after if s.after.count(p) > 1})
            raise ValueError(f"stages[{i}].after: stage '{s.name}' names {dup} more than once; name each stage once")
        for p in s.after:
            if p not in names:
                raise ValueError(f"stages[{i}].after: stage '{s.name}' waits for unknown stage '{p}'; name one of {sorted(names)}")
            if p == s.name:
                raise ValueError(f"stages[{i}].after: stage '{s.name}' waits for itself")
    import networkx as nx

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
    """Every error, one per line: `source: field.path: message` (a single error is a single line).

    Who calls it: `parse()` (so every spec, scenario and stack loader), `gpufaas up` for its flags. Pure.
    NOTE: each line repeats `source` so that every line stands alone (grep, editors' jump-to-error)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required field is missing; add it"
        elif e["type"] == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == NAME_RE:
            msg = f"{str(e['input'])[:80]!r} is not a valid name; use {NAME_RULE}"
        elif e["type"] == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == HANDLER_RE:
            msg = f"{str(e['input'])[:80]!r} is not 'module:callable' (e.g. handler:build)"
        line = f"{source}: {loc}: {msg}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


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
    except RecursionError:
        raise SpecError(f"{p}: YAML nested too deeply; a manifest is a few levels of mappings and lists") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{p}: YAML syntax error at {where}{problem}") from None


def parse(model: type[M], data: Any, source: str) -> M:
    """Validate `data` as `model`; raise SpecError listing every error, one line each, naming `source`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Read and validate one YAML file as `model`."""
    return parse(model, read_yaml(path), str(path))
