"""Trace replay: the Azure Functions 2019 per-minute format and plain CSVs of timestamps.

Readers turn a file into a small array (one-line `SpecError` naming the file, row and column on any bad
input); `TraceSpec` (a field of `WorkloadSpec.traces`) maps the trace's functions onto workflows, scales
time and rate, and yields `(t_ns, target)` arrivals lazily, one trace minute at a time.

Data: the Azure Functions 2019 trace, Shahrad et al., "Serverless in the Wild: Characterizing and
Optimizing the Serverless Workload at a Large Cloud Provider", USENIX ATC 2020 (CC-BY-4.0). A 500-function,
8-hour sample lives beside the repository in ../shared/data/azure_functions_2019_sample/ and is never
copied into it.

Who calls it: `loadgen.workload` (for `gpufaas sim` and `gpufaas loadgen`), `gpufaas loadgen --trace`.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Iterator, Literal

import numpy as np
from pydantic import Field, model_validator

from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.errors import SpecError
from gpufaas.platform.shipped import package_root
from gpufaas.platform.specs import Spec
from gpufaas.platform.units import MAX_DURATION_MS

REPO_ROOT = package_root()
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ID_COLUMNS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
_TIME_COLUMNS = {"t_s": 1.0, "time_s": 1.0, "timestamp_s": 1.0, "t_ms": 1e-3, "time_ms": 1e-3, "timestamp": None}


@dataclass(frozen=True)
class AzureTrace:
    """Per-minute invocation counts: `counts[f, m]` for function `functions[f]` in minute `first_minute + m`."""

    path: str
    functions: tuple[str, ...]
    counts: np.ndarray
    first_minute: int


@dataclass(frozen=True)
class TimestampTrace:
    """Arrival times in seconds from the first row (sorted), with an optional workflow name per row."""

    path: str
    times_s: np.ndarray
    workflows: tuple[str, ...] | None


def _minute_of(col: str) -> int | None:
    """'480' -> 480, 'minute_12' -> 12 (the fn200 sampler's spelling); anything else -> None."""
    c = col.strip()
    if c.startswith("minute_"):
        c = c[len("minute_"):]
    return int(c) if c.isdigit() else None


def _csv_header(fh: IO[str], path: str, expected: str) -> tuple[Iterator[list[str]], list[str]]:
    """The CSV reader over `fh` and its header row; SpecError naming `expected` when the file is empty."""
    rows = csv.reader(fh)
    header = next(rows, None)
    if not header:
        raise SpecError(f"{path}: empty file; expected {expected}")
    return rows, header


@functools.lru_cache(maxsize=8)
def _read_azure_cached(path: str, mtime_ns: int) -> AzureTrace:
    with open(path, newline="") as fh:
        rows, header = _csv_header(fh, path, "an Azure 2019 invocations CSV (HashOwner,HashApp,HashFunction,Trigger,1,2,...)")
        if "HashFunction" not in header:
            raise SpecError(f"{path}: row 1: no HashFunction column; expected the Azure 2019 invocations_per_function_md header "
                            "(HashOwner,HashApp,HashFunction,Trigger,<minute>,...)")
        minute_cols = [(i, _minute_of(c)) for i, c in enumerate(header) if c not in _ID_COLUMNS]
        bad = [header[i] for i, m in minute_cols if m is None]
        if bad:
            raise SpecError(f"{path}: row 1: column '{bad[0]}' is not a minute number; per-minute columns must be named 1..1440 (or minute_N)")
        if not minute_cols:
            raise SpecError(f"{path}: row 1: no per-minute count columns after HashOwner,HashApp,HashFunction,Trigger")
        minutes = [m for _, m in minute_cols if m is not None]  # all are, after the check above
        if minutes != list(range(minutes[0], minutes[0] + len(minutes))):
            raise SpecError(f"{path}: row 1: minute columns are not consecutive ({minutes[0]}..{minutes[-1]}); fix the header")
        idx = [i for i, _ in minute_cols]
        owner = header.index("HashOwner") if "HashOwner" in header else None
        app = header.index("HashApp") if "HashApp" in header else None
        fn_col = header.index("HashFunction")
        names: list[str] = []
        data: list[list[int]] = []
        for r, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise SpecError(f"{path}: row {r}: {len(row)} columns, the header has {len(header)}; fix or drop the row")
            key = "/".join(row[c] for c in (owner, app, fn_col) if c is not None)
            vals: list[int] = []
            for i in idx:
                v = row[i].strip()
                if not v.isdigit():
                    raise SpecError(f"{path}: row {r}, column '{header[i]}': count '{row[i]}' is not a non-negative integer")
                vals.append(int(v))
            names.append(key)
            data.append(vals)
    if not data:
        raise SpecError(f"{path}: no function rows below the header")
    counts = np.asarray(data, dtype=np.int64)
    counts.flags.writeable = False
    return AzureTrace(path, tuple(names), counts, minutes[0])


def read_azure(path: str | Path) -> AzureTrace:
    """Read an Azure Functions 2019 `invocations_per_function_md` CSV (cached by path and mtime)."""
    p = _existing(path)
    return _read_azure_cached(str(p), p.stat().st_mtime_ns)


def _parse_time(v: str, scale: float | None) -> float:
    if scale is not None:
        return float(v) * scale
    try:
        return float(v)
    except ValueError:
        # NOTE: the Azure LLM 2023 trace writes '2023-11-16 18:15:46.6805900' (7 fraction digits); trim to 6.
        v = re.sub(r"(\.\d{6})\d+", r"\1", v.strip())
        return datetime.fromisoformat(v).timestamp()


@functools.lru_cache(maxsize=8)
def _read_timestamps_cached(path: str, mtime_ns: int) -> TimestampTrace:
    with open(path, newline="") as fh:
        rows, header = _csv_header(fh, path, "a CSV with a header naming a time column (t_s, t_ms or timestamp)")
        lower = [h.strip().lower() for h in header]
        tcol = next((i for i, h in enumerate(lower) if h in _TIME_COLUMNS), None)
        if tcol is None:
            raise SpecError(f"{path}: row 1: no time column; name one of {', '.join(_TIME_COLUMNS)}")
        scale = _TIME_COLUMNS[lower[tcol]]
        wcol = lower.index("workflow") if "workflow" in lower else None
        times: list[float] = []
        wfs: list[str] = []
        for r, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                t = _parse_time(row[tcol], scale)
            except (ValueError, IndexError):
                raise SpecError(f"{path}: row {r}, column '{header[tcol]}': '{row[tcol] if tcol < len(row) else ''}' is not a time "
                                "(seconds, milliseconds for t_ms, or an ISO date-time)") from None
            if not np.isfinite(t):
                raise SpecError(f"{path}: row {r}, column '{header[tcol]}': '{row[tcol]}' is not a finite time")
            times.append(t)
            if wcol is not None:
                if wcol >= len(row) or not row[wcol].strip():
                    raise SpecError(f"{path}: row {r}, column 'workflow': empty; name a workflow")
                wfs.append(row[wcol].strip())
    if not times:
        raise SpecError(f"{path}: no rows below the header")
    raw = np.asarray(times, dtype=np.float64)
    order = np.argsort(raw, kind="stable")
    rel_s = raw[order] - raw[order[0]]
    rel_s.flags.writeable = False
    w = tuple(wfs[i] for i in order) if wcol is not None else None
    return TimestampTrace(path, rel_s, w)


def read_timestamps(path: str | Path) -> TimestampTrace:
    """Read a CSV of arrival timestamps (column t_s, t_ms or timestamp; optional workflow column)."""
    p = _existing(path)
    return _read_timestamps_cached(str(p), p.stat().st_mtime_ns)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: trace file not found; check the path (the Azure sample lives in ../shared/data/azure_functions_2019_sample/)")
    return p


def expand_env(text: str, where: str) -> str:
    """`${VAR}` / `${VAR:-default}` in a path, from the environment (so scenario files can point elsewhere)."""
    def sub(m: re.Match) -> str:
        if m.group(1) in os.environ:
            return os.environ[m.group(1)]
        if m.group(2) is not None:
            return m.group(2)
        raise SpecError(f"{where}: ${{{m.group(1)}}} is not set; export it or write ${{{m.group(1)}:-default}}")
    return _ENV_RE.sub(sub, text)


def resolve_path(raw: str, base: Path | None, where: str) -> Path:
    """An absolute path to an existing trace file: as given, else relative to `base` (the scenario's folder),
    else relative to the repository root. One-line SpecError naming `where` when none exists."""
    p = Path(expand_env(raw, where)).expanduser()
    tried = [p] if p.is_absolute() else [c / p for c in ([base] if base else []) + [Path.cwd(), REPO_ROOT]]
    for c in tried:
        if c.is_file():
            return c.resolve()
    raise SpecError(f"{where}: trace file '{raw}' not found (looked at {', '.join(str(c) for c in tried)}); "
                    "fix the path or set the environment variable it names")


def stable_hash(name: str) -> int:
    """A hash of a trace function's name that is the same in every process (crc32; Python's hash() is salted)."""
    return zlib.crc32(name.encode())


class TraceSpec(Spec):
    """A trace replayed as arrivals, mapped onto workflows.

    `azure2019`: per-minute counts per function; functions map onto `workflows` either `busiest` (the
    `top_n` busiest functions by total count, rank r -> workflows[r % len]) or `hash` (every function,
    crc32(name) % len). Arrivals are spread inside each minute `uniform`ly (exact count, uniform times) or as
    `poisson` (a Poisson number of uniform times, i.e. a Poisson process at that minute's rate).
    `timestamps`: a CSV of times; rows go to their `workflow` column, or all to the one workflow listed.
    `time_scale` > 1 plays the trace faster (a trace minute lasts 60/time_scale s); `rate_scale` multiplies
    the counts (azure2019) or thins the rows (timestamps, <= 1 only).
    """

    format: Literal["azure2019", "timestamps"] = Field(description="file format")
    path: str = Field(description="trace file; relative to the scenario file, the cwd or the repository; ${VAR:-default} allowed")
    workflows: list[str] = Field(min_length=1, description="workflows the trace's functions (or rows) map onto")
    mapping: Literal["busiest", "hash"] = Field("busiest", description="azure2019: how functions map onto workflows")
    top_n: int | None = Field(None, ge=1, description="busiest: how many of the busiest functions (default: one per workflow)")
    spread: Literal["uniform", "poisson"] = Field("poisson", description="azure2019: arrivals inside a minute")
    start_minute: int = Field(0, ge=0, description="skip this many minutes of the trace (azure2019) before replay starts")
    start_s: float = Field(0.0, ge=0, description="timestamps: skip this many trace seconds before replay starts")
    time_scale: float = Field(1.0, gt=0, description="trace seconds per run second (>1: faster)")
    rate_scale: float = Field(1.0, gt=0, description="multiply the invocation counts (timestamps: <= 1, thinning)")
    slo_ms: float | None = Field(None, gt=0, le=MAX_DURATION_MS, description="per-request SLO override (default: the workflow's)")
    tenant: str = Field("default", description="the tenant whose copies of `workflows` the trace invokes (scenario `tenants:`)")

    @model_validator(mode="after")
    def _check(self) -> "TraceSpec":
        if self.format == "timestamps" and self.rate_scale > 1:
            raise ValueError("rate_scale: a timestamps trace can only be thinned (<= 1); raise the rate with time_scale")
        if len(set(self.workflows)) != len(self.workflows):
            raise ValueError("workflows: a workflow is listed twice")
        return self

    # ------------------------------------------------------------------ mapping

    def minute_counts(self) -> np.ndarray:
        """azure2019: counts per target workflow per minute, `[len(workflows), minutes]`, from start_minute."""
        tr = read_azure(self.path)
        counts = tr.counts[:, self.start_minute:]
        if counts.shape[1] == 0:
            raise SpecError(f"{self.path}: start_minute {self.start_minute} is past the trace's {tr.counts.shape[1]} minutes")
        k = len(self.workflows)
        out = np.zeros((k, counts.shape[1]), dtype=np.int64)
        for f, w in self.function_map().items():
            out[w] += counts[f]
        return out

    def function_map(self) -> dict[int, int]:
        """azure2019: trace function row -> index into `workflows`."""
        tr = read_azure(self.path)
        k = len(self.workflows)
        if self.mapping == "hash":
            return {f: stable_hash(name) % k for f, name in enumerate(tr.functions)}
        totals = tr.counts[:, self.start_minute:].sum(axis=1)
        n = min(self.top_n or k, len(totals))
        # NOTE: ties broken by row order (stable sort), so the mapping is the same on every machine.
        ranked = np.argsort(-totals, kind="stable")[:n]
        return {int(f): r % k for r, f in enumerate(ranked)}

    def check_load(self, load: float, where: str) -> None:
        """SpecError (naming `where`) when this trace cannot be replayed at `load`: a timestamps trace
        can only be thinned, so rate_scale x load must stay <= 1. Who calls it: the replay itself, and
        `WorkloadSpec.check_load` for every load of a sweep before the first run."""
        if self.format == "timestamps" and self.rate_scale * load > 1:
            raise SpecError(f"{where}: load {load:g} is above what the timestamps trace {self.path} can replay "
                            f"(rate_scale {self.rate_scale:g} x load must be <= 1: it can only be thinned); "
                            f"use loads <= {1 / self.rate_scale:g}, or raise its rate with time_scale in the scenario")

    def row_targets(self) -> np.ndarray | None:
        """timestamps: the index into `workflows` of each row, or None when every row goes to workflows[0]."""
        tr = read_timestamps(self.path)
        if tr.workflows is None:
            if len(self.workflows) != 1:
                raise SpecError(f"{self.path}: no workflow column, so list exactly one workflow (got {self.workflows})")
            return None
        pos = {w: i for i, w in enumerate(self.workflows)}
        out = np.empty(len(tr.workflows), dtype=np.int64)
        for r, w in enumerate(tr.workflows):
            i = pos.get(w)
            if i is None:
                raise SpecError(f"{self.path}: workflow '{w}' in the file is not in the trace's workflows {self.workflows}; add it")
            out[r] = i
        return out

    def mean_rates_rps(self, load: float = 1.0, duration_s: float | None = None) -> list[float]:
        """Mean offered rate per target workflow over the replayed window (the whole rest of the trace
        when `duration_s` is None)."""
        k = len(self.workflows)
        if self.format == "azure2019":
            c = self.minute_counts()
            minutes = c.shape[1] if duration_s is None else max(1, min(c.shape[1], int(np.ceil(duration_s * self.time_scale / 60))))
            span_s = minutes * 60.0 / self.time_scale
            return [float(c[w, :minutes].sum()) * self.rate_scale * load / span_s for w in range(k)]
        tr = read_timestamps(self.path)
        tgt = self.row_targets()
        t = tr.times_s
        lo = np.searchsorted(t, self.start_s)
        hi = len(t) if duration_s is None else np.searchsorted(t, self.start_s + duration_s * self.time_scale)
        span_s = max(((t[hi - 1] if hi > lo else self.start_s) - self.start_s) / self.time_scale, 1e-9) if duration_s is None else duration_s
        sel = np.zeros(k) if hi <= lo else np.bincount(tgt[lo:hi] if tgt is not None else np.zeros(hi - lo, dtype=np.int64), minlength=k)
        return [float(sel[w]) * self.rate_scale * load / span_s for w in range(k)]

    # ------------------------------------------------------------------ arrivals

    def arrivals(self, rng: np.random.Generator, end_ns: int, offset: int, load: float = 1.0) -> Iterator[tuple[int, int]]:
        """Time-ordered `(t_ns, offset + workflow index)` from 0 up to `end_ns`. Lazy per trace minute
        (azure2019); a timestamps trace is held in memory as one float array."""
        if self.format == "azure2019":
            return self._azure(rng, end_ns, offset, load)
        return self._timestamps(rng, end_ns, offset, load)

    def _azure(self, rng: np.random.Generator, end_ns: int, offset: int, load: float) -> Iterator[tuple[int, int]]:
        counts = self.minute_counts()
        scale = self.rate_scale * load
        minute_ns = 60 * NS_PER_S / self.time_scale
        for m in range(counts.shape[1]):
            t0 = m * minute_ns
            if t0 >= end_ns:
                return
            mean = counts[:, m] * scale
            if self.spread == "poisson":
                n = rng.poisson(mean)
            else:  # stochastic rounding keeps the expected count exact for a fractional rate_scale
                n = np.floor(mean).astype(np.int64) + (rng.random(len(mean)) < mean - np.floor(mean))
            total = int(n.sum())
            if total == 0:
                continue
            t = (t0 + rng.random(total) * minute_ns).astype(np.int64)
            w = np.repeat(np.arange(len(n)) + offset, n)
            order = np.argsort(t, kind="stable")
            for tt, ww in zip(t[order].tolist(), w[order].tolist()):
                if tt >= end_ns:
                    return
                yield tt, ww

    def _timestamps(self, rng: np.random.Generator, end_ns: int, offset: int, load: float) -> Iterator[tuple[int, int]]:
        tr = read_timestamps(self.path)
        tgt = self.row_targets()
        t = tr.times_s
        lo = int(np.searchsorted(t, self.start_s))
        self.check_load(load, str(self.path))
        keep_p = self.rate_scale * load
        chunk = 4096
        for a in range(lo, len(t), chunk):
            b = min(a + chunk, len(t))
            ts = ((t[a:b] - self.start_s) / self.time_scale * NS_PER_S).astype(np.int64)
            ws = (tgt[a:b] if tgt is not None else np.zeros(b - a, dtype=np.int64)) + offset
            if keep_p < 1:
                keep = rng.random(b - a) < keep_p
                ts, ws = ts[keep], ws[keep]
            for tt, ww in zip(ts.tolist(), ws.tolist()):
                if tt >= end_ns:
                    return
                yield tt, ww

    def resolved(self, base: Path | None, where: str) -> "TraceSpec":
        """A copy whose `path` is absolute and exists (checked now: a missing file is a one-line error
        before anything runs); the file is read and validated too."""
        p = resolve_path(self.path, base, f"{where}.path")
        out = self.model_copy(update={"path": str(p)})
        if out.format == "azure2019":
            out.function_map()
        else:
            out.row_targets()
        return out
