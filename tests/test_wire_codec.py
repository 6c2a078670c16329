"""The wire codec: typed, versioned frames; tensors out of band as (dtype, shape, offset) and their bytes,
read back as read-only views without a copy; malformed frames refused."""

from __future__ import annotations

import socket
import struct

import msgpack
import numpy as np
import pytest

from gpufaas.platform import wire
from gpufaas.platform.wire import Kind, WireError
from tests.helpers import wire_body


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32", "uint8", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4)])
def test_tensor_round_trip(dtype: str, shape: tuple) -> None:
    rng = np.random.default_rng(1)
    a = np.asarray(rng.standard_normal(shape) * 100).astype(dtype)
    frame = wire.encode(Kind.BATCH, id=7, items=[{"x": a}, None, {"y": a}], hold_ns=None)
    kind, m = wire.decode_frame(frame)
    assert kind is Kind.BATCH and m["id"] == 7 and m["items"][1] is None and m["hold_ns"] is None
    for b in (m["items"][0]["x"], m["items"][2]["y"]):
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
        assert not b.flags.writeable  # a view of the frame, not a copy
    if a.nbytes:
        assert np.shares_memory(m["items"][0]["x"], np.frombuffer(frame, np.uint8))


def test_tensor_bytes_are_aligned_and_handed_over_without_a_copy() -> None:
    """`encode_parts` gives the transport each contiguous tensor's own buffer; the decoded tensors start at
    multiples of wire.ALIGN into the body."""
    a, b = np.arange(10, dtype=np.float32), np.ones((3, 5), np.uint8)
    parts = wire.encode_parts(Kind.RESULT, outputs=[{"a": a}, {"b": b}])
    views = [p for p in parts if isinstance(p, memoryview)]
    assert len(views) == 2 and np.shares_memory(np.frombuffer(views[0], np.float32), a)
    body = b"".join(parts)[4:]
    _, m = wire.decode(body)
    base = np.frombuffer(body, np.uint8).ctypes.data
    assert all((m["outputs"][i][k].ctypes.data - base) % wire.ALIGN == 0 for i, k in ((0, "a"), (1, "b")))


def test_non_contiguous_and_scalars() -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    _, m = wire.decode_frame(wire.encode(Kind.RESULT, outputs=[{"y": a}], n=np.int64(3), errors=["bad", None]))
    assert np.array_equal(m["outputs"][0]["y"], a) and m["n"] == 3 and m["errors"] == ["bad", None]


def test_unsendable_objects_are_refused_not_pickled() -> None:
    class Thing:
        pass

    with pytest.raises(TypeError, match="cannot send Thing"):
        wire.encode(Kind.BATCH, items=[Thing()])
    with pytest.raises(TypeError, match="dtype"):
        wire.encode(Kind.BATCH, items=[np.array(["a"], dtype=object)])


def _tensor_ext(dtype: object, shape: object, offset: object) -> msgpack.ExtType:
    return msgpack.ExtType(wire.TENSOR_EXT, msgpack.packb([dtype, shape, offset], use_bin_type=True))


V = wire.VERSION


@pytest.mark.parametrize("body, match", [
    (b"\xc1\xc1", "shorter than its map's length"),
    (struct.pack(">I", 9) + b"\x80", "overruns"),
    (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "malformed frame"),
    (wire_body([1, 2]), "expected a map"),
    (wire_body({"v": 99, "k": 3}), "wire version 99"),
    (wire_body({"v": 1, "k": 3}), "wire version 1 is not supported"),  # version 1 carried tensors in the map
    (wire_body({"k": 3}), "wire version None"),
    (wire_body({"v": V, "k": 42}), "unknown message kind 42"),
    (wire_body({"v": V, "k": 3, "x": _tensor_ext("float32", [2, 2], 0)}, b"\0" * 15), "needs 16 bytes, the frame holds 15"),
    (wire_body({"v": V, "k": 3, "x": _tensor_ext("float32", [2], 1)}, b"\0" * 8), "at offset 1 needs 8 bytes"),
    (wire_body({"v": V, "k": 3, "x": _tensor_ext("uint8", [1], -1)}, b"\0"), "at offset -1"),
    (wire_body({"v": V, "k": 3, "x": _tensor_ext("uint8", [1], b"\0")}, b"\0"), "malformed tensor: data"),
    (wire_body({"v": V, "k": 3, "x": _tensor_ext("object", [1], 0)}, b"\0"), "malformed tensor header"),
    (wire_body({"v": V, "k": 3, "x": _tensor_ext("uint8", [-1], 0)}), "malformed tensor header"),
    (wire_body({"v": V, "k": 3, "x": msgpack.ExtType(9, b"")}), "unknown extension type 9"),
])
def test_malformed_frames(body: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.decode(body)


def test_bad_lengths() -> None:
    with pytest.raises(WireError, match="outside"):
        wire.frame_length(struct.pack(">I", 0))
    with pytest.raises(WireError, match="outside"):
        wire.frame_length(struct.pack(">I", wire.MAX_FRAME_BYTES + 1))
    frame = wire.encode(Kind.HEARTBEAT)
    with pytest.raises(WireError, match="holds"):
        wire.decode_frame(frame[:-1])


def test_socket_stream_of_frames_and_truncation() -> None:
    a, b = socket.socketpair()
    with a, b:
        big = np.ones((8, 1024), np.float32)  # under the socket buffer: nobody reads while we send
        a.sendall(wire.encode(Kind.HELLO, token="5") + wire.encode(Kind.RESULT, outputs=[{"y": big}]))
        assert wire.recv_message(b) == (Kind.HELLO, {"token": "5"})
        kind, m = wire.recv_message(b)
        assert kind is Kind.RESULT and np.array_equal(m["outputs"][0]["y"], big)
        frame = wire.encode(Kind.STOP)
        a.sendall(frame[:-1])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(WireError, match="closed mid-frame"):
            wire.recv_message(b)
    c, d = socket.socketpair()
    with c, d:
        c.close()
        assert wire.recv_message(d) is None  # clean end of stream


async def test_asyncio_reader() -> None:
    import asyncio

    r = asyncio.StreamReader()
    r.feed_data(wire.encode(Kind.READY, parts_ms={"imports": 1.5}))
    r.feed_data(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    r.feed_eof()
    assert await wire.read_message(r) == (Kind.READY, {"parts_ms": {"imports": 1.5}})
    with pytest.raises(WireError):
        await wire.read_message(r)


def test_ready_parts_named_as_in_every_backends_info() -> None:
    _, m = wire.decode_frame(wire.encode(Kind.READY, parts_ms={"imports": 12.34567, "model_build": 0, "first_batch": 1}))
    assert wire.ready_parts_ms(m) == {"imports_ms": 12.346, "model_build_ms": 0.0, "first_batch_ms": 1.0}
    assert wire.ready_parts_ms({}) == {}


def test_bytes_items_cross_unchanged() -> None:
    """What the docker backend's own codec used to carry (raw bytes beside tensors) the one codec carries too."""
    frame = np.arange(12, dtype=np.float16).reshape(3, 4)
    _, m = wire.decode_frame(wire.encode(Kind.BATCH, id=1, items=[{"frame": frame, "raw": b"\x00\x01"}], hold_ns=0))
    item = m["items"][0]
    assert item["raw"] == b"\x00\x01" and item["frame"].dtype == np.float16 and np.array_equal(item["frame"], frame)
