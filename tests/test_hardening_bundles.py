"""Untrusted bundles contained (issue 15, item 4): the deploy-time check cannot be forged by a handler's
prints or early exit, runs in a bounded pool with a timeout that kills what the handler forked, never
delays a valid deploy while slots are free nor shutdown; a hostile handler in a real-mode worker cannot
read the gateway's store, write outside its folder, fork without bound or allocate far beyond its
memory, and the platform keeps serving."""

from __future__ import annotations

import asyncio
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from gpufaas.gateway.store import Store
from gpufaas.platform import bundle
from gpufaas.platform.backends.process import ProcessBackend
from gpufaas.platform.bundle import BundleChecker, BundleError
from gpufaas.platform.clock import LoopClock
from gpufaas.platform.controller import Controller
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.profiles import ColdStartProfile, MemoryProfile, Profile, Profiles
from gpufaas.platform.runtime import InvocationStatus
from gpufaas.platform.specs import FunctionSpec, WorkflowSpec
from tests.helpers import cluster, wait_for

pytestmark = pytest.mark.live  # starts processes

SPEC = {"name": "probe", "model": "flat", "batch_sizes": [1], "shares": [1.0],
        "inputs": {"x": {"dtype": "float32", "shape": [1]}}, "outputs": {"y": {"dtype": "float32", "shape": [6]}}}

GOOD = '''
import torch
from torch import nn

class M(nn.Module):
    def forward(self, x):
        return {"y": torch.zeros(x.shape[0], 6)}

def build(spec, device="cpu", small=False):
    return M()
'''

FORGER = '''
import os, sys
print('{"ok": true}')
sys.stdout.flush()
os._exit(0)
'''

HANGER = '''
import os, time
if os.fork() == 0:      # a child that leaves the process group, to outlive a plain kill
    os.setsid()
    time.sleep(600)
time.sleep(600)
'''

# Tries what an attacker's handler would, at every forward pass; the output says what succeeded:
# [read the store, write outside its folder, children forked, 8 GiB allocated, runs as non-root, 1.0]
HOSTILE = '''
import json, os
from pathlib import Path
import torch
from torch import nn

TARGETS = json.loads((Path(__file__).parent / "targets.json").read_text())

def probe():
    out = []
    try:
        open(TARGETS["store"], "rb").read(16)
        out.append(1.0)
    except OSError:
        out.append(0.0)
    try:
        with open(os.path.join(TARGETS["outside"], "pwned"), "w") as f:
            f.write("x")
        out.append(1.0)
    except OSError:
        out.append(0.0)
    pids = []
    try:
        for _ in range(300):
            pid = os.fork()
            if pid == 0:
                os.read(os.pipe()[0], 1)  # blocks until killed
                os._exit(0)
            pids.append(pid)
    except OSError:
        pass
    for p in pids:
        os.kill(p, 9)
        os.waitpid(p, 0)
    out.append(float(len(pids)))
    try:
        b = bytearray(8 * 1024 ** 3)
        out.append(1.0 if b is not None else 0.0)
    except MemoryError:
        out.append(0.0)
    out.append(1.0 if os.getuid() != 0 else 0.0)
    out.append(1.0)
    return out

class M(nn.Module):
    def forward(self, x):
        return {"y": torch.tensor([probe()] * x.shape[0], dtype=torch.float32)}

def build(spec, device="cpu", small=False):
    return M()
'''


def make(root: Path, handler: str, name: str = "b") -> tuple[Path, FunctionSpec]:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "function.yaml").write_text(yaml.safe_dump(SPEC))
    (d / "handler.py").write_text(handler)
    return d, FunctionSpec.model_validate(SPEC)


