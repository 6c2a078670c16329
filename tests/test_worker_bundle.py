"""Deploy-time bundle checks: a handler that fails to import, lacks its entry point, or returns the wrong
output shape is refused by `validate_bundle` with the file and the cause (in a subprocess)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpufaas.platform.errors import SpecError

from gpufaas.platform import bundle
from gpufaas.platform.bundle import BundleError, validate_bundle
from tests.conftest import FUNCTIONS

pytestmark = pytest.mark.live  # starts processes (gateway, workers, HTTP servers): not in `make test-fast`

GOOD = '''
import torch
from torch import nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
    def forward(self, x):
        return {"y": self.fc(x.float())}

def build(spec, device="cpu", small=False):
    return M()
'''

SPEC = '''name: tiny
model: aggregator
inputs: {x: {dtype: float32, shape: [8]}}
outputs: {y: {dtype: float32, shape: [4]}}
'''


def make(tmp_path: Path, handler: str, spec: str = SPEC) -> Path:
    d = tmp_path / "b"
    d.mkdir(exist_ok=True)
    (d / "function.yaml").write_text(spec)
    (d / "handler.py").write_text(handler)
    return d


def test_good_bundle_passes(tmp_path: Path) -> None:
    d = make(tmp_path, GOOD)
    validate_bundle(d, bundle.load_spec(d), "emulated")


@pytest.mark.parametrize("handler, match", [
    ("import torch\nraise RuntimeError('boom at import')\n", r"handler.py: fails to import: RuntimeError: boom at import"),
    ("def other(spec, device='cpu', small=False):\n    return None\n", r"handler.py: has no callable 'build'"),
    (GOOD.replace("nn.Linear(8, 4)", "nn.Linear(8, 5)"), r"handler output 'y' has shape \[1, 5\], the spec declares \[4\]"),
    (GOOD.replace("return M()", "raise ValueError('no model')"), r"build\(\) raised ValueError: no model"),
])
def test_bad_bundles_are_refused(tmp_path: Path, handler: str, match: str) -> None:
    d = make(tmp_path, handler)
    with pytest.raises(BundleError, match=match) as ei:
        validate_bundle(d, bundle.load_spec(d), "real")
    assert str(d / "handler.py") in str(ei.value) and "\n" not in str(ei.value)


def test_missing_handler_file_and_bad_handler_field(tmp_path: Path) -> None:
    d = make(tmp_path, GOOD)
    (d / "handler.py").unlink()
    with pytest.raises(BundleError, match="handler.py: handler file not found"):
        validate_bundle(d, bundle.load_spec(d))
    d2 = make(tmp_path, GOOD, SPEC + "handler: 'nocolon'\n")
    with pytest.raises(SpecError, match="function.yaml: handler: 'nocolon' is not 'module:callable'"):
        bundle.load_spec(d2)


def test_spec_passed_at_deploy_is_the_one_checked(tmp_path: Path) -> None:
    """The gateway may deploy a spec that differs from the bundle's file: the check uses the deployed one."""
    d = make(tmp_path, GOOD)
    spec = bundle.load_spec(d).model_copy(update={"outputs": {"y": bundle.load_spec(d).outputs["y"].model_copy(update={"shape": [3]})}})
    with pytest.raises(BundleError, match=r"shape \[1, 4\], the spec declares \[3\]"):
        validate_bundle(d, spec)


def test_shipped_bundle_passes(tmp_path: Path) -> None:
    d = tmp_path / "resnet50"
    shutil.copytree(FUNCTIONS / "resnet50", d)
    validate_bundle(d, bundle.load_spec(d), "emulated")
