"""Function bundles: a folder with `function.yaml` (a FunctionSpec) and `handler.py` (torch).

The handler contract: the module named by `FunctionSpec.handler` ("module:callable", default
"handler:build") defines `build(spec, device="cpu", small=False) -> torch.nn.Module`; the module's
forward takes the spec's inputs as batched keyword tensors and returns a dict holding every output of
the spec, batched. With `inputs_any_float: true` in function.yaml (the aggregator) the worker accepts
any non-empty set of float tensors, and `inputs` only describes the synthetic input. An optional
`weights.pt` in the bundle is loaded with `torch.load(weights_only=True)` (no pickle
code runs); without it the model keeps its random initialisation. Nothing is ever downloaded.

Who calls it: the gateway at deploy time (`BundleChecker.check`), `validate_bundle` (the same check,
blocking, for tests and scripts), the process backend (`load_spec`, `Sandbox`), the worker
(`import_handler`). The check runs in a subprocess (a fresh interpreter with torch) inside a `Sandbox`,
so a handler that crashes, hangs, leaks or snoops cannot hurt the gateway; this module imports no torch.

Containment (`Sandbox`): bundle code is untrusted. Every process that runs it (the deploy-time check and
each process-backend worker) gets rlimits (address space, open files, processes, CPU time for the check),
`no_new_privs`, a private working dir as its cwd, HOME and TMPDIR, an environment cut to an allow-list,
and, when the gateway runs as root, its own unprivileged uid/gid (one per sandbox, no supplementary
groups): it reads its bundle copy and nothing of the gateway's data dir (0700/0600 files of root).
"""

from __future__ import annotations

import asyncio
import functools
import ctypes
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gpufaas.platform.errors import UserError
from gpufaas.platform.spawn import Child, Spawned, spawn
from gpufaas.platform.specs import FunctionSpec, load_yaml

SPEC_FILE = "function.yaml"
WEIGHTS_FILE = "weights.pt"
CHECK_TIMEOUT_S = 30.0  # the deploy-time check's wall-clock limit (its process group is killed past it)
CHECK_RESULT_FD_ENV = "GPUFAAS_CHECK_FD"  # the check's private result pipe (worker.py `check`)
MAX_VERDICT_BYTES = 60_000  # below a pipe's 64 KiB buffer: the verdict never blocks its writer

log = logging.getLogger("gpufaas.bundle")


class BundleError(UserError):
    """A bundle that cannot be deployed: missing files, a handler that fails to import or to build, a
    missing entry point, or outputs that do not match the spec. The message names the file and cause."""


def require_spec_file(d: Path) -> None:
    """BundleError unless folder `d` holds function.yaml: the one wording of that error (deploy check, load,
    the process backend's bundle copy)."""
    if not (d / SPEC_FILE).is_file():
        raise BundleError(f"{d}: no {SPEC_FILE}; a bundle folder holds {SPEC_FILE} and handler.py")


def load_spec(bundle: str | Path) -> FunctionSpec:
    """The bundle's FunctionSpec (SpecError naming function.yaml and the field when invalid)."""
    d = Path(bundle)
    require_spec_file(d)
    return load_yaml(d / SPEC_FILE, FunctionSpec)


def handler_path(bundle: str | Path, spec: FunctionSpec) -> tuple[Path, str]:
    """The handler's file and entry-point name from `spec.handler` ('module:callable', checked by the spec)."""
    return Path(bundle) / spec.handler_file, spec.handler.partition(":")[2]


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


# -------------------------------------------------------------------- containment

SANDBOX_UID_BASE = 1_600_000_000  # far above any real account; one uid per sandbox (see Sandbox.uid)
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
             "NVIDIA_VISIBLE_DEVICES", "CUDA_HOME")
_uids = itertools.count()
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


def _is_root() -> bool:
    return os.geteuid() == 0


