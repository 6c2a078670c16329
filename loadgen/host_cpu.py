"""How busy the machine's CPUs were over a stretch of a live run, and whose work kept them busy.

A live run emulates GPUs with real processes on this machine's CPUs (the gateway's loop, one process per
instance, the load generator), and the simulator models the GPUs, not those CPUs: when the machine is short
of CPU, the live side slows where the simulated one does not (README "Fidelity"). `gpufaas fidelity`
measures that per run, so that a row that missed its targets can be read beside what the host did: how
much of the live run some task waited for a CPU (the kernel's pressure stall information, Linux 4.20+), the
machine's busy share over it (every core), the CPU time of the run's own processes (this process and the
children it reaped: the workers and the driver), the rest (other processes on the machine) and the time the
hypervisor gave to other machines on these cores (`steal`, where the system reports it).

NOTE: the waiting share is the figure that says the host was short of CPU, whoever's work it was. The busy
time comes from the kernel's per-tick samples, which miss part of the short wake-ups a gateway and its
workers are made of (up to 4 % below the run's own CPU time, which the kernel counts exactly, on the
development machine), so `other_cpu_s` is a lower bound.

Who calls it: `loadgen.fidelity.run_fidelity`, around the live run. It changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PRESSURE_CPU = Path("/proc/pressure/cpu")  # PSI: "some avg10=.. avg60=.. avg300=.. total=<us>"


@dataclass(frozen=True)
class CpuSnapshot:
    """The CPU counters at one moment: `at_ns` (monotonic), the machine's busy and steal seconds summed
    over every core since boot, this process's own CPU seconds with its reaped children's, and the seconds
    since boot in which some task waited for a CPU (None where the kernel does not report it)."""

    at_ns: int
    busy_s: float
    steal_s: float
    own_s: float
    waiting_s: float | None = None


def parse_pressure(text: str) -> float:
    """Seconds in which some task waited for a CPU, from the text of /proc/pressure/cpu (its `some` line's
    `total`, in microseconds). ValueError when that line is missing. Pure."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "some":
            fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            if "total" in fields:
                return int(fields["total"]) / 1e6
    raise ValueError("no 'some ... total=' line in /proc/pressure/cpu")


def snapshot() -> CpuSnapshot:
    """The counters now (psutil: the system's CPU times, this process's with its children's)."""
    f = psutil.cpu_times()._asdict()  # its fields are the platform's own: iowait, steal and guest on Linux
    own = psutil.Process().cpu_times()
    # NOTE: busy = the total less idle and iowait (a core waiting on a disk is free to run us), less steal
    # (counted apart: the hypervisor's, not this machine's processes') and less guest (already inside user)
    steal_s = f.get("steal", 0.0)
    busy_s = sum(f.values()) - f["idle"] - f.get("iowait", 0.0) - steal_s - f.get("guest", 0.0) - f.get("guest_nice", 0.0)
    try:
        waiting_s: float | None = parse_pressure(PRESSURE_CPU.read_text())
    except (OSError, ValueError):  # not Linux, a kernel before 4.20, one built without PSI, or a format it changed
        waiting_s = None
    return CpuSnapshot(time.monotonic_ns(), busy_s, steal_s, own.user + own.system + own.children_user + own.children_system,
                       waiting_s)


def usage(before: CpuSnapshot, after: CpuSnapshot, cores: int) -> dict:
    """The JSON of `diagnostics.host_cpu`: `cores`, `wall_s` between the snapshots, `waiting_share` (the
    share of that time in which some task waited for a CPU, 0-1; None when not reported), `busy_share` (the
    machine's busy CPU time over `cores` x wall, 0-1), `own_cpu_s` (this process and the children it reaped
    meanwhile), `other_cpu_s` (the machine's busy time less that: other processes; 0 at least) and `steal_s`
    (time the hypervisor ran other machines on these cores). Pure."""
    wall_s = max((after.at_ns - before.at_ns) / 1e9, 1e-9)
    busy_s = max(after.busy_s - before.busy_s, 0.0)
    own_s = max(after.own_s - before.own_s, 0.0)
    waiting = None if before.waiting_s is None or after.waiting_s is None else \
        round(min(max(after.waiting_s - before.waiting_s, 0.0) / wall_s, 1.0), 4)
    return {"cores": cores, "wall_s": round(wall_s, 3), "waiting_share": waiting, "busy_share": round(min(busy_s / (cores * wall_s), 1.0), 4),
            "own_cpu_s": round(own_s, 3), "other_cpu_s": round(max(busy_s - own_s, 0.0), 3),
            "steal_s": round(max(after.steal_s - before.steal_s, 0.0), 3)}


def cores() -> int:
    """The logical cores the machine has (what `busy_share` divides by)."""
    return psutil.cpu_count() or 1
