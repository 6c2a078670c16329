"""The worker: one process per instance. Loads a bundle, builds its model, serves batches over a socket.

    python -m gpufaas.platform.worker --bundle DIR (--socket PATH | --tcp HOST:PORT) --token T
        [--execute emulated|real] [--gpu-type A100-80GB] [--share 0.5] [--threads 1] [--device auto|cpu|cuda]
        [--heartbeat-s 1.0] [--small]
    python -m gpufaas.platform.worker --bundle DIR --check [--small]     (deploy-time bundle check)

Start-up: connect to the host (the worker is the client, so how it is launched, as a subprocess by the
process backend, or in a container with the socket folder mounted by the docker backend, does not
matter; the Ray backend's actors run its `Runner` in-process), send HELLO,
import what the mode needs (numpy only for `emulated`, torch too for `real`), build the model (random
init, or the bundle's weights.pt), run one warm-up batch, and send READY with the measured parts in ms
(imports, model_build, first_batch). Then serve: BATCH -> RESULT, one at a time, until STOP or the
host closes the socket. A side thread sends HEARTBEAT every `--heartbeat-s`, also while a batch runs.

Execution modes (DESIGN section 3): `real` runs the handler's forward pass on the local torch device;
`emulated` holds the batch for its profiled latency (the host sends it as `hold_ns`; without it the
worker looks up the shipped profile of (model, --gpu-type, batch, --share)) and returns zeros of the
declared output shapes. Payloads: one dict of arrays per job (no batch dimension), or None; in `real`
mode a None payload is replaced by a random input of the declared input schema (uint8/int in [0, 255],
token ids in [1, 1000), floats from a normal distribution). An item that does not match the input
schema fails alone (its `errors` entry says what was expected); the worker lives on.
"""

from __future__ import annotations

import time

# NOTE: taken before any other import so the host can split its measured cold start into spawn (host
# fork/exec + interpreter start, up to here) and imports; CLOCK_MONOTONIC is shared by every process on
# one host. The worker is its own process: it measures durations only and never feeds the controller's clock.
T0_NS = time.monotonic_ns()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from gpufaas.platform import wire  # noqa: E402
from gpufaas.platform.wire import Kind  # noqa: E402

NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32, "float64": np.float64,
             "int64": np.int64, "int32": np.int32, "uint8": np.uint8, "bool": np.bool_}


class BatchError(Exception):
    """The whole batch failed (the handler raised, or returned outputs that do not match the spec)."""


def _fmt(dtype: str, shape: Any) -> str:
    return f"{dtype}{list(shape)}"


