"""The framing function: one message = a msgpack header frame + one raw frame per array.

This module is the only place that turns messages into frames and back. Arrays are handed to
ZeroMQ as buffer objects (no ``tobytes()``) and wrapped on arrival with ``np.frombuffer`` over the
received frame, so a vector is copied by the kernel and nowhere else. The header lists a
descriptor (name, dtype, shape) for each frame; decoding checks every frame against it before any
array exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
from pydantic import ValidationError

from faissx_core.errors import ProtocolError
from faissx_core.messages import MAX_HEADER_BYTES, PROTOCOL_VERSION, ArrayDesc, Reply, Request

__all__ = [
    "PROTOCOL_VERSION", "decode", "decode_reply", "decode_request", "encode", "recv_reply", "send",
]

_DTYPES = {"float32", "uint8", "int64", "uint64", "int32"}
#: dtype -> wire name; ``ndarray.dtype.name`` is surprisingly slow on the hot path.
_WIRE_NAMES = {np.dtype(name): name for name in _DTYPES}
#: Below this many bytes a message is copied into ZeroMQ: tracking a zero-copy frame costs more.
COPY_BELOW = 1 << 16


def encode(header: dict[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list[Any]:
    """Frames for ``header`` plus ``arrays``; descriptors are added to the header here.

    Arrays must already be C-contiguous and of a wire dtype: callers convert at the edge where
    they know what faiss would accept, so nothing is copied silently here.
    """
    frames: list[Any] = [b""]
    descs = []
    for name, arr in (arrays or {}).items():
        wire_name = _WIRE_NAMES.get(arr.dtype)
        if wire_name is None:
            raise ProtocolError(f"array {name!r}: dtype {arr.dtype} cannot travel on the wire")
        if not arr.flags.c_contiguous:
            raise ProtocolError(f"array {name!r} is not C-contiguous")
        descs.append({"name": name, "dtype": wire_name, "shape": list(arr.shape)})
        frames.append(arr if arr.ndim else arr.reshape(1))
    header = {**header, "arrays": descs}
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


def send(socket: Any, frames: list[Any], flags: int = 0) -> None:
    """Send a message's frames: by reference when large, copied when small."""
    small = sum(getattr(f, "nbytes", None) or len(f) for f in frames) < COPY_BELOW
    socket.send_multipart(frames, flags=flags, copy=small)


def decode(frames: Sequence[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split frames into the raw header dict and named arrays (read-only views of the frames)."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = msgpack.unpackb(_bytes(frames[0]), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a msgpack map")
    raw_descs = header.get("arrays", [])
    if not isinstance(raw_descs, list) or len(raw_descs) != len(frames) - 1:
        got = len(raw_descs) if isinstance(raw_descs, list) else "?"
        raise ProtocolError(f"header describes {got} arrays but {len(frames) - 1} frames follow")
    arrays: dict[str, np.ndarray] = {}
    for raw, frame in zip(raw_descs, frames[1:], strict=True):
        try:
            desc = ArrayDesc.model_validate(raw)
        except ValidationError as exc:
            raise ProtocolError(f"bad array descriptor: {_first_error(exc)}") from None
        if desc.name in arrays:
            raise ProtocolError(f"two arrays are named {desc.name!r}")
        arrays[desc.name] = _wrap(desc, frame)
    return header, arrays


def decode_request(frames: Sequence[Any]) -> tuple[Request, dict[str, np.ndarray]]:
    if frames and len(_bytes(frames[0])) > MAX_HEADER_BYTES:  # never parse a huge header
        raise ProtocolError(f"header frame of {len(_bytes(frames[0]))} bytes; at most "
                            f"{MAX_HEADER_BYTES}")
    header, arrays = decode(frames)
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # True == 1 in Python
        raise ProtocolError(
            f"protocol version {version!r} not supported (server speaks {PROTOCOL_VERSION})"
        )
    try:
        return Request.model_validate(header), arrays
    except ValidationError as exc:
        raise ProtocolError(f"bad request header: {_first_error(exc)}") from None


def decode_reply(frames: Sequence[Any]) -> tuple[Reply, dict[str, np.ndarray]]:
    header, arrays = decode(frames)
    try:
        return Reply.model_validate(header), arrays
    except ValidationError as exc:
        raise ProtocolError(f"bad reply header: {_first_error(exc)}") from None


def recv_reply(socket: Any) -> tuple[Reply, dict[str, np.ndarray]]:
    """Receive one reply from ``socket``; each array wraps its received frame, without a copy.

    Every frame's length is checked against its descriptor before an array exists, so a reply
    header announcing more than was sent allocates nothing (what arrived is all the memory a
    reply takes). The arrays are writable views of the received frames, as faiss's are writable.
    """
    try:
        reply = _reply_header(socket.recv())
    except ProtocolError:
        while socket.rcvmore:  # the rest of a broken message must not pass for the next one
            socket.recv(copy=False)
        raise
    arrays: dict[str, np.ndarray] = {}
    problem = None
    for desc in reply.arrays:
        if not socket.rcvmore:
            problem = f"reply describes {len(reply.arrays)} arrays but fewer frames arrived"
            break
        frame = socket.recv(copy=False)
        if problem is not None:
            continue  # drain the message, keep the first problem
        if len(frame) != desc.nbytes:
            problem = f"array {desc.name!r}: expected {desc.nbytes} bytes, frame had {len(frame)}"
            continue
        buf = frame.buffer
        arr = np.frombuffer(buf if not buf.readonly else bytearray(buf), dtype=desc.dtype)
        arrays[desc.name] = arr.reshape(desc.shape) if desc.shape else arr.reshape(())
    extra = 0
    while socket.rcvmore:
        socket.recv(copy=False)
        extra += 1
    if problem is None and extra:
        problem = f"{extra} undescribed frame(s) after the reply"
    if problem is not None:
        raise ProtocolError(problem, id=reply.id)
    return reply, arrays


def _reply_header(frame: bytes) -> Reply:
    try:
        return Reply.model_validate(msgpack.unpackb(frame, raw=False))
    except ValidationError as exc:
        raise ProtocolError(f"bad reply header: {_first_error(exc)}") from None
    except Exception as exc:
        raise ProtocolError(f"reply header is not valid msgpack: {type(exc).__name__}") from None


def request_id(frames: Sequence[Any]) -> int:
    """Best-effort id of a message that failed to decode, so its error reply can be matched."""
    try:
        if len(_bytes(frames[0])) > MAX_HEADER_BYTES:
            return 0  # refused for its size: not parsed here either
        header = msgpack.unpackb(_bytes(frames[0]), raw=False)
        rid = header.get("id") if isinstance(header, dict) else None
        return rid if type(rid) is int and 0 <= rid < 1 << 63 else 0  # bool is an int too
    except Exception:
        return 0


def _wrap(desc: ArrayDesc, frame: Any) -> np.ndarray:
    dtype = np.dtype(desc.dtype)
    count = 1
    for dim in desc.shape:
        count *= dim
    buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    expected = (count or 0) * dtype.itemsize if desc.shape else dtype.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(
            f"array {desc.name!r}: descriptor {desc.dtype}{desc.shape} needs {expected} bytes, "
            f"frame has {buf.nbytes}"
        )
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(desc.shape) if desc.shape else arr.reshape(())


def _bytes(frame: Any) -> bytes | memoryview:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "header"
    return f"{where}: {err.get('msg', 'invalid')}"
