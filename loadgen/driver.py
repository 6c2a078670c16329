"""The live driver: replays a `WorkloadSpec` against a gateway over HTTP, open loop.

Every arrival of `loadgen.workload.arrivals()` (the very sequence `gpufaas sim` feeds its controller)
becomes one `POST /v1/workflows/{name}/invoke` sent at its scheduled time, whether or not earlier requests
have answered (open loop). Latency is measured from the request's *scheduled* send time, so a server that
stalls cannot hide its stall by slowing the sender down (no coordinated omission); the driver's own
tardiness is reported separately as schedule lag (start of the request's coroutine minus its scheduled
time). Connections are bounded (`connections`): a request that waits for a free connection waits on the
latency clock. Every request ends in exactly one `Record`, errors included, counted by kind.

Who calls it: `gpufaas loadgen` (loadgen_cmd.py), `gpufaas bench loadgen`, the tests. It changes nothing
but the gateway's state through its HTTP API. It installs no event loop policy: the CLI picks uvloop.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import aiohttp

from gpufaas.loadgen.httpfast import BadResponse, FastPool, encode_post
from gpufaas.loadgen.workload import WorkloadSpec, arrivals
from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.errors import UserError

COMPLETED = "completed"
HEAD_START_S = 0.02  # Driver's default head start: the schedule's time 0 is this long after the preflight


class Record(NamedTuple):
    """One request: scheduled time (ns from the run's start), target index, schedule lag and latency (ns,
    latency from the scheduled time), outcome kind ('completed', 'failed', 'rejected', 'timed_out',
    'http_<status>_<code>', 'connection_error', 'client_timeout', ...), slo_met from the response, and
    the gateway's own latency_ms (None when it did not answer one).

    NOTE: a tuple, not a dataclass: CPython's cyclic GC stops tracking tuples of atomic values, so a
    full collection does not walk hundreds of thousands of records and pause the send loop."""

    sched_ns: int
    target: int
    lag_ns: int
    latency_ns: int
    kind: str
    slo_met: bool
    server_ms: float | None


@dataclass
class LiveRun:
    """What a live run returns: the records (in completion order), target names, timing, usage documents."""

    gateway: str
    workflows: list[str]
    records: list[Record] = field(default_factory=list)
    duration_s: float = 0.0
    wall_s: float = 0.0
    send_span_s: float = 0.0
    usage_before: dict | None = None
    usage_after: dict | None = None
    unfinished: int = 0


def _error_kind(status: int, raw: bytes) -> str:
    try:
        code = json.loads(raw)["error"]["code"]
    except Exception:  # noqa: BLE001 (a body that is not the gateway's error JSON)
        code = "other"
    return f"http_{status}_{code}"


async def preflight(session: aiohttp.ClientSession, gateway: str, workflows: set[str], source: str) -> dict | None:
    """Before any load: the gateway answers /healthz, has every workflow `workflows` names (else a one-line
    UserError naming `source`), and /v1/usage (returned, or None when the gateway has no such route)."""
    try:
        async with session.get(f"{gateway}/healthz") as r:
            if r.status != 200:
                raise UserError(f"--gateway {gateway}: /healthz answered {r.status}; is this a gpufaas gateway?")
        async with session.get(f"{gateway}/v1/workflows") as r:
            if r.status in (401, 403):
                raise UserError(f"--gateway {gateway}: GET /v1/workflows answered {r.status}: give an API key of the workflows' "
                                "tenant (--api-key or $GPUFAAS_API_KEY)")
            if r.status != 200:
                raise UserError(f"--gateway {gateway}: GET /v1/workflows answered {r.status}; is this a gpufaas gateway?")
            doc = await r.json(content_type=None)
        have = {w["name"] for w in doc.get("workflows", [])}
        missing = sorted(workflows - have)
        if missing:
            raise UserError(f"{source}: the gateway at {gateway} has no workflow '{missing[0]}' "
                            f"(it has: {', '.join(sorted(have)) or 'none'}); deploy it (gpufaas deploy) or fix the name")
        return await fetch_usage(session, gateway)
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as e:
        raise UserError(f"--gateway {gateway}: no gateway answered ({type(e).__name__}: {str(e) or 'timeout'}); "
                        "start one with `gpufaas up` or fix the address") from None
    except (aiohttp.ClientError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--gateway {gateway}: unexpected answer ({type(e).__name__}); is this a gpufaas gateway?") from None


async def fetch_usage(session: aiohttp.ClientSession, gateway: str) -> dict | None:
    """GET /v1/usage, or None when it fails (the report then says cost is unknown)."""
    try:
        async with session.get(f"{gateway}/v1/usage") as r:
            if r.status != 200:
                return None
            return await r.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


def classify_answer(status: int, raw: bytes) -> tuple[str, bool, float | None]:
    """One gateway answer as (kind, slo_met, server latency ms): the invocation's status for a 200,
    else the error kind. Both HTTP clients of the driver call it."""
    if status != 200:
        return _error_kind(status, raw), False, None
    try:
        doc = json.loads(raw)
        return str(doc.get("status", "bad_response")), bool(doc.get("slo_met", False)), doc.get("latency_ms")
    except ValueError:
        return "bad_response", False, None


class Driver:
    """An open-loop sender for one run. Build it, then `await run()` (once).

    `progress(elapsed_s, sent, done, errors)` is called about twice a second when given (the CLI's bar).
    The schedule's time 0 is `head_start_s` after the preflight; `on_start(t0_ns)`, when given, is called
    once with that time 0 on the monotonic clock (`time.monotonic_ns()`, which every process on the host
    shares) before the first send: `loadgen.fidelity` lines the gateway's own measurements up with it.
    """

    def __init__(self, gateway: str, workload: WorkloadSpec, *, seed: int, duration_s: float, load: float = 1.0,
                 connections: int = 256, timeout_s: float = 60.0, source: str = "--workflow",
                 progress: Callable[[float, int, int, int], None] | None = None, check: bool = True,
                 client: str = "fast", api_key: str | None = None, head_start_s: float = HEAD_START_S,
                 on_start: Callable[[int], None] | None = None) -> None:
        if duration_s <= 0:
            raise UserError(f"--duration: must be > 0 seconds (got {duration_s:g})")
        if load <= 0:
            raise UserError(f"--load: must be > 0 (got {load:g})")
        if connections < 1:
            raise UserError(f"--connections: must be >= 1 (got {connections})")
        self.gateway = gateway.rstrip("/")
        self.workload = workload
        self.seed = seed
        self.duration_s = duration_s
        self.load = load
        self.connections = connections
        self.timeout_s = timeout_s
        self.source = source
        self.progress = progress
        self.check = check
        self.head_start_s = head_start_s
        self.on_start = on_start
        targets = workload.targets()
        self.workflows = [t.workflow for t in targets]
        self._urls = [f"{self.gateway}/v1/workflows/{t.workflow}/invoke" for t in targets]
        self._bodies = [json.dumps({"slo_ms": t.slo_ms} if t.slo_ms is not None else {}).encode() for t in targets]
        from urllib.parse import urlsplit

        u = urlsplit(self.gateway)
        if client not in ("fast", "aiohttp"):
            raise UserError(f"--client: {client!r} is not a client; use fast or aiohttp")
        # NOTE: the lean client speaks plain http only; an https gateway goes through aiohttp.
        self.client = client if u.scheme == "http" else "aiohttp"
        self._host, self._port = u.hostname or "127.0.0.1", u.port or 80
        base = u.path.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._raw = [encode_post(self._host, self._port, f"{base}/v1/workflows/{t.workflow}/invoke", b, self._auth)
                     for t, b in zip(targets, self._bodies)]
        self._pool: FastPool | None = None
        self._records: list[Record] = []
        self._errors = 0
        self._sent = 0

    async def _one(self, session: aiohttp.ClientSession, target: int, sched_ns: int, due_s: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        lag_ns = int((start - due_s) * NS_PER_S)
        slo_met = False
        server_ms = None
        try:
            async with session.post(self._urls[target], data=self._bodies[target], headers=_JSON_HEADERS) as resp:
                raw = await resp.read()
                status = resp.status
            kind, slo_met, server_ms = classify_answer(status, raw)
        except asyncio.CancelledError:  # still running when the drain ended: reported, never dropped
            kind = "unfinished"
        except asyncio.TimeoutError:
            kind = "client_timeout"
        except aiohttp.ServerDisconnectedError:
            kind = "disconnected"
        except aiohttp.ClientConnectionError:
            kind = "connection_error"
        except aiohttp.ClientError as e:
            kind = f"client_{type(e).__name__}"
        end = loop.time()
        if kind != COMPLETED:
            self._errors += 1
            slo_met = False
        self._records.append(Record(sched_ns, target, lag_ns, int((end - due_s) * NS_PER_S), kind, slo_met, server_ms))

    async def _one_fast(self, target: int, sched_ns: int, due_s: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        slo_met = False
        server_ms = None
        try:
            async with asyncio.timeout(self.timeout_s):
                status, raw = await self._pool.request(self._raw[target])  # type: ignore[union-attr]
            kind, slo_met, server_ms = classify_answer(status, raw)
        except asyncio.CancelledError:  # still running when the drain ended: reported, never dropped
            kind = "unfinished"
        except TimeoutError:
            kind = "client_timeout"
        except BadResponse:
            kind = "bad_response"
        except (ConnectionResetError, BrokenPipeError):
            kind = "disconnected"
        except OSError:
            kind = "connection_error"
        end = loop.time()
        if kind != COMPLETED:
            self._errors += 1
            slo_met = False
        self._records.append(Record(sched_ns, target, int((start - due_s) * NS_PER_S), int((end - due_s) * NS_PER_S), kind, slo_met, server_ms))

    async def _report_progress(self, t0: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.5)
            self.progress(loop.time() - t0, self._sent, len(self._records), self._errors)  # type: ignore[misc]

    async def run(self) -> LiveRun:
        """Preflight (no load sent if it fails), then send every arrival on time, wait for the answers
        (each bounded by `timeout_s`) and fetch /v1/usage again. Returns the raw records."""
        loop = asyncio.get_running_loop()
        out = LiveRun(self.gateway, self.workflows, duration_s=self.duration_s)
        conn = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout, skip_auto_headers=("User-Agent",), headers=self._auth) as session:
            if self.check:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), headers=self._auth) as s2:
                    out.usage_before = await preflight(s2, self.gateway, set(self.workflows), self.source)
            it = arrivals(self.workload, self.seed, self.duration_s, self.load)
            tasks: set[asyncio.Task] = set()
            # NOTE: a head start so the first arrivals (t_ns near 0) are not late by construction.
            t0 = loop.time() + self.head_start_s
            if self.on_start is not None:
                self.on_start(time.monotonic_ns() + int(self.head_start_s * NS_PER_S))
            ticker = loop.create_task(self._report_progress(t0)) if self.progress else None
            one = self._one
            sleep = asyncio.sleep
            create = loop.create_task
            discard = tasks.discard
            fast = self.client == "fast"
            if fast:
                self._pool = FastPool(self._host, self._port, self.connections)
                one_fast = self._one_fast
            for t_ns, target in it:
                due = t0 + t_ns / NS_PER_S
                delay = due - loop.time()
                if delay > 0:
                    await sleep(delay)
                task = create(one_fast(target, t_ns, due) if fast else one(session, target, t_ns, due))
                tasks.add(task)
                task.add_done_callback(discard)
                self._sent += 1
            out.send_span_s = loop.time() - t0
            if tasks:
                done, pending = await asyncio.wait(set(tasks), timeout=self.timeout_s + 5)
                for p in pending:
                    p.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                out.unfinished = len(pending)
            if ticker is not None:
                ticker.cancel()
                self.progress(loop.time() - t0, self._sent, len(self._records), self._errors)  # type: ignore[misc]
            out.wall_s = loop.time() - t0
            if self._pool is not None:
                self._pool.close()
            if self.check:
                out.usage_after = await fetch_usage(session, self.gateway)
        out.records = self._records
        return out


_JSON_HEADERS = {"Content-Type": "application/json"}


def run_blocking(driver: Driver, use_uvloop: bool = True) -> LiveRun:
    """Run `driver` on a fresh loop (uvloop when asked and installed): the CLI's and benchmark's entry."""
    factory: Any = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(driver.run())
