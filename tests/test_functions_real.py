"""The real path of every function in functions/ on CPU: the handler builds, accepts its declared input
schema and returns its declared output schema; workflows chain (each stage's outputs feed the next)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpufaas.platform import bundle
from gpufaas.platform.specs import WorkflowSpec, load_yaml
from gpufaas.platform.worker import NP_DTYPES, Runner
from tests.conftest import FUNCTIONS

NAMES = sorted(p.parent.name for p in FUNCTIONS.glob("*/handler.py"))
torch.set_num_threads(1)


def runner(name: str, small: bool = True) -> Runner:
    spec = bundle.load_spec(FUNCTIONS / name)
    module, build = bundle.import_handler(FUNCTIONS / name, spec)
    torch.manual_seed(0)
    return Runner(spec, "real", module=module, model=build(spec, device="cpu", small=small))


def check_outputs(r: Runner, outs: list) -> None:
    for out in outs:
        assert set(out) == set(r.spec.outputs)
        for k, t in r.spec.outputs.items():
            assert out[k].shape == tuple(t.shape), (r.spec.name, k)
            assert out[k].dtype == np.dtype(NP_DTYPES[t.dtype]), (r.spec.name, k)
            assert np.isfinite(out[k].astype(np.float64)).all()


def test_at_least_six_functions_and_three_workflows() -> None:
    assert len(NAMES) >= 6
    assert len(list((FUNCTIONS / "workflows").glob("*.yaml"))) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_real_path_small(name: str) -> None:
    r = runner(name)
    outs, errs = r.run([None, None, None])
    assert errs == [None, None, None]
    check_outputs(r, outs)
    # items differ, so (random-init) outputs differ: the model really ran on each input
    k = next(iter(r.spec.outputs))
    assert not np.array_equal(outs[0][k], outs[1][k])


@pytest.mark.parametrize("name", NAMES)
def test_real_path_full_size(name: str) -> None:
    """The full-size architecture (ResNet-50, MobileNetV2, ViT-B/16, BERT-base, ...) at batch 1."""
    r = runner(name, small=False)
    outs, errs = r.run([None])
    assert errs == [None]
    check_outputs(r, outs)


def test_resnet50_is_resnet50_sized() -> None:
    spec = bundle.load_spec(FUNCTIONS / "resnet50")
    _, build = bundle.import_handler(FUNCTIONS / "resnet50", spec)
    n = sum(p.numel() for p in build(spec).parameters())
    assert 25_000_000 < n < 26_000_000  # torchvision's resnet50 has 25.56 M


def test_bad_item_fails_alone() -> None:
    r = runner("resnet50")
    good = {"image": np.zeros((3, 224, 224), np.float16)}
    outs, errs = r.run([good, {"image": np.zeros((3, 224, 224), np.float32)}, "junk", {}])
    assert errs[0] is None and outs[0]["logits"].shape == (1000,)
    assert "expected float16[3, 224, 224], got float32[3, 224, 224]" in errs[1]
    assert "not a map of tensors" in errs[2]
    assert "input 'image' is missing" in errs[3] and "resnet50 expects {'image': float16[3, 224, 224]}" in errs[3]
    assert outs[1] is None and outs[2] is None and outs[3] is None


def test_aggregator_accepts_any_float_features() -> None:
    r = runner("aggregator")
    video = {"logits": np.ones(1000, np.float32), "attributes": np.ones(1000, np.float32), "scene": np.ones(1000, np.float32)}
    text = {"embedding": np.ones(768, np.float32)}
    outs, errs = r.run([video, text, {"tokens": np.ones(64, np.int64)}])
    assert errs[:2] == [None, None] and outs[0]["decision"].shape == (16,) and outs[1]["decision"].shape == (16,)
    assert "expects one or more float tensors" in errs[2]


@pytest.mark.parametrize("wf_name", ["image-classify", "video-analytics", "text-pipeline"])
def test_workflow_stages_chain(wf_name: str) -> None:
    """Run each workflow's stages in topological order in-process, merging fan-in outputs like the controller."""
    wf = load_yaml(FUNCTIONS / "workflows" / f"{wf_name}.yaml", WorkflowSpec)
    g = wf.graph()
    import networkx as nx

    outs: dict[str, dict] = {}
    for stage in nx.topological_sort(g):
        fn = g.nodes[stage]["function"]
        preds = list(g.predecessors(stage))
        item = None
        if preds:
            item = {}
            for p in preds:
                item.update(outs[p])
        o, e = runner(fn).run([item])
        assert e == [None], (stage, e)
        outs[stage] = o[0]
    assert outs