def next_sandbox_uid() -> int | None:
    """A fresh uid for one sandbox when the gateway runs as root (None otherwise: nothing to switch to).

    NOTE: one uid per sandbox, not one shared `nobody`: workers of different tenants then cannot signal
    or ptrace each other, RLIMIT_NPROC (counted per uid) caps each sandbox alone, and `kill_uid` can end
    whatever a sandbox forked (also a process that left its group with setsid) without touching anything
    else. The range is derived from the gateway's pid, so two gateways on one host do not share uids."""
    if not _is_root():
        return None
    return SANDBOX_UID_BASE + (os.getpid() % 10_000) * 10_000 + next(_uids) % 10_000


_uid_probe: dict[str, str | None] = {}
_uid_probing: dict[str, asyncio.Future[str | None]] = {}  # python -> the probe in flight (`sandbox_uid`)


async def sandbox_uid(python: str) -> int | None:
    """A fresh sandbox uid (`next_sandbox_uid`) if one can run `python -m gpufaas.platform.worker` here, else
    None: the sandbox then keeps the gateway's uid (its other limits still apply) and a warning, logged once
    per interpreter, says why and what to change. Who calls it: `BundleChecker` and the process backend.

    NOTE: probed by running it (cached per interpreter), because whether another uid can reach the
    interpreter, its standard library and the installed packages depends on every folder above them (a
    pyenv Python under /root, mode 0700, cannot be run by anyone else)."""
    uid = next_sandbox_uid()
    if uid is None:
        return None
    if python not in _uid_probe:
        # NOTE: one probe however many callers ask at once (instances starting together): they await its task
        probing = _uid_probing.get(python)
        if probing is None or probing.get_loop() is not asyncio.get_running_loop():
            probing = _uid_probing[python] = asyncio.ensure_future(_probe_uid(python, uid))
        why = await asyncio.shield(probing)
        if python not in _uid_probe:
            _uid_probe[python] = why
            if why is not None:
                log.warning("bundle code runs as the gateway's uid, not a sandbox uid: uid %d cannot run %s (%s); make the "
                            "interpreter and its packages readable by other users, e.g. install Python outside /root",
                            uid, python, why)
    return uid if _uid_probe[python] is None else None


