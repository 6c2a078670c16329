"""Latency, memory and cold-start profiles: latency_ms(batch, share) per (model, GPU type).

A profile file holds a table of measured points: one row per batch size, one column per GPU share.
Lookups between points interpolate bilinearly in (batch, 1/share): latency grows about linearly with
batch once the GPU is saturated and about linearly with 1/share (half the SMs, twice the time), so
these axes keep linear interpolation close to the measurements (tests/test_profiles.py states the
worst leave-one-out error). Lookups outside the measured range raise `ProfileError`: no silent
extrapolation.

Who calls it: the controller and the policies (through `Profiles.table()`), the sim backend (batch
times), the worker in emulated mode. Nothing here mutates after load. Profiles come from the shipped
folder (platform/profile_tables/) and from user folders searched before it (`Profiles.with_dirs`), so a
scenario can run on GPU types that ship no profile.
"""

from __future__ import annotations

import bisect
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from pydantic import Field, model_validator

from gpufaas.platform.errors import ProfileError, SpecError
from gpufaas.platform.specs import Spec, load_yaml

SHIPPED_DIR = Path(__file__).parent / "profile_tables"


class MemoryProfile(Spec):
    """GPU memory of one instance: a fixed part plus a part per batch item."""

    instance_mb: float = Field(ge=0, description="weights + runtime context, MB")
    per_item_mb: float = Field(ge=0, description="activations per batch item, MB")


class ColdStartProfile(Spec):
    """Cold-start time components, ms; their sum is the cold-start time in simulation."""

    container_ms: float = Field(ge=0, description="container (or process) creation and start")
    runtime_init_ms: float = Field(ge=0, description="runtime init: interpreter, framework import, CUDA context")
    model_load_ms: float = Field(ge=0, description="model build and weight load onto the GPU")
    source: str = Field("", description="where these figures come from")

    @property
    def total_ms(self) -> float:
        return self.container_ms + self.runtime_init_ms + self.model_load_ms


class Profile(Spec):
    """One (model, GPU type) profile file."""

    model: str = Field(description="model / profile name referenced by FunctionSpec.model")
    gpu_type: str = Field(description="GPU type the measurements are for")
    source: str = Field(description="citation of the measurements, or 'estimate: <how>'")
    batches: list[int] = Field(min_length=1, description="measured batch sizes, increasing")
    shares: list[float] = Field(min_length=1, description="measured GPU shares, increasing, in (0, 1]")
    latency_ms: list[list[float]] = Field(description="latency_ms[i][j] at batches[i], shares[j]")
    memory: MemoryProfile = Field(description="GPU memory")
    cold_start: ColdStartProfile = Field(description="cold-start components")

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        if any(b2 <= b1 for b1, b2 in zip(self.batches, self.batches[1:])) or self.batches[0] < 1:
            raise ValueError("batches: must be increasing positive integers")
        if any(s2 <= s1 for s1, s2 in zip(self.shares, self.shares[1:])) or not (0 < self.shares[0] and self.shares[-1] <= 1):
            raise ValueError("shares: must be increasing fractions in (0, 1]")
        if len(self.latency_ms) != len(self.batches):
            raise ValueError(f"latency_ms: has {len(self.latency_ms)} rows, expected one per batch size ({len(self.batches)})")
        for i, row in enumerate(self.latency_ms):
            if len(row) != len(self.shares):
                raise ValueError(f"latency_ms[{i}]: has {len(row)} values, expected one per share ({len(self.shares)})")
            if any(v < 0 for v in row):
                raise ValueError(f"latency_ms[{i}]: latencies must be >= 0")
        return self