class Runner:
    """Runs batches for one function in one mode. Built once at start-up; `run()` per batch.

    Who calls it: the worker's serve loop and `--check`. It changes nothing outside itself."""

    def __init__(self, spec: Any, execute: str, *, module: Any = None, model: Any = None, device: str = "cpu",
                 gpu_type: str = "", share: float = 1.0) -> None:
        self.spec = spec
        self.execute = execute
        self.model = model
        self.device = device
        self.gpu_type = gpu_type
        self.share = share
        self.any_float = spec.inputs_any_float
        self.inputs = {k: (t.dtype, tuple(t.shape)) for k, t in spec.inputs.items()}
        self.outputs = {k: (t.dtype, tuple(t.shape)) for k, t in spec.outputs.items()}
        self._zeros = {k: np.zeros(s, NP_DTYPES[d]) for k, (d, s) in self.outputs.items()}
        self._table: Any = None
        self._rng = np.random.default_rng(0)

    # ---------------------------------------------------------------- inputs

    def expected(self) -> str:
        """What an item must look like, for error messages."""
        if self.any_float:
            return f"{self.spec.name} expects one or more float tensors (any names and shapes)"
        want = ", ".join(f"'{k}': {_fmt(d, s)}" for k, (d, s) in self.inputs.items())
        return f"{self.spec.name} expects {{{want}}} per item (no batch dimension)"

    def check_item(self, item: Any) -> dict[str, np.ndarray]:
        """The item's input arrays (synthesized for None in real mode); ValueError saying what is wrong."""
        if item is None:
            return self.synthetic()
        if not isinstance(item, dict):
            raise ValueError(f"payload is a {type(item).__name__}, not a map of tensors; {self.expected()}")
        if self.any_float:
            arrs = {k: v for k, v in item.items() if isinstance(v, np.ndarray)}
            bad = [f"'{k}': {v.dtype}" for k, v in arrs.items() if v.dtype.kind != "f"]
            if not arrs or bad or len(arrs) != len(item):
                got = ", ".join(f"'{k}': {type(v).__name__ if not isinstance(v, np.ndarray) else _fmt(v.dtype.name, v.shape)}" for k, v in item.items())
                raise ValueError(f"payload {{{got}}} does not match: {self.expected()}")
            return arrs
        out = {}
        for k, (d, s) in self.inputs.items():
            v = item.get(k)
            if not isinstance(v, np.ndarray):
                raise ValueError(f"input '{k}' is missing; {self.expected()}")
            if v.dtype != np.dtype(NP_DTYPES[d]) or tuple(v.shape) != s:
                raise ValueError(f"input '{k}': expected {_fmt(d, s)}, got {_fmt(v.dtype.name, v.shape)}; {self.expected()}")
            out[k] = v
        return out

    def synthetic(self) -> dict[str, np.ndarray]:
        """A random item of the declared input schema (real mode, payload None)."""
        out: dict[str, np.ndarray] = {}
        for k, (d, s) in self.inputs.items():
            if d in ("int64", "int32"):
                out[k] = self._rng.integers(1, 1000, size=s).astype(NP_DTYPES[d])
            elif d == "uint8":
                out[k] = self._rng.integers(0, 256, size=s).astype(np.uint8)
            elif d == "bool":
                out[k] = self._rng.integers(0, 2, size=s).astype(bool)
            else:
                out[k] = self._rng.standard_normal(s).astype(NP_DTYPES[d])
        return out

    # ---------------------------------------------------------------- batches

    def run(self, items: list, hold_ns: int | None = None) -> tuple[list, list]:
        """Run one batch. Returns (outputs, errors) per item: an output dict, or None and a message.
        BatchError when the whole batch fails."""
        n = len(items)
        errors: list[str | None] = [None] * n
        good: list[int] = []
        arrays: list[dict[str, np.ndarray]] = []
        for i, item in enumerate(items):
            try:
                arrays.append(self.check_item(item))
                good.append(i)
            except ValueError as e:
                errors[i] = str(e)
        outputs: list[dict | None] = [None] * n
        if not good:
            return outputs, errors
        if self.execute == "emulated":
            self._hold(len(items), hold_ns)
            for i in good:
                outputs[i] = self._zeros
            return outputs, errors
        for i, out in zip(good, self._forward(arrays)):
            outputs[i] = out
        return outputs, errors

    def _hold(self, batch: int, hold_ns: int | None) -> None:
        if hold_ns is None:
            if self._table is None:
                from gpufaas.platform.profiles import Profiles

                self._table = Profiles.shipped().table(self.spec.model, self.gpu_type)
            hold_ns = int(self._table.latency_ms(batch, self.share) * 1e6)
        if hold_ns > 0:
            # NOTE: sleep most of the hold, spin the last 200 us: time.sleep overshoots by ~50-100 us,
            # which would be most of a sub-millisecond profile entry.
            end = time.monotonic_ns() + hold_ns
            if hold_ns > 300_000:
                time.sleep((hold_ns - 200_000) / 1e9)
            while time.monotonic_ns() < end:
                pass

    def _forward(self, arrays: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        import torch

        n = len(arrays)
        names = sorted(arrays[0]) if self.any_float else list(self.inputs)
        if self.any_float and any(sorted(a) != names or any(a[k].shape != arrays[0][k].shape for k in names) for a in arrays):
            # items with different feature sets cannot share one tensor: run them one by one
            return [self._forward([a])[0] for a in arrays]
        inputs = {k: torch.from_numpy(np.stack([a[k] for a in arrays])).to(self.device) for k in names}
        try:
            with torch.inference_mode():
                res = self.model(**inputs)
        except Exception as e:  # noqa: BLE001 - the handler's failure fails the batch, not the worker
            raise BatchError(f"handler raised {type(e).__name__}: {e}") from None
        if not isinstance(res, dict):
            raise BatchError(f"handler returned {type(res).__name__}; it must return a dict with {sorted(self.outputs)}")
        per_item: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        for k, (d, s) in self.outputs.items():
            t = res.get(k)
            if t is None or not hasattr(t, "shape"):
                raise BatchError(f"handler output '{k}' is missing; it returned {sorted(res)}, the spec declares {sorted(self.outputs)}")
            if tuple(t.shape) != (n, *s):
                raise BatchError(f"handler output '{k}' has shape {list(t.shape)}, the spec declares {list(s)} per item (batch {n} -> {[n, *s]})")
            t = t.detach().to("cpu")
            if t.dtype == torch.bfloat16:
                t = t.float()  # numpy has no bfloat16
            arr = t.numpy().astype(NP_DTYPES[d], copy=False)
            for i in range(n):
                per_item[i][k] = arr[i]
        return per_item


# -------------------------------------------------------------------- start-up


def _load_spec(args: argparse.Namespace) -> Any:
    from gpufaas.platform import bundle
    from gpufaas.platform.specs import FunctionSpec

    if args.spec_json:
        return FunctionSpec.model_validate_json(Path(args.spec_json).read_text())
    return bundle.load_spec(args.bundle)


def build_runner(args: argparse.Namespace, real: bool) -> tuple[Runner, dict[str, float]]:
    """Import, build and warm up. Returns the runner and the parts in ms: imports, model_build, first_batch.
    Raises BundleError / any exception on failure (the caller reports it)."""
    from gpufaas.platform import bundle

    t0 = time.monotonic_ns()
    spec = _load_spec(args)
    module = model = None
    device = "cpu"
    if real:
        import torch

        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set (only possible once per process)
        device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        module, build = bundle.import_handler(args.bundle, spec)
    t1 = time.monotonic_ns()
    if real:
        torch.manual_seed(0)
        path, _ = bundle.handler_path(args.bundle, spec)
        try:
            model = build(spec, device=device, small=args.small)
        except Exception as e:  # noqa: BLE001 - a failing build refuses the bundle
            raise bundle.BundleError(f"{path}: build() raised {type(e).__name__}: {e}") from None
        if model is None or not callable(model):
            raise bundle.BundleError(f"{path}: build() returned {type(model).__name__}, not a callable torch module")
        weights = Path(args.bundle) / bundle.WEIGHTS_FILE
        if weights.is_file():
            model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        if device == "cuda":
            torch.cuda.synchronize()
    t2 = time.monotonic_ns()
    runner = Runner(spec, "real" if real else "emulated", module=module, model=model, device=device,
                    gpu_type=args.gpu_type, share=args.share)
    if real:
        try:
            outs, errs = runner.run([None])
        except BatchError as e:
            raise bundle.BundleError(f"{bundle.handler_path(args.bundle, spec)[0]}: {e}") from None
        if errs[0]:
            raise bundle.BundleError(f"{bundle.handler_path(args.bundle, spec)[0]}: synthetic input refused: {errs[0]}")
        if device == "cuda":
            torch.cuda.synchronize()
    else:
        runner.run([None] if not runner.inputs else [runner.synthetic()], hold_ns=0)
    t3 = time.monotonic_ns()
    return runner, {"imports": (t1 - T0_NS) / 1e6, "model_build": (t2 - t1) / 1e6, "first_batch": (t3 - t2) / 1e6,
                    "_load_ms": (t1 - t0) / 1e6}


class Link:
    """The worker's end of the socket: framed sends under a lock (the heartbeat thread shares it)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, kind: Kind, **fields: Any) -> None:
        data = wire.encode(kind, **fields)
        with self.lock:
            self.sock.sendall(data)


def _connect(args: argparse.Namespace) -> socket.socket:
    if args.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(args.socket)
    else:
        host, _, port = args.tcp.rpartition(":")
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _heartbeat(link: Link, period_s: float, stop: threading.Event) -> None:
    while not stop.wait(period_s):
        try:
            link.send(Kind.HEARTBEAT)
        except OSError:
            return


def serve(args: argparse.Namespace) -> int:
    """The worker's life: connect, HELLO, start up, READY, serve batches. Returns the exit code."""
    link = Link(_connect(args))
    link.send(Kind.HELLO, token=args.token, pid=os.getpid(), t0_ns=T0_NS)
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(link, args.heartbeat_s, stop), daemon=True).start()
    try:
        runner, parts = build_runner(args, args.execute == "real")
    except Exception as e:  # noqa: BLE001 - every start-up failure is reported, then the worker exits
        link.send(Kind.FAILED, error=str(e) if isinstance(e, Exception) and str(e) else type(e).__name__)
        return 3
    parts.pop("_load_ms", None)
    link.send(Kind.READY, parts_ms=parts, t0_ns=T0_NS, execute=runner.execute, device=runner.device)
    while True:
        try:
            msg = wire.recv_message(link.sock)
        except wire.WireError as e:
            print(f"gpufaas worker: {e}; exiting", file=sys.stderr)
            return 4
        if msg is None:
            return 0  # the host closed the socket
        kind, m = msg
        if kind == Kind.STOP:
            return 0
        if kind != Kind.BATCH:
            continue
        t0 = time.monotonic_ns()
        try:
            outputs, errors = runner.run(m.get("items") or [], m.get("hold_ns"))
            reply = {"id": m.get("id"), "outputs": outputs, "errors": errors}
        except BatchError as e:
            reply = {"id": m.get("id"), "error": str(e)}
        reply["exec_ns"] = time.monotonic_ns() - t0
        link.send(Kind.RESULT, **reply)


