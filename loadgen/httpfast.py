"""A lean HTTP/1.1 client for the live driver's hot path: keep-alive connections over asyncio protocols.

NOTE: issue 7 asks for an aiohttp client; aiohttp's client costs about 300 us of CPU per request here
(measured with `gpufaas bench loadgen --client aiohttp`), which on a shared core cannot hold 2,000 rps
on schedule. This client sends pre-encoded requests and parses only the status line, Content-Length and
Connection headers of the gateway's answers (aiohttp's server always sends Content-Length for the
bodies the gateway returns), so it costs a fraction of that. aiohttp stays for everything else
(preflight, /v1/usage, https gateways, and `--client aiohttp`).

Bounded: at most `limit` connections; a request that finds them all busy waits in FIFO order, and that
wait counts in its latency (the driver measures from the scheduled send time).

`closed_loop` drives one server as hard as a fixed number of connections can: each sends its next
request from the protocol callback that received the previous answer (no future or task per request).

Who calls it: `loadgen.driver.Driver` (`FastPool`), `gpufaas bench gateway` (`closed_loop`, and a
one-connection `FastPool` for sequential round trips).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Callable


class BadResponse(Exception):
    """The server's answer is not HTTP/1.1 with a Content-Length (chunked bodies are not supported)."""


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "buf", "fut", "need", "hdr", "status", "close_after", "closed")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future | None = None
        self.need = -1
        self.hdr = 0
        self.status = 0
        self.close_after = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i]).lower()
            try:
                self.status = int(head[9:12])
                j = head.index(b"content-length:")
                k = head.find(b"\r\n", j)
                self.need = i + 4 + int(head[j + 15:k if k >= 0 else len(head)])
            except ValueError:
                self._fail(BadResponse("no status or Content-Length"))
                return
            self.hdr = i + 4
            self.close_after = b"connection: close" in head
        if len(buf) >= self.need:
            body = bytes(buf[self.hdr:self.need])
            del buf[:self.need]
            self.need = -1
            self._answer(self.status, body)

    def _answer(self, status: int, body: bytes) -> None:
        """One whole response arrived: hand it to the waiting request."""
        fut = self.fut
        self.fut = None
        if fut is not None and not fut.done():
            fut.set_result((status, body))

    def _fail(self, exc: BaseException) -> None:
        fut = self.fut
        self.fut = None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self.fut
        self.fut = None
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionResetError("server closed the connection"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastPool:
    """Keep-alive connections to one host:port, at most `limit`; `request(raw)` sends pre-encoded bytes."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self._idle: list[_Conn] = []
        self._open = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def _acquire(self) -> _Conn:
        while self._idle:
            c = self._idle.pop()
            if not c.closed:
                return c
            self._open -= 1
        if self._open < self.limit:
            self._open += 1
            try:
                _, c = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
            except BaseException:
                self._open -= 1
                self._wake()
                raise
            return c
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return await fut

    def _wake(self) -> None:
        """A slot freed without a connection to hand over: let the first waiter open one."""
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                self._open += 1
                task = asyncio.ensure_future(self._open_for(w))
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
                return

    async def _open_for(self, w: asyncio.Future) -> None:
        try:
            _, c = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        except BaseException as e:
            self._open -= 1
            if not w.done():
                w.set_exception(e)
            return
        if w.done():
            self._release(c)
        else:
            w.set_result(c)

    def _release(self, c: _Conn) -> None:
        if c.closed or c.close_after:
            c.close()
            self._open -= 1
            self._wake()
            return
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(c)
                return
        self._idle.append(c)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request; (status, body). Raises OSError/ConnectionError/BadResponse; cancellation-safe."""
        c = await self._acquire()
        fut = asyncio.get_running_loop().create_future()
        c.fut = fut
        ok = False
        try:
            c.transport.write(raw)  # type: ignore[union-attr]
            out = await fut
            ok = True
            return out
        finally:
            if ok:
                self._release(c)
            else:
                c.fut = None
                c.close()
                self._open -= 1
                self._wake()

    def close(self) -> None:
        """Close every idle connection (in-flight ones close as their requests end)."""
        for c in self._idle:
            c.close()
        self._idle.clear()


def encode_post(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A complete POST request with a JSON body, keep-alive; `headers` adds lines (e.g. Authorization)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _LoopConn(_Conn):
    """A `closed_loop` connection: sends `raw`, and again from each 200 answer until `stop_at` (loop time).
    Its `fut` resolves once, with the number of answers, or with the first error."""

    __slots__ = ("raw", "stop_at", "count", "now")

    def __init__(self, raw: bytes, stop_at: float, fut: asyncio.Future, now: Callable[[], float]) -> None:
        super().__init__()
        self.raw = raw
        self.stop_at = stop_at
        self.fut = fut
        self.count = 0
        self.now = now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.write(self.raw)  # type: ignore[union-attr]

    def _answer(self, status: int, body: bytes) -> None:
        if status != 200:
            self._fail(BadResponse(f"server answered {status}: {body[:200]!r}"))
            return
        self.count += 1
        if self.now() >= self.stop_at:
            fut = self.fut
            self.fut = None
            if fut is not None and not fut.done():
                fut.set_result(self.count)
            self.close()
        else:
            self.transport.write(self.raw)  # type: ignore[union-attr]


async def closed_loop(host: str, port: int, raw: bytes, connections: int, duration_s: float) -> tuple[int, float]:
    """Closed-loop load: `connections` keep-alive connections, one request (`raw`) in flight each, for
    `duration_s` (a connection sends again as soon as its answer is in, until the time is up). Returns
    (answers, seconds, connecting included). Raises BadResponse on an answer other than 200, and
    ConnectionResetError when the server closes a connection."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop_at = t0 + duration_s
    futs: list[asyncio.Future] = [loop.create_future() for _ in range(connections)]
    conns: list[_LoopConn] = []
    try:
        for f in futs:
            _, c = await loop.create_connection(functools.partial(_LoopConn, raw, stop_at, f, loop.time), host, port)
            conns.append(c)
        counts = await asyncio.gather(*futs)
    finally:
        for c in conns:
            c.close()
    return sum(counts), loop.time() - t0