class LatencyTable:
    """A compiled profile: monotone bilinear interpolation in (batch, 1/share), range-checked.

    NOTE: measured tables carry noise (a larger batch measured a little faster, say). At compile time
    each row is made non-increasing in share and each column non-decreasing in batch (running max from
    the cheap corner), so every lookup is monotone in both axes, which the A*-search's heuristic relies
    on. `max_adjust_ms` records the largest such change.
    """

    __slots__ = ("model", "gpu_type", "batches", "inv_shares", "lat", "memory", "cold_start", "max_adjust_ms", "_cache")

    def __init__(self, p: Profile) -> None:
        self.model = p.model
        self.gpu_type = p.gpu_type
        self.batches = list(p.batches)
        # columns ordered by increasing 1/share (= decreasing share)
        self.inv_shares = [1.0 / s for s in reversed(p.shares)]
        raw = [list(reversed(row)) for row in p.latency_ms]
        lat = [row[:] for row in raw]
        for i in range(len(lat)):
            for j in range(len(lat[i])):
                best = lat[i][j]
                if i > 0:
                    best = max(best, lat[i - 1][j])
                if j > 0:
                    best = max(best, lat[i][j - 1])
                lat[i][j] = best
        self.lat = lat
        self.max_adjust_ms = max(abs(a - b) for r1, r2 in zip(raw, lat) for a, b in zip(r1, r2))
        self.memory = p.memory
        self.cold_start = p.cold_start
        self._cache: dict[tuple[int, float], float] = {}

    @property
    def min_share(self) -> float:
        return 1.0 / self.inv_shares[-1]

    @property
    def max_batch(self) -> int:
        return self.batches[-1]

    def covers(self, batch: int, share: float) -> bool:
        """True when (batch, share) lies inside the measured range."""
        return self.batches[0] <= batch <= self.batches[-1] and self.min_share - 1e-9 <= share <= 1.0 / self.inv_shares[0] + 1e-9

    def latency_ms(self, batch: int, share: float) -> float:
        """Interpolated latency of one batch at `share` of a GPU. ProfileError outside the range."""
        key = (batch, share)
        v = self._cache.get(key)
        if v is not None:
            return v
        if not self.covers(batch, share):
            raise ProfileError(
                f"profile {self.model}@{self.gpu_type}: (batch={batch}, share={share:g}) is outside the measured range "
                f"(batch {self.batches[0]}..{self.batches[-1]}, share {self.min_share:.3g}..{1.0 / self.inv_shares[0]:g}); "
                f"restrict the function's batch_sizes/shares or add measurements"
            )
        v = _bilinear(self.batches, self.inv_shares, self.lat, float(batch), 1.0 / share)
        self._cache[key] = v
        return v

    def memory_mb(self, batch: int) -> float:
        """GPU memory of an instance that runs batches of up to `batch` items."""
        return self.memory.instance_mb + self.memory.per_item_mb * batch


def _interval(xs: list[float] | list[int], x: float) -> tuple[int, float]:
    """Index i and weight t with x = xs[i]*(1-t) + xs[i+1]*t (t=0 with a single point)."""
    if len(xs) == 1:
        return 0, 0.0
    i = bisect.bisect_right(xs, x) - 1
    i = min(max(i, 0), len(xs) - 2)
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return i, min(max(t, 0.0), 1.0)


def _bilinear(xs, ys, z, x: float, y: float) -> float:
    i, tx = _interval(xs, x)
    j, ty = _interval(ys, y)
    i2 = min(i + 1, len(xs) - 1)
    j2 = min(j + 1, len(ys) - 1)
    a = z[i][j] * (1 - ty) + z[i][j2] * ty
    b = z[i2][j] * (1 - ty) + z[i2][j2] * ty
    return a * (1 - tx) + b * tx