async def _probe_uid(python: str, uid: int) -> str | None:
    try:
        p = await asyncio.create_subprocess_exec(python, "-c", "import gpufaas.platform.worker", cwd="/",
                                                 preexec_fn=functools.partial(become, uid), env={k: v for k, v in os.environ.items() if k in _ENV_KEEP},
                                                 stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        return str(e)
    _, err = await p.communicate()
    if p.returncode == 0:
        return None
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {p.returncode}"


@dataclass(frozen=True)
class Sandbox:
    """How one process that runs bundle code is contained (see the module docstring).

    Who builds it: `BundleChecker` (per check) and the process backend (per instance). `popen_kwargs()`
    goes to `asyncio.create_subprocess_exec`; `prepare()` makes its private folder first. Nothing here
    isolates the network or the file system beyond permissions: /tmp and world-readable files stay
    readable (README "Failure behaviour")."""

    workdir: Path  # the private working dir (cwd, HOME, TMPDIR); created by prepare(), owned by `uid`
    address_space_mb: int | None = None  # RLIMIT_AS (None: none, e.g. CUDA, which reserves far more than it uses)
    open_files: int = 256  # RLIMIT_NOFILE
    processes: int = 128  # RLIMIT_NPROC: processes and threads of the sandbox's uid (not enforced for root)
    cpu_s: int | None = None  # RLIMIT_CPU (None for long-lived workers)
    file_mb: int = 256  # RLIMIT_FSIZE: the largest file it may write (its stderr log included)
    uid: int | None = None  # switch to this uid and gid (the gateway must be root); None: stay

    def prepare(self) -> None:
        """Create the private working dir, owned by the sandbox's uid, mode 0700."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        if self.uid is not None:
            os.chown(self.workdir, self.uid, self.uid)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """The sandbox's environment: an allow-list of the gateway's (no keys or secrets pass), plus `extra`."""
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        env.update(HOME=str(self.workdir), TMPDIR=str(self.workdir), PYTHONDONTWRITEBYTECODE="1", **extra)
        return env

    def _apply(self) -> None:
        """In the child, after fork, before exec: the rlimits, no_new_privs, then the switch to the sandbox uid."""
        limits = [(resource.RLIMIT_NOFILE, self.open_files), (resource.RLIMIT_CORE, 0),
                  (resource.RLIMIT_FSIZE, self.file_mb * 1024 * 1024)]
        if self.uid is not None:
            limits.append((resource.RLIMIT_NPROC, self.processes))
        if self.address_space_mb is not None:
            limits.append((resource.RLIMIT_AS, self.address_space_mb * 1024 * 1024))
        if self.cpu_s is not None:
            limits.append((resource.RLIMIT_CPU, self.cpu_s))
        for which, n in limits:
            resource.setrlimit(which, (n, n))
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self.uid is not None:
            become(self.uid)

    @property
    def stderr_path(self) -> Path:
        """Where its stderr goes (beside the working dir, written through the fd the gateway opened)."""
        return self.workdir.with_name(self.workdir.name + ".stderr")

    def stderr_tail(self) -> str:
        """The last non-empty line of its stderr ('' if none), at most 2,000 characters."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][:2000] if lines else ""

    async def exec(self, argv: list[str], env: dict[str, str], *, stdin: int = asyncio.subprocess.DEVNULL,
                   pass_fds: tuple[int, ...] = ()) -> asyncio.subprocess.Process:
        """Start `argv` in the sandbox: its own session (process group), cwd, uid/gid, rlimits and
        no_new_privs; stdout discarded, stderr to `stderr_path`. OSError when it cannot start. Who calls it:
        `BundleChecker` (a stdin pipe, once per deploy; a worker starts through `spawn`, off the loop).
        NOTE: no pipes for stdout/stderr: a process the handler forked could hold them open, and asyncio's
        `Process.wait()` waits for its pipes to close as well as for the process to exit."""
        with open(self.stderr_path, "wb") as err:
            return await asyncio.create_subprocess_exec(*argv, env=env, stdin=stdin, stdout=asyncio.subprocess.DEVNULL, stderr=err,
                                                        pass_fds=pass_fds, start_new_session=True, cwd=str(self.workdir),
                                                        preexec_fn=self._apply)

    async def spawn(self, argv: list[str], env: dict[str, str]) -> Spawned:
        """`exec` for a long-lived process (a worker), started off the event loop (`platform.spawn`): stdin
        from /dev/null, no pipes. OSError when it cannot start."""
        with open(self.stderr_path, "wb") as err:
            return await spawn(argv, env=env, cwd=str(self.workdir), stderr=err, preexec_fn=self._apply)


def become(uid: int) -> None:
    """In a child before exec: drop every group and switch to `uid` (gid = uid), for good.
    NOTE: done here rather than with create_subprocess_exec's user/group/extra_groups, which uvloop (the
    gateway's loop under `gpufaas up`) does not accept."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def share_read_only(src: Path, dst: Path) -> None:
    """Copy a bundle folder to `dst`, readable (not writable) by everyone: what a sandbox's uid may read.
    NOTE: a copy, not permissions on the data dir: the data dir (store, admin key, other bundles) stays 0700."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    for root, dirs, files in os.walk(dst):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def open_dir(path: Path) -> Path:
    """Make `path` traversable by a sandbox (0711: enter, not list) and return it."""
    os.chmod(path, 0o711)
    return path


async def kill_sandbox(proc: Child, sandbox: Sandbox) -> None:
    """SIGKILL the sandboxed process's group and, under its own uid, every process of that uid; reap it.
    Who calls it: `BundleChecker` (timeout, shutdown, after each check) and the process backend (a worker ended)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if sandbox.uid is not None:
        await kill_uid(sandbox.uid)
    else:
        # NOTE: without a uid of its own (the gateway is not root, or no other uid can run the interpreter), a
        # child that called setsid escapes killpg; it still carries the sandbox's HOME, which nothing outside
        # the sandbox has, so it is found by that (a handler that rewrote its own environment is not)
        for pid in await asyncio.to_thread(marked_pids, sandbox.workdir):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    await proc.wait()


def marked_pids(workdir: Path) -> list[int]:
    """Live processes whose environment holds HOME=`workdir` (a sandbox's private folder, `Sandbox.env`), from
    /proc (those this process may read: its own uid's, or all as root). Who calls it: `kill_sandbox`, tests."""
    entry = b"\0HOME=" + str(workdir).encode() + b"\0"
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if entry in b"\0" + f.read():
                    out.append(int(d))
        except OSError:
            pass
    return out


async def kill_uid(uid: int) -> None:
    """Kill every process of sandbox uid `uid` (kill(-1) run as that uid: one atomic sweep, a fork bomb included)."""
    if uid < SANDBOX_UID_BASE:
        raise ValueError(f"uid {uid} is not a sandbox uid")
    p = await asyncio.create_subprocess_exec("kill", "-KILL", "-1", preexec_fn=functools.partial(become, uid),
                                             stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await p.wait()


# -------------------------------------------------------------------- the deploy-time check

_checked: dict[str, None] = {}


def _digest(bundle: Path, spec: FunctionSpec, execute: str) -> str:
    h = hashlib.sha256(spec.model_dump_json().encode() + execute.encode())
    for p in sorted(bundle.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(bundle)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def default_check_slots() -> int:
    """How many bundle checks run at once: one per CPU (a check is one torch import and build), 2 to 8."""
    return min(8, max(2, os.cpu_count() or 2))


class BundleChecker:
    """The deploy-time bundle check, in a bounded pool of its own processes (not the default executor).

    Who calls it: the gateway's `Platform.deploy_function` (`check`) and its shutdown (`aclose`).
    Each check is one sandboxed `python -m gpufaas.platform.worker --check` process; at most `slots` run
    at once, each for at most `timeout_s` (then its process group and uid are killed), so hanging bundles
    delay a valid deploy only when they fill every slot, and `aclose()` kills checks in flight at once.

    The verdict comes through a channel the handler cannot forge by printing or exiting early: a private
    pipe whose fd the check takes from the environment before the handler is imported, carrying a nonce
    that the check reads from its stdin before then too; the exit status must be 0 as well. The handler's
    stdout and stderr are read (bounded) only for the error message.
    NOTE: the handler runs in the check's process, so one that searched the interpreter's memory for the
    nonce could still forge a pass; what protects the host is the sandbox, not the verdict.
    """

    def __init__(self, *, slots: int | None = None, timeout_s: float = CHECK_TIMEOUT_S, python: str | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.slots = slots or default_check_slots()
        self.timeout_s = timeout_s
        self.python = python or sys.executable
        self._sem: asyncio.Semaphore | None = None  # made on first use, on the running loop
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    async def check(self, path: str | Path, spec: FunctionSpec, execute: str = "emulated") -> None:
        """Refuse a bad bundle at deploy time, never at its first invocation (BundleError naming the file
        and the cause). The handler must import, have its entry point, build (the reduced `small` model,
        torch at one thread), and return outputs of the spec's names, shapes and dtypes for one synthetic
        batch item. The same check in both execution modes: an emulated platform must accept exactly the
        bundles a real one accepts. Passes are cached per (bundle contents, spec). Changes nothing on disk
        but a private temporary folder, removed before it returns."""
        d = Path(path)
        require_spec_file(d)
        hfile, _ = handler_path(d, spec)  # a malformed handler field or a missing file fails fast, without a subprocess
        if not hfile.is_file():
            raise BundleError(f"{hfile}: handler file not found (function.yaml says handler: {spec.handler})")
        # NOTE: off the event loop: a bundle may hold 8 MiB (specs.py), read and hashed here
        key = await asyncio.get_running_loop().run_in_executor(None, _digest, d, spec, execute)
        if key in _checked:
            return
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._sem:
                if self._closed:
                    raise BundleError(f"{hfile}: the gateway is shutting down; deploy again once it is back")
                await self._run(d, spec, execute)
        finally:
            self._tasks.discard(task)
        _checked[key] = None

    async def aclose(self) -> None:
        """Cancel every check in flight or waiting (their processes are killed); later checks are refused."""
        self._closed = True
        tasks = [t for t in self._tasks if not t.done() and t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def _run(self, d: Path, spec: FunctionSpec, execute: str) -> None:
        jail = open_dir(Path(tempfile.mkdtemp(prefix="gpufaas-check-")))
        try:
            bundle = jail / "bundle"
            await asyncio.to_thread(share_read_only, d, bundle)
            sandbox = Sandbox(jail / "work", address_space_mb=4096, processes=64, cpu_s=int(self.timeout_s) + 5,
                              uid=await sandbox_uid(self.python))
            sandbox.prepare()
            spec_file = jail / "spec.json"
            spec_file.write_text(spec.model_dump_json())
            os.chmod(spec_file, 0o644)
            code, verdict, err_tail = await self._spawn(sandbox, bundle, spec_file, execute, hfile=handler_path(d, spec)[0])
        finally:
            shutil.rmtree(jail, ignore_errors=True)
        if code == 0 and verdict is not None and verdict.get("ok"):
            return
        why = (verdict or {}).get("error") or err_tail or f"the check exited with code {code} without a verdict"
        raise BundleError(str(why).replace(str(bundle), str(d)))

    async def _spawn(self, sandbox: Sandbox, bundle: Path, spec_file: Path, execute: str, *, hfile: Path) -> tuple[int, dict | None, str]:
        """Run one check process; (exit code, verdict from the private pipe or None, last stderr line)."""
        nonce = secrets.token_hex(16)
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        cmd = [self.python, "-m", "gpufaas.platform.worker", "--bundle", str(bundle), "--check", "--execute", execute,
               "--threads", "1", "--small", "--spec-json", str(spec_file)]
        env = sandbox.env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", CHECK_RESULT_FD_ENV: str(wfd)})
        try:
            proc = await sandbox.exec(cmd, env, stdin=asyncio.subprocess.PIPE, pass_fds=(wfd,))
        except OSError as e:
            os.close(rfd)
            raise BundleError(f"{hfile}: cannot start the bundle check: {e}") from None
        finally:
            os.close(wfd)
        assert proc.stdin is not None
        try:
            proc.stdin.write(nonce.encode() + b"\n")
            try:
                await proc.stdin.drain()
            except ConnectionError:
                pass  # it exited already: its exit code tells
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), self.timeout_s)
        except asyncio.TimeoutError:
            await kill_sandbox(proc, sandbox)
            os.close(rfd)
            raise BundleError(f"{hfile}: the bundle check did not finish within {self.timeout_s:g} s (handler hangs?)") from None
        except BaseException:
            await asyncio.shield(kill_sandbox(proc, sandbox))
            os.close(rfd)
            raise
        await kill_sandbox(proc, sandbox)  # whatever the handler forked is gone with it
        data = b""
        try:
            while len(data) <= MAX_VERDICT_BYTES and (chunk := os.read(rfd, 65536)):
                data += chunk
        except BlockingIOError:
            pass
        finally:
            os.close(rfd)
        verdict = _verdict(data, nonce)
        return proc.returncode if proc.returncode is not None else -1, verdict, sandbox.stderr_tail()


def _verdict(data: bytes, nonce: str) -> dict | None:
    """The check's verdict from its private pipe: one JSON object carrying this check's nonce, else None."""
    try:
        v = json.loads(data.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(v, dict) or v.get("nonce") != nonce:
        return None
    return v


def validate_bundle(path: str | Path, spec: FunctionSpec, execute: str = "emulated", *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """`BundleChecker.check` for callers without an event loop (tests, scripts): blocks until the verdict.
    Raises BundleError naming the file and the cause; changes nothing on disk."""
    asyncio.run(BundleChecker(slots=1, timeout_s=timeout_s).check(path, spec, execute))