def check(args: argparse.Namespace) -> int:
    """`--check`: import, build and run one synthetic item through the real path; report one JSON verdict.

    Under `BundleChecker` the verdict goes to the private pipe named by $GPUFAAS_CHECK_FD, with the nonce
    read from stdin, both taken before the handler is imported (the handler's own prints cannot pass for
    it); run by hand, it is printed on stdout."""
    from gpufaas.platform.bundle import CHECK_RESULT_FD_ENV, MAX_VERDICT_BYTES

    fd_s = os.environ.pop(CHECK_RESULT_FD_ENV, "")
    out_fd = int(fd_s) if fd_s.isdigit() else None
    nonce = sys.stdin.readline().strip() if out_fd is not None else ""
    if out_fd is not None:
        os.set_inheritable(out_fd, False)  # what the handler spawns does not get it
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    try:
        _, parts = build_runner(args, True)
        verdict: dict[str, Any] = {"ok": True, "parts_ms": parts}
    except Exception as e:  # noqa: BLE001 - the verdict carries the cause
        verdict = {"ok": False, "error": (str(e) or type(e).__name__)[:2000]}
    if out_fd is None:
        print(json.dumps(verdict))
    else:
        data = json.dumps({**verdict, "nonce": nonce}).encode()[:MAX_VERDICT_BYTES]
        os.write(out_fd, data)
        os.close(out_fd)
    return 0 if verdict["ok"] else 1


