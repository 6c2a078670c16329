"""Function bundles: a folder with `function.yaml` (a FunctionSpec) and `handler.py` (torch).

The handler contract: the module named by `FunctionSpec.handler` ("module:callable", default
"handler:build") defines `build(spec, device="cpu", small=False) -> torch.nn.Module`; the module's
forward takes the spec's inputs as batched keyword tensors and returns a dict holding every output of
the spec, batched. With `inputs_any_float: true` in function.yaml (the aggregator) the worker accepts
any non-empty set of float tensors, and `inputs` only describes the synthetic input. An optional
`weights.pt` in the bundle is loaded with `torch.load(weights_only=True)` (no pickle
code runs); without it the model keeps its random initialisation. Nothing is ever downloaded.

Who calls it: the gateway at deploy time (`validate_bundle`), the process backend (`load_spec`), the
worker (`import_handler`). `validate_bundle` runs the check in a subprocess (a fresh interpreter with
torch), so a handler that crashes, hangs or leaks cannot hurt the gateway; this module itself imports
no torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from gpufaas.platform.errors import UserError
from gpufaas.platform.specs import FunctionSpec, load_yaml

SPEC_FILE = "function.yaml"
WEIGHTS_FILE = "weights.pt"
CHECK_TIMEOUT_S = 120.0


class BundleError(UserError):
    """A bundle that cannot be deployed: missing files, a handler that fails to import or to build, a
    missing entry point, or outputs that do not match the spec. The message names the file and cause."""


def load_spec(bundle: str | Path) -> FunctionSpec:
    """The bundle's FunctionSpec (SpecError naming function.yaml and the field when invalid)."""
    d = Path(bundle)
    if not (d / SPEC_FILE).is_file():
        raise BundleError(f"{d}: no {SPEC_FILE}; a bundle folder holds {SPEC_FILE} and handler.py")
    return load_yaml(d / SPEC_FILE, FunctionSpec)


def handler_path(bundle: str | Path, spec: FunctionSpec) -> tuple[Path, str]:
    """The handler's file and entry-point name from `spec.handler` ('module:callable')."""
    mod, _, attr = spec.handler.partition(":")
    if not mod or not attr or not mod.replace(".", "").replace("_", "").isalnum():
        raise BundleError(f"{Path(bundle) / SPEC_FILE}: handler: '{spec.handler}' is not 'module:callable' (e.g. handler:build)")
    return Path(bundle) / (mod.replace(".", "/") + ".py"), attr


def import_handler(bundle: str | Path, spec: FunctionSpec) -> tuple[ModuleType, Any]:
    """Import the handler module from the bundle (not from sys.path) and return (module, entry point).

    Called by the worker only (the module imports torch). BundleError naming the file and the cause when
    the file is missing, raises on import, or lacks the callable."""
    path, attr = handler_path(bundle, spec)
    if not path.is_file():
        raise BundleError(f"{path}: handler file not found (function.yaml says handler: {spec.handler})")
    name = f"gpufaas_bundle_{spec.name.replace('-', '_').replace('.', '_')}"
    ispec = importlib.util.spec_from_file_location(name, path)
    assert ispec is not None and ispec.loader is not None
    module = importlib.util.module_from_spec(ispec)
    # NOTE: the bundle folder goes on sys.path so a handler may import its own helper modules.
    sys.path.insert(0, str(Path(bundle).resolve()))
    try:
        ispec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure refuses the bundle
        raise BundleError(f"{path}: fails to import: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BundleError(f"{path}: has no callable '{attr}' (function.yaml says handler: {spec.handler}); define def {attr}(spec, device='cpu', small=False)")
    return module, fn


_checked: dict[str, None] = {}


def _digest(bundle: Path, spec: FunctionSpec, execute: str) -> str:
    h = hashlib.sha256(spec.model_dump_json().encode() + execute.encode())
    for p in sorted(bundle.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(bundle)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def validate_bundle(path: str | Path, spec: FunctionSpec, execute: str = "emulated", *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Refuse a bad bundle at deploy time, never at its first invocation.

    Runs `python -m gpufaas.platform.worker --check` in a subprocess (torch at one thread, the reduced
    `small` model): the handler must import, have its entry point, build, and return outputs of the
    spec's names, shapes and dtypes for one synthetic batch item. The check is the same in both execution
    modes, because an emulated platform must accept exactly the bundles a real one accepts. Results are
    cached per (bundle contents, spec) in this process. Raises BundleError naming the file and the cause.
    Who calls it: the gateway's deploy route and `gpufaas deploy`; it changes nothing on disk.
    """
    d = Path(path)
    key = _digest(d, spec, execute)
    if key in _checked:
        return
    hfile, _ = handler_path(d, spec)  # a malformed handler field or a missing file fails fast, without a subprocess
    if not hfile.is_file():
        raise BundleError(f"{hfile}: handler file not found (function.yaml says handler: {spec.handler})")
    cmd = [sys.executable, "-m", "gpufaas.platform.worker", "--bundle", str(d), "--check", "--execute", execute,
           "--threads", "1", "--small"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    spec_file = None
    if not (d / SPEC_FILE).is_file():
        raise BundleError(f"{d}: no {SPEC_FILE}; a bundle folder holds {SPEC_FILE} and handler.py")
    if load_spec(d) != spec:
        # the deploy request may carry a spec that differs from the file (inline edits): check that one
        import tempfile

        fd, spec_file = tempfile.mkstemp(suffix=".json", prefix="gpufaas-spec-")
        with os.fdopen(fd, "w") as f:
            f.write(spec.model_dump_json())
        cmd += ["--spec-json", spec_file]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise BundleError(f"{handler_path(d, spec)[0]}: the bundle check did not finish within {timeout_s:g} s (handler hangs?)") from None
    finally:
        if spec_file:
            os.unlink(spec_file)
    verdict = _last_json(proc.stdout)
    if verdict is None or not verdict.get("ok"):
        why = (verdict or {}).get("error") or _tail(proc.stderr) or f"the check exited with code {proc.returncode}"
        raise BundleError(why)
    _checked[key] = None


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict):
            return v
    return None


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
