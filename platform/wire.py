"""The one codec between a backend and its worker processes: typed, versioned msgpack frames.

A frame is a 4-byte big-endian length N, then its body of N bytes: a 4-byte big-endian length M, one
msgpack map of M bytes (`{"v": VERSION, "k": Kind, ...}`), then, from the next multiple of `ALIGN` bytes
into the body, the frame's tensor data. A tensor in the map is a msgpack extension (code `TENSOR_EXT`)
holding `[dtype, shape, offset]`: its bytes (C order) start `offset` bytes into the data section, each
tensor's at a multiple of `ALIGN`. Never pickle: a frame can carry only maps, lists, scalars, bytes and
tensors, so decoding a frame from a broken or hostile peer can fail (`WireError`) but never run code.

NOTE: tensors out of band (version 2). The host relays every stage's outputs to the next stage's worker
(a 3x224x224 float32 image is 602 KB), and version 1 carried each tensor's bytes inside the msgpack map:
about seven copies of every byte on the gateway's loop (tobytes, the extension's pack, the map's pack, the
length prefix; the frame read, the extension's bytes, the inner unpack), 2.2 ms to encode a batch of eight
such images and 0.46 ms to decode it on this project's 2-core machine. Now `encode_parts` hands the
tensors' own buffers to the transport (`writelines`: one gathered write, no copy in Python) and `decode`
makes each tensor a read-only view of the frame it came in (no copy after the read).

Who calls it: `platform/worker.py` (the worker side, blocking sockets) and the host side, asyncio
streams: `platform/backends/process.py` and `platform/backends/docker_backend.py` (the container runs the
same worker). It changes nothing; it only turns messages into bytes and back. numpy only: the gateway
side must not import torch. A tensor header is checked (`tensor_from`: dtype, at most
`specs.MAX_TENSOR_DIMS` dims, each an int >= 0, span, byte count) before anything is computed from it.

Messages (field names are short because they cross the socket for every batch):
- HELLO  worker -> host  {"token", "pid", "t0_ns"}: connected; the token says which instance it is.
- READY  worker -> host  {"parts_ms": {"imports", "model_build", "first_batch"}, "t0_ns", "execute", "device"}
- BATCH  host -> worker  {"id", "items": [payload | None per job], "hold_ns"}: run one batch.
- RESULT worker -> host  {"id", "outputs": [dict | None], "errors": [str | None], "exec_ns"} or {"id", "error"}
- HEARTBEAT worker -> host {}: sent every heartbeat_s by a side thread, also while a batch runs.
- STOP   host -> worker  {}: finish the current batch, then exit 0.
- FAILED worker -> host  {"error"}: start-up failed (bad bundle, model build error); the worker exits.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np

from gpufaas.platform.specs import MAX_TENSOR_DIMS

VERSION = 2
TENSOR_EXT = 1
ALIGN = 64  # tensor data starts at multiples of this many bytes into the frame body (cache lines, SIMD loads)
MAX_FRAME_BYTES = 1 << 30  # 1 GiB: far above any batch here; a larger length means a corrupt stream
_LEN = struct.Struct(">I")
_LENS = struct.Struct(">II")
HEADER_BYTES = _LEN.size
_ZEROS = bytes(ALIGN)

# dtypes a tensor may carry (the FunctionSpec dtypes; bfloat16 has no numpy type and travels as float32)
_DTYPES = frozenset({"float32", "float16", "float64", "int64", "int32", "uint8", "bool", "int8", "int16"})


class Kind(IntEnum):
    """Message kinds (ints on the wire: compact and cheap to compare)."""

    HELLO = 1
    READY = 2
    BATCH = 3
    RESULT = 4
    HEARTBEAT = 5
    STOP = 6
    FAILED = 7


class WireError(Exception):
    """A frame that cannot be decoded: bad length, bad msgpack, wrong version, unknown kind, bad tensor."""


def _plain(obj: Any) -> Any:
    """msgpack's `default` for what is not a tensor: numpy scalars and enum members as plain values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, IntEnum):
        return int(obj)
    raise TypeError(f"cannot send {type(obj).__name__}; a message holds maps, lists, scalars, bytes and numpy arrays")


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class TensorHeaderError(ValueError):
    """A (dtype, shape, data) triple that is not a tensor; `part` says which of the three is wrong."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


def tensor_from(dtype: object, shape: object, raw: object, dtypes: frozenset[str]) -> np.ndarray:
    """A read-only array on `raw` (no copy; receivers that need to write copy first) after checking, in this
    order: `dtype` is a str in `dtypes`; `shape` is a list of at most MAX_TENSOR_DIMS ints >= 0 (bools are
    not ints here) whose non-zero dims span at most MAX_FRAME_BYTES; `raw` is bytes of exactly shape x
    itemsize. TensorHeaderError naming the part otherwise.

    Who calls it: `gateway.api.decode_tensor` (msgpack requests; frames from workers go through `_tensor_at`, the
    same checks on a tensor stored out of band). Pure.
    NOTE: the type checks come before any lookup or arithmetic (a list dtype is unhashable), and the span is
    bounded dim by dim, so a hostile shape never builds a huge integer; zeros are skipped in the span because
    numpy refuses a shape whose non-zero dims overflow even when the array is empty."""
    dt, dims, n = _span(dtype, shape, dtypes)  # the header's own errors first
    if type(raw) is not bytes:
        raise TensorHeaderError("data", f"expected bytes, got {type(raw).__name__}")
    if n != len(raw):
        raise TensorHeaderError("data", f"{dtype}{str(shape)[:80]} needs {n} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt).reshape(dims)


def _span(dtype: object, shape: object, dtypes: frozenset[str]) -> tuple[np.dtype, list[int], int]:
    """The dtype, shape and byte count of a tensor header: `dtype` a str in `dtypes`, `shape` a list of at most
    MAX_TENSOR_DIMS ints >= 0 spanning at most MAX_FRAME_BYTES; TensorHeaderError naming the part otherwise."""
    if type(dtype) is not str or dtype not in dtypes:
        raise TensorHeaderError("dtype", f"unknown dtype {str(dtype)[:40]!r}; use one of {sorted(dtypes)}")
    if type(shape) is not list or len(shape) > MAX_TENSOR_DIMS or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorHeaderError("shape", f"{str(shape)[:80]} is not a list of at most {MAX_TENSOR_DIMS} integers >= 0")
    dt = np.dtype(dtype)
    span = dt.itemsize
    for d in shape:
        if d:
            span *= d
            if span > MAX_FRAME_BYTES:
                raise TensorHeaderError("shape", f"{str(shape)[:80]} of {dtype} spans over {MAX_FRAME_BYTES} bytes (a frame)")
    return dt, shape, 0 if 0 in shape else span


def _tensor_at(dtype: object, shape: object, offset: object, data: memoryview) -> np.ndarray:
    """A read-only array on `data[offset:]` (no copy) after the checks of `tensor_from`, and `offset` an int
    >= 0 at which the tensor's bytes fit in `data`. TensorHeaderError naming the part otherwise."""
    dt, dims, n = _span(dtype, shape, _DTYPES)
    if type(offset) is not int or offset < 0 or offset + n > len(data):
        raise TensorHeaderError("data", f"{dtype}{str(shape)[:80]} at offset {str(offset)[:24]} needs {n} bytes, "
                                        f"the frame holds {len(data)}")
    arr = np.frombuffer(data, dtype=dt, count=n // dt.itemsize, offset=offset).reshape(dims)
    arr.flags.writeable = False  # a view of the frame: receivers that need to write copy first
    return arr


def encode_parts(kind: Kind, **fields: Any) -> list[bytes | memoryview]:
    """One framed message as the buffers to write in order (`StreamWriter.writelines`, a gathered write):
    the lengths, the msgpack map with the version and kind, then each tensor's own bytes (no copy of a
    C-contiguous array; other layouts are made contiguous) with the alignment padding. The caller must not
    change a tensor until the write is done (the backends send outputs no one writes to). TypeError on
    unsendable values."""
    tensors: list[np.ndarray] = []
    end = 0

    def default(obj: Any) -> Any:
        nonlocal end
        if isinstance(obj, np.ndarray):
            name = obj.dtype.name
            if name not in _DTYPES:
                raise TypeError(f"cannot send a tensor of dtype {name}; use one of {sorted(_DTYPES)}")
            a = np.ascontiguousarray(obj)
            offset = end
            end = _aligned(offset + a.nbytes)
            tensors.append(a)
            # NOTE: the shape comes from obj (ascontiguousarray makes a 0-d array 1-d)
            return msgpack.ExtType(TENSOR_EXT, msgpack.packb([name, list(obj.shape), offset], use_bin_type=True))
        return _plain(obj)

    fields["v"] = VERSION
    fields["k"] = int(kind)
    meta = msgpack.packb(fields, default=default, use_bin_type=True)
    head = HEADER_BYTES + len(meta)
    pad = _aligned(head) - head if tensors else 0
    parts: list[bytes | memoryview] = [_LENS.pack(head + pad + end, len(meta)), meta]
    if pad:
        parts.append(_ZEROS[:pad])
    for a in tensors:
        if a.nbytes:
            parts.append(a.data.cast("B"))
            tail = _aligned(a.nbytes) - a.nbytes
            if tail:
                parts.append(_ZEROS[:tail])
    return parts


def encode(kind: Kind, **fields: Any) -> bytes:
    """`encode_parts` joined into one bytes object (a blocking `sendall`, the tests)."""
    return b"".join(encode_parts(kind, **fields))


def ready_parts_ms(ready: dict) -> dict[str, float]:
    """A READY message's worker-measured start-up parts as `inst.info` keys: `imports_ms`,
    `model_build_ms`, `first_batch_ms` (rounded to us). Who calls it: the process and docker backends,
    so that the same figure has the same name whichever backend reports it."""
    return {f"{k}_ms": round(float(v), 3) for k, v in (ready.get("parts_ms") or {}).items()}


def frame_length(header: bytes | bytearray) -> int:
    """Body length from a 4-byte frame header; WireError if it is out of range."""
    if len(header) != HEADER_BYTES:
        raise WireError(f"truncated frame header ({len(header)} of {HEADER_BYTES} bytes)")
    (n,) = _LEN.unpack(header)
    if n == 0 or n > MAX_FRAME_BYTES:
        raise WireError(f"frame length {n} is outside 1..{MAX_FRAME_BYTES}")
    return n


def decode(body: bytes | bytearray | memoryview) -> tuple[Kind, dict]:
    """The kind and fields of one frame body (without its length prefix). WireError when malformed.
    Tensors are read-only views of `body` (which they keep alive)."""
    view = memoryview(body)
    if len(view) < HEADER_BYTES:
        raise WireError(f"malformed frame: {len(view)} bytes, shorter than its map's length")
    (m,) = _LEN.unpack_from(view)
    head = HEADER_BYTES + m
    if head > len(view):
        raise WireError(f"malformed frame: its map of {m} bytes overruns the frame's {len(view)}")
    data = view[min(_aligned(head), len(view)):]

    def ext_hook(code: int, ext: bytes) -> Any:
        if code != TENSOR_EXT:
            raise WireError(f"unknown extension type {code} (this side speaks wire version {VERSION})")
        try:
            dtype, shape, offset = msgpack.unpackb(ext, raw=False)
        except Exception as e:  # noqa: BLE001 - any decode failure is a malformed tensor
            raise WireError(f"malformed tensor: {e}") from None
        try:
            return _tensor_at(dtype, shape, offset, data)
        except TensorHeaderError as e:
            raise WireError(f"malformed tensor{' header' if e.part != 'data' else ''}: {e.part}: {e}") from None

    try:
        msg = msgpack.unpackb(view[HEADER_BYTES:head], ext_hook=ext_hook, raw=False, strict_map_key=True)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for garbage
        raise WireError(f"malformed frame: {type(e).__name__}: {e}") from None
    if not isinstance(msg, dict):
        raise WireError(f"malformed frame: expected a map, got {type(msg).__name__}")
    v = msg.pop("v", None)
    if v != VERSION:
        raise WireError(f"wire version {v!r} is not supported (this side speaks version {VERSION}); run matching gpufaas versions")
    k = msg.pop("k", None)
    try:
        kind = Kind(k)
    except ValueError:
        raise WireError(f"unknown message kind {k!r}") from None
    return kind, msg


def decode_frame(frame: bytes) -> tuple[Kind, dict]:
    """Decode one whole frame (length prefix included); WireError when the length does not match."""
    n = frame_length(frame[:HEADER_BYTES])
    body = memoryview(frame)[HEADER_BYTES:]
    if len(body) != n:
        raise WireError(f"frame says {n} bytes, holds {len(body)}")
    return decode(body)


async def read_message(reader: Any) -> tuple[Kind, dict]:
    """Read one message from an asyncio StreamReader (IncompleteReadError at end of stream)."""
    n = frame_length(await reader.readexactly(HEADER_BYTES))
    return decode(await reader.readexactly(n))


def recv_message(sock: Any) -> tuple[Kind, dict] | None:
    """Read one message from a blocking socket; None at a clean end of stream before a frame starts."""
    head = _recv_exact(sock, HEADER_BYTES, allow_eof=True)
    if head is None:
        return None
    body = _recv_exact(sock, frame_length(head), allow_eof=False)
    assert body is not None
    return decode(body)


def _recv_exact(sock: Any, n: int, *, allow_eof: bool) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            if got == 0 and allow_eof:
                return None
            raise WireError(f"connection closed mid-frame ({got} of {n} bytes)")
        got += r
    return buf  # NOTE: not bytes(buf): the frame's tensors are read-only views of this buffer, not a copy