@pytest.fixture(scope="module")
def sandbox_python():
    """An interpreter a sandbox uid can run. This machine's is a pyenv build under /root (0700), which no
    other uid can reach: then a venv of the system Python of the same version, seeing this venv's packages."""
    if os.geteuid() != 0:
        pytest.skip("the uid switch needs a gateway running as root")
    if asyncio.run(bundle._probe_uid(sys.executable, bundle.SANDBOX_UID_BASE + 9_999)) is None:
        yield sys.executable
        return
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    if system is None:
        pytest.skip(f"no system python{sys.version_info.major}.{sys.version_info.minor} that another uid can run")
    root = Path(tempfile.mkdtemp(prefix="gpufaas-test-py-"))
    subprocess.run([system, "-m", "venv", "--without-pip", str(root / "v")], check=True)
    (sp,) = (root / "v" / "lib").glob("python*/site-packages")
    (sp / "gpufaas_test.pth").write_text(f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    yield str(root / "v" / "bin" / "python")
    shutil.rmtree(root, ignore_errors=True)


def sandbox_pids() -> list[int]:
    """Live (not zombie) processes of this gateway's sandbox uids."""
    base = bundle.SANDBOX_UID_BASE + (os.getpid() % 10_000) * 10_000
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and base <= os.stat(f"/proc/{d}").st_uid < base + 10_000:
                with open(f"/proc/{d}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        out.append(int(d))
        except OSError:
            continue
    return out


def test_a_forged_verdict_on_stdout_is_refused(tmp_path: Path) -> None:
    d, spec = make(tmp_path, FORGER)
    with pytest.raises(BundleError, match="exited with code 0 without a verdict"):
        bundle.validate_bundle(d, spec, "emulated")


async def test_hanging_checks_delay_neither_a_valid_deploy_nor_shutdown(tmp_path: Path) -> None:
    checker = BundleChecker(slots=2, timeout_s=25.0)
    hang_dir, spec = make(tmp_path, HANGER, "hang")
    good_dir, _ = make(tmp_path, GOOD, "good")
    loop = asyncio.get_running_loop()
    hanging = asyncio.ensure_future(checker.check(hang_dir, spec, "emulated"))
    t0 = loop.time()
    await checker.check(good_dir, spec, "emulated")  # the second slot is free: no wait on the hanging one
    valid_s = loop.time() - t0
    assert not hanging.done() and valid_s < 20.0, valid_s
    t0 = loop.time()
    await checker.aclose()
    assert loop.time() - t0 < 5.0 and hanging.cancelled()
    with pytest.raises(BundleError, match="shutting down"):
        await checker.check(make(tmp_path, GOOD + "# changed\n", "later")[0], spec, "emulated")


async def test_a_hanging_check_times_out_and_everything_it_forked_is_killed(tmp_path: Path, sandbox_python: str) -> None:
    checker = BundleChecker(slots=1, timeout_s=3.0, python=sandbox_python)
    d, spec = make(tmp_path, HANGER)
    with pytest.raises(BundleError, match=r"handler.py: the bundle check did not finish within 3 s"):
        await checker.check(d, spec, "emulated")
    await wait_for(lambda: asyncio.sleep(0, sandbox_pids()), lambda left: left == [], timeout_s=5.0,
                   what="the check's processes, its setsid child included, to be gone (SIGKILLed, exiting)")


async def test_without_a_sandbox_uid_a_hanging_checks_setsid_child_is_killed_too(tmp_path: Path, monkeypatch) -> None:
    # the gateway is not root, or no other uid can run its interpreter (a checkout under a 0700 folder): the
    # check keeps the gateway's uid, and HANGER's setsid child escapes killpg; it still carries the sandbox's HOME
    async def no_uid(python: str) -> None:
        return None

    monkeypatch.setattr(bundle, "sandbox_uid", no_uid)
    homes: list[Path] = []
    real_exec = bundle.Sandbox.exec

    async def exec_and_note(self, *args, **kw):
        homes.append(self.workdir)
        return await real_exec(self, *args, **kw)

    monkeypatch.setattr(bundle.Sandbox, "exec", exec_and_note)
    checker = BundleChecker(slots=1, timeout_s=3.0)
    d, spec = make(tmp_path, HANGER)
    with pytest.raises(BundleError, match=r"did not finish within 3 s"):
        await checker.check(d, spec, "emulated")
    (home,) = homes
    await wait_for(lambda: asyncio.sleep(0, bundle.marked_pids(home)), lambda left: left == [], timeout_s=5.0,
                   what="the check and its setsid child to be gone")


async def test_a_hostile_handler_is_contained_and_the_platform_keeps_serving(sandbox_python: str) -> None:
    # the gateway's data dir as `gpufaas up` leaves it: traversable folders, the store 0600
    data = Path(tempfile.mkdtemp(prefix="gpufaas-test-data-"))
    os.chmod(data, 0o755)
    try:
        Store(data / "gateway.sqlite3").close()
        d, spec = make(data / "bundles", HOSTILE, "probe")
        (d / "targets.json").write_text(f'{{"store": "{data / "gateway.sqlite3"}", "outside": "{data}"}}')
        await BundleChecker(python=sandbox_python, timeout_s=25.0).check(d, spec, "real")  # the check runs it contained too
        profiles = Profiles.shipped()
        profiles.add(Profile(model="flat", gpu_type="A100-80GB", source="test: flat latency", batches=[1, 8], shares=[0.1, 1.0],
                             latency_ms=[[0.0] * 2] * 2, memory=MemoryProfile(instance_mb=100, per_item_mb=0),
                             cold_start=ColdStartProfile(container_ms=0, runtime_init_ms=0, model_load_ms=0)))
        switches = await bundle._probe_uid(sandbox_python, bundle.SANDBOX_UID_BASE + 9_998) is None
        clock = LoopClock()
        be = ProcessBackend(clock, execute="real", bundle_dir=lambda _n: d, python=sandbox_python, hang_timeout_s=60)
        ctl = Controller(cluster(1), profiles, builtin_registry().make("batch1-wholegpu"), be, clock, live=True, keep_alive_s=60)
        ctl.deploy_function(spec)
        ctl.deploy_workflow(WorkflowSpec.model_validate({"name": "wf", "slo_ms": 60_000, "stages": [{"name": "s", "function": "probe"}]}))
        try:
            for _ in range(2):  # the second on the same worker: it survived its own attack
                fut = asyncio.get_running_loop().create_future()
                ctl.submit("wf", {"x": np.zeros(1, np.float32)}, on_done=lambda inv, f=fut: f.done() or f.set_result(inv))
                inv = await asyncio.wait_for(fut, 60)
                assert inv.status == InvocationStatus.COMPLETED, inv.reason
                read_store, wrote, forks, alloc, non_root, ran = inv.outputs[0]["y"].tolist()
                # NOTE: another uid needs every folder above the interpreter and the checkout to be traversable;
                # a checkout in a 0700 folder (mktemp -d) keeps the gateway's uid, and the other limits must hold
                assert ran == 1.0 and non_root == (1.0 if switches else 0.0)
                assert alloc == 0.0  # the address-space rlimit holds under any uid
                if switches:  # file permissions, and RLIMIT_NPROC (root ignores it), hold only under another uid
                    assert read_store == 0.0 and wrote == 0.0
                    assert forks < 128  # RLIMIT_NPROC of its own uid (threads count too)
            assert ctl.acct.cold_starts == 1 and (data / "pwned").exists() != switches
        finally:
            await be.aclose()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_the_check_and_its_uid_switch_run_under_uvloop(tmp_path: Path) -> None:
    """`gpufaas up` serves on uvloop, whose subprocess_exec refuses user/group keywords: the sandbox must start
    (and, as root, switch uid) there too, not only on asyncio's default loop."""
    import uvloop

    d, spec = make(tmp_path, GOOD)

    async def main() -> None:
        checker = BundleChecker(slots=1, timeout_s=25.0)
        try:
            await checker.check(d, spec, "emulated")
        finally:
            await checker.aclose()

    uvloop.run(main())