def worker_argv(*, bundle: str, socket_path: str, token: str, execute: str, gpu_type: str, share: float,
                threads: int = 1, heartbeat_s: float = 1.0, small: bool = False) -> list[str]:
    """The arguments of `python -m gpufaas.platform.worker` (after the module name) for one instance: the
    one place that writes what `parse_args` reads. Who calls it: the process backend (a subprocess) and
    the docker backend (the container's command, the image's entry point being this module)."""
    argv = ["--bundle", bundle, "--socket", socket_path, "--token", token, "--execute", execute,
            "--gpu-type", gpu_type, "--share", f"{share:g}", "--threads", str(threads), "--heartbeat-s", f"{heartbeat_s:g}"]
    if small:
        argv.append("--small")
    return argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpufaas.platform.worker", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="folder with function.yaml and handler.py")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", help="Unix socket of the host to connect to")
    where.add_argument("--tcp", help="HOST:PORT of the host to connect to")
    p.add_argument("--token", default="", help="instance token sent in HELLO")
    p.add_argument("--execute", choices=["emulated", "real"], default="emulated")
    p.add_argument("--gpu-type", default="A100-80GB", help="GPU type of the instance (emulated timing)")
    p.add_argument("--share", type=float, default=1.0, help="GPU share of the instance (emulated timing)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument("--small", action="store_true", help="build the reduced-width model (tests, checks)")
    p.add_argument("--check", action="store_true", help="check the bundle, print a JSON verdict, exit")
    p.add_argument("--spec-json", help="use this FunctionSpec (JSON file) instead of the bundle's function.yaml")
    args = p.parse_args(argv)
    if not args.check and not (args.socket or args.tcp):
        p.error("one of --socket or --tcp is required (or --check)")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return check(args) if args.check else serve(args)


if __name__ == "__main__":
    sys.exit(main())
