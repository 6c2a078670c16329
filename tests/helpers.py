"""Builders for unit tests: small clusters, functions, workflows and a controller on a fake or sim backend."""

from __future__ import annotations

from gpufaas.platform.backends.fake import FakeBackend
from gpufaas.platform.backends.sim import SimBackend
from gpufaas.platform.clock import VirtualClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.specs import ClusterSpec, FunctionSpec, WorkflowSpec

A100 = {"name": "A100-80GB", "memory_mb": 81920, "price_per_hour_usd": 5.12, "share_units": 10}


def cluster(gpus: int = 2, nodes: int = 1, **net) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "gpu_types": [A100],
        "nodes": [{"name": f"node-{i}", "gpu_type": "A100-80GB", "gpus": gpus} for i in range(nodes)],
        **({"network": net} if net else {}),
    })


def function(name: str, model: str = "resnet50", **kw) -> FunctionSpec:
    spec = {"name": name, "model": model, "outputs": {"y": {"dtype": "float32", "shape": [1000]}}}
    spec.update(kw)
    return FunctionSpec.model_validate(spec)


def chain(name: str, fns: list[str], slo_ms: float = 200) -> WorkflowSpec:
    stages = [{"name": f"s{i}", "function": f, "after": [f"s{i - 1}"] if i else []} for i, f in enumerate(fns)]
    return WorkflowSpec.model_validate({"name": name, "slo_ms": slo_ms, "stages": stages})


def controller(policy, *, gpus: int = 2, nodes: int = 1, fake: bool = False, functions=(), workflows=(), **kw):
    """A controller on a VirtualClock with the given specs deployed; returns (ctl, clock, backend)."""
    clock = VirtualClock()
    backend = FakeBackend() if fake else SimBackend(clock)
    kw.setdefault("check_purity", True)
    ctl = Controller(cluster(gpus, nodes), Profiles.shipped(), policy, backend, clock, **kw)
    for f in functions:
        ctl.deploy_function(f)
    for w in workflows:
        ctl.deploy_workflow(w)
    return ctl, clock, backend
