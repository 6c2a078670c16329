"""`gpufaas profile functions/NAME`: measure a function's latency and memory on the local device and
write a profile in the project's format (platform/profile_tables/*.yaml, loadable by `Profiles.add_file`).
With `--profiles DIR` it writes `DIR/<model>.<gpu_type>.yaml` and reads the folder back the way
`gpufaas sim --profiles DIR`, a scenario's `profiles:` and `gpufaas up --profiles DIR` will.

Each share is measured in a fresh child process (`python -m gpufaas.gateway.cli.profile_cmd`), because
CUDA reads `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` when its context is created. On CUDA the shares are set
that way only when an MPS control daemon is running; otherwise (and always on CPU) only share 1.0 is
measured, and the command says so. Latency: median of `--repeats` timed runs after two warm-up runs, per
batch size. Memory: CUDA peak allocation (instance = after the model build, per item = least-squares
slope of the peak over batch sizes); on CPU the same from the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs). Cold start: spawn (process start), runtime init (imports) and model build.
The gateway process never imports torch: only the child does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from gpufaas.platform.errors import UserError


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of integers (e.g. 1,2,4,8)") from None
    if not vals or vals[0] < 1:
        raise UserError(f"{flag}: batch sizes must be >= 1, got '{text}'")
    return vals


def _float_list(text: str, flag: str) -> list[float]:
    try:
        vals = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of numbers (e.g. 0.25,0.5,1)") from None
    if not vals or vals[0] <= 0 or vals[-1] > 1:
        raise UserError(f"{flag}: shares must lie in (0, 1], got '{text}'")
    return vals


def mps_running() -> bool:
    """True when an MPS control daemon is running (its pipe directory holds a control pipe)."""
    pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    return (pipe / "control").exists()


def _measure_child(args: dict) -> dict:
    """In the child: build the model, time each batch size, measure memory. Returns figures (ms, MB)."""
    t_main = time.monotonic_ns()
    import numpy as np
    import torch

    from gpufaas.platform import bundle
    from gpufaas.platform.worker import Runner

    torch.set_num_threads(args["threads"])
    t_imported = time.monotonic_ns()
    spec = bundle.load_spec(args["bundle"])
    module, build = bundle.import_handler(args["bundle"], spec)
    device = args["device"]
    cuda = device == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    model = build(spec, device=device, small=args["small"])
    if cuda:
        torch.cuda.synchronize()
        instance_mb = torch.cuda.memory_allocated() / 2**20
    else:
        instance_mb = max(_rss_mb() - rss0, sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20)
    t_built = time.monotonic_ns()
    runner = Runner(spec, "real", module=module, model=model, device=device)
    lat, peak = [], []
    for b in args["batches"]:
        items = [runner.synthetic() for _ in range(b)]
        for _ in range(2):
            runner.run(items)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak()
        base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
        times = []
        for _ in range(args["repeats"]):
            t0 = time.perf_counter_ns()
            runner.run(items)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        lat.append(float(np.median(times)))
        peak.append((torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_mb()) - base)
    slope = float(np.polyfit(args["batches"], peak, 1)[0]) if len(peak) > 1 else max(peak[0], 0.0)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {"latency_ms": lat, "instance_mb": round(instance_mb, 2), "per_item_mb": round(max(slope, 0.0), 3),
            "spawn_ms": (t_main - args["parent_ns"]) / 1e6, "imports_ms": (t_imported - t_main) / 1e6,
            "build_ms": (t_built - t_imported) / 1e6, "device_name": name}


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return _status_mb("VmRSS:")


def _peak_mb() -> float:
    return _status_mb("VmHWM:")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def measure(bundle_dir: Path, device: str, batches: list[int], shares: list[float], repeats: int, threads: int,
            small: bool) -> tuple[dict, list[str]]:
    """Measure every share in a child process; returns (raw figures per share, notes for the user)."""
    notes = []
    if device == "cuda":
        if not mps_running():
            notes.append("no MPS control daemon is running: measured share 1.0 only (start nvidia-cuda-mps-control -d for shares)")
            shares = [1.0]
    elif shares != [1.0]:
        notes.append("--device cpu: GPU shares do not apply; measured share 1.0 only")
        shares = [1.0]
    per_share = {}
    for s in shares:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if device == "cuda" and s < 1.0:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = f"{s * 100:g}"
        args = {"bundle": str(bundle_dir), "device": device, "batches": batches, "repeats": repeats, "threads": threads,
                "small": small, "parent_ns": time.monotonic_ns()}
        proc = subprocess.run([sys.executable, "-m", "gpufaas.gateway.cli.profile_cmd", json.dumps(args)],
                              capture_output=True, text=True, env=env, timeout=1800)
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise UserError(f"profile {bundle_dir}: measuring share {s:g} failed: {tail}")
        per_share[s] = json.loads(lines[-1])
    return per_share, notes


def to_profile(spec, gpu_type: str, batches: list[int], per_share: dict, small: bool) -> dict:
    """The measured figures as a profile document (the `Profile` schema of platform/profiles.py)."""
    shares = sorted(per_share)
    first = per_share[shares[-1]]
    doc = {
        "model": spec.model, "gpu_type": gpu_type,
        "source": f"measured by `gpufaas profile` on {first['device_name']}" + (" (reduced-width model)" if small else ""),
        "batches": batches, "shares": shares,
        "latency_ms": [[round(per_share[s]["latency_ms"][i], 4) for s in shares] for i in range(len(batches))],
        "memory": {"instance_mb": first["instance_mb"], "per_item_mb": first["per_item_mb"]},
        "cold_start": {"container_ms": round(first["spawn_ms"], 1), "runtime_init_ms": round(first["imports_ms"], 1),
                       "model_load_ms": round(first["build_ms"], 1), "source": "measured: process spawn, imports, model build"},
    }
    return doc


@click.command("profile")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batches", default="1,2,4,8", show_default=True, help="comma-separated batch sizes")
@click.option("--shares", default="1.0", show_default=True, help="comma-separated GPU shares (CUDA with MPS only)")
@click.option("--repeats", type=click.IntRange(1, 10_000), default=10, show_default=True, help="timed runs per batch size")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="torch CPU threads")
@click.option("--gpu-type", default=None, help="GPU type name written into the profile (default: 'cpu' or the CUDA device name)")
@click.option("--small", is_flag=True, help="profile the reduced-width model (quick checks)")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="profile file to write (default: print it)")
@click.option("--profiles", "profiles_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="profile folder to write <model>.<gpu_type>.yaml into (created if missing; what sim/up --profiles read)")
@click.option("--json", "as_json", is_flag=True, help="print the profile as one JSON object")
def profile(bundle_dir: Path, device: str, batches: str, shares: str, repeats: int, threads: int, gpu_type: str | None,
            small: bool, output: Path | None, profiles_dir: Path | None, as_json: bool) -> None:
    """Measure latency and memory of the function bundle BUNDLE_DIR on this machine; write a profile."""
    import yaml

    from gpufaas.platform import bundle
    from gpufaas.platform.profiles import Profile, Profiles
    from gpufaas.platform.specs import parse

    if output is not None and profiles_dir is not None:
        raise click.UsageError("-o/--output and --profiles both say where to write the profile; give one of them")
    if profiles_dir is not None and profiles_dir.is_dir():
        Profiles.with_dirs([profiles_dir])  # a broken folder fails now, not after minutes of measuring
    spec = bundle.load_spec(bundle_dir)
    bs = _int_list(batches, "--batches")
    sh = _float_list(shares, "--shares")
    if device == "cuda":
        probe = subprocess.run([sys.executable, "-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
                               capture_output=True)
        if probe.returncode != 0:
            raise UserError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
    per_share, notes = measure(bundle_dir, device, bs, sh, repeats, threads, small)
    for n in notes:
        click.echo(f"note: {n}", err=True)
    name = gpu_type or ("cpu" if device == "cpu" else per_share[max(per_share)]["device_name"].replace(" ", "-"))
    doc = to_profile(spec, name, bs, per_share, small)
    parse(Profile, doc, f"measured profile of {bundle_dir}")  # the document must load as a profile
    if profiles_dir is not None:
        output = profiles_dir / f"{spec.model}.{name}.yaml"
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(f"# measured by gpufaas profile {bundle_dir} --device {device}\n" + yaml.safe_dump(doc, sort_keys=False))
    if profiles_dir is not None:
        Profiles.with_dirs([profiles_dir]).table(spec.model, name)  # read back as sim/up will (a duplicate fails here)
    if as_json:
        click.echo(json.dumps(doc))
    elif output is None:
        click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
    else:
        click.echo(f"wrote {output}: {spec.model}@{name}, batches {bs}, shares {sorted(per_share)}"
                   + (f"; use it with --profiles {profiles_dir} or `profiles:` in a scenario" if profiles_dir is not None else ""))


COMMANDS = [profile]


if __name__ == "__main__":
    # the measuring child: one JSON argument in, one JSON line out
    print(json.dumps(_measure_child(json.loads(sys.argv[1]))))