class Profiles:
    """All known profiles by (model, gpu_type): the shipped ones, any from user folders, plus any added at
    run time. `searched` lists the folders they were loaded from, first-searched first (for error messages).

    Who builds it: `with_dirs()` for the simulator (a scenario's `profiles:` folder, `gpufaas sim --profiles`)
    and the gateway (`gpufaas up --profiles`); `shipped()` where no user folder applies.
    """

    def __init__(self, tables: dict[tuple[str, str], LatencyTable] | None = None, searched: tuple[str, ...] = ()) -> None:
        self._tables: dict[tuple[str, str], LatencyTable] = dict(tables or {})
        self.searched = searched

    @classmethod
    def shipped(cls) -> "Profiles":
        """The profiles in platform/profile_tables/ (cached; the returned store is a fresh copy)."""
        return cls.with_dirs(())

    @classmethod
    def with_dirs(cls, dirs: Iterable[str | Path]) -> "Profiles":
        """The profiles of the user folders `dirs` (searched in order: a profile in an earlier folder wins)
        and then the shipped ones: a user profile for a (model, gpu_type) replaces the shipped one.

        ProfileError (one line) for a folder that does not exist, a file that does not validate (naming its
        path), or two files in one folder for the same (model, gpu_type)."""
        user = [Path(d).resolve() for d in dirs]
        searched = tuple(str(d) for d in user) + (str(SHIPPED_DIR),)
        tables: dict[tuple[str, str], LatencyTable] = {}
        for d in reversed((*user, SHIPPED_DIR)):  # later folders first, so earlier ones overwrite them
            if not d.is_dir():
                raise ProfileError(f"profiles folder {d}: not found (or not a folder); give an existing folder of "
                                   f"<model>.<gpu_type>.yaml files")
            tables.update(_load_dir(str(d), _stamp(d)))
        return cls(tables, searched)

    def add(self, profile: Profile) -> None:
        """Add or replace one profile."""
        self._tables[(profile.model, profile.gpu_type)] = LatencyTable(profile)

    def add_file(self, path: str | Path) -> Profile:
        """Load one profile file and add it."""
        p = _load_file(Path(path))
        self.add(p)
        return p

    def table(self, model: str, gpu_type: str) -> LatencyTable:
        """The compiled table; ProfileError saying where it looked and what to do if absent."""
        t = self._tables.get((model, gpu_type))
        if t is None:
            known = sorted(f"{m}@{g}" for m, g in self._tables)
            where = (", ".join(f"{d} (shipped)" if d == str(SHIPPED_DIR) else d for d in self.searched)
                     or "no profile folder (profiles added in code only)")
            raise ProfileError(
                f"no profile for model '{model}' on GPU type '{gpu_type}'; searched, in order: {where}; "
                f"known profiles: {', '.join(known) or 'none'}; add a file {model}.{gpu_type}.yaml to a folder of your own "
                f"(measure it with `gpufaas profile <bundle> --gpu-type {gpu_type} --profiles DIR`) and name that folder "
                f"with `profiles:` in the scenario or --profiles DIR")
        return t

    def has(self, model: str, gpu_type: str) -> bool:
        return (model, gpu_type) in self._tables

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self._tables)


def _stamp(d: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) of each profile file in `d`: the cache key, so an edited file is reloaded."""
    out = []
    for f in sorted(d.glob("*.yaml")):
        st = f.stat()
        out.append((f.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _load_file(f: Path) -> Profile:
    """One profile file; ProfileError naming the file's path when it does not read or validate."""
    try:
        return load_yaml(f, Profile)
    except SpecError as e:
        msg = str(e)
        raise ProfileError(msg if msg.startswith(str(f)) else f"{f}: {msg}") from None


@lru_cache(maxsize=32)
def _load_dir(path: str, stamp: tuple) -> tuple[tuple[tuple[str, str], LatencyTable], ...]:
    """Every *.yaml profile in the folder `path` (`stamp` only keys the cache)."""
    out = []
    first: dict[tuple[str, str], Path] = {}
    for f in sorted(Path(path).glob("*.yaml")):
        p = _load_file(f)
        key = (p.model, p.gpu_type)
        if key in first:
            raise ProfileError(f"{f}: profile {p.model}@{p.gpu_type} is also in {first[key].name} in the same folder; "
                               f"keep one of the two files")
        first[key] = f
        out.append((key, LatencyTable(p)))
    return tuple(out)


def zero_profile(model: str = "zero", gpu_type: str = "A100-80GB") -> Profile:
    """A 0 ms profile (for dispatch and gateway overhead benchmarks): every batch takes no GPU time."""
    return Profile(
        model=model, gpu_type=gpu_type, source="synthetic: zero latency, for overhead benchmarks",
        batches=[1, 256], shares=[0.01, 1.0], latency_ms=[[0.0, 0.0], [0.0, 0.0]],
        memory=MemoryProfile(instance_mb=1, per_item_mb=0),
        cold_start=ColdStartProfile(container_ms=0, runtime_init_ms=0, model_load_ms=0, source="synthetic"),
    )
