"""Specs: validation errors name the field and what to change; DAG checks name the stage."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpufaas.platform.errors import SpecError
from gpufaas.platform.specs import FunctionSpec, WorkflowSpec, load_yaml, parse, read_yaml
from tests.helpers import cluster


def wf(stages, slo_ms=100):
    return {"name": "w", "slo_ms": slo_ms, "stages": stages}


def test_valid_diamond():
    w = parse(WorkflowSpec, wf([{"name": "a", "function": "f"}, {"name": "b", "function": "f", "after": ["a"]},
                               {"name": "c", "function": "f", "after": ["a"]}, {"name": "d", "function": "f", "after": ["b", "c"]}]), "x")
    g = w.graph()
    assert sorted(g.predecessors("d")) == ["b", "c"]


def test_cycle_is_named():
    with pytest.raises(SpecError, match=r"cycle .*b -> c -> b|cycle .*c -> b -> c"):
        parse(WorkflowSpec, wf([{"name": "a", "function": "f"}, {"name": "b", "function": "f", "after": ["a", "c"]},
                               {"name": "c", "function": "f", "after": ["b"]}]), "w.yaml")


def test_unknown_stage_is_named():
    with pytest.raises(SpecError, match=r"w.yaml: .*'b' waits for unknown stage 'zz'"):
        parse(WorkflowSpec, wf([{"name": "a", "function": "f"}, {"name": "b", "function": "f", "after": ["zz"]}]), "w.yaml")


def test_negative_slo():
    with pytest.raises(SpecError, match=r"w.yaml: slo_ms: .*greater than 0"):
        parse(WorkflowSpec, wf([{"name": "a", "function": "f"}], slo_ms=-5), "w.yaml")


def test_share_above_one():
    with pytest.raises(SpecError, match=r"f.yaml: shares.*share 1.5 is outside \(0, 1\]"):
        parse(FunctionSpec, {"name": "f", "model": "resnet50", "shares": [0.5, 1.5]}, "f.yaml")


def test_unknown_field_is_a_typo_error():
    with pytest.raises(SpecError, match=r"f.yaml: batchsizes: unknown field"):
        parse(FunctionSpec, {"name": "f", "model": "resnet50", "batchsizes": [1]}, "f.yaml")


def test_specs_are_frozen():
    f = parse(FunctionSpec, {"name": "f", "model": "resnet50"}, "x")
    with pytest.raises(ValidationError):
        f.name = "g"  # type: ignore[misc]


def test_unknown_gpu_type_in_cluster():
    from gpufaas.platform.specs import ClusterSpec
    with pytest.raises(SpecError, match=r"nodes\[0\].gpu_type: unknown GPU type 'H100'"):
        parse(ClusterSpec, {"gpu_types": [{"name": "A100", "memory_mb": 1, "price_per_hour_usd": 1}],
                            "nodes": [{"name": "n", "gpu_type": "H100", "gpus": 1}]}, "c.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nstages: [a, b\n")
    with pytest.raises(SpecError, match=r"bad.yaml: YAML syntax error at line \d+, column \d+"):
        read_yaml(p)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"nope.yaml: file not found"):
        load_yaml(tmp_path / "nope.yaml", FunctionSpec)


def test_env_substitution(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("a: ${X}\nb: ${Y:-dflt}\n")
    assert read_yaml(p, env={"X": "1"}) == {"a": 1, "b": "dflt"}
    with pytest.raises(SpecError, match=r"\$\{X\} is not set"):
        read_yaml(p, env={})


def test_function_share_must_match_gpu_units():
    from gpufaas.platform.profiles import Profiles
    from gpufaas.platform.runtime import FunctionRt
    spec = parse(FunctionSpec, {"name": "f", "model": "resnet50", "shares": [0.25, 1.0]}, "x")
    with pytest.raises(SpecError, match=r"shares: 0.25 is not a multiple of 1/10"):
        FunctionRt(spec, cluster(), Profiles.shipped(), 60)


def test_function_batch_outside_profile():
    """A declared batch the profile does not cover is dropped (the profiled ones stay); a function the
    profile covers nowhere is an error naming the profile's range."""
    from gpufaas.platform.profiles import Profiles
    from gpufaas.platform.runtime import FunctionRt
    spec = parse(FunctionSpec, {"name": "f", "model": "resnet50", "batch_sizes": [1, 512]}, "x")
    assert FunctionRt(spec, cluster(), Profiles.shipped(), 60).batch_sizes == (1,)
    spec = parse(FunctionSpec, {"name": "f", "model": "resnet50", "batch_sizes": [512]}, "x")
    with pytest.raises(SpecError, match="resnet50@A100-80GB"):
        FunctionRt(spec, cluster(), Profiles.shipped(), 60)
