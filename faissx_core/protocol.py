"""The framing function: one message = a msgpack header frame + one raw frame per array.

This module is the only place that turns messages into frames and back. Arrays are handed to
ZeroMQ as buffer objects (no ``tobytes()``) and wrapped on arrival with ``np.frombuffer`` over the
received frame, so a vector is copied by the kernel and nowhere else. The header lists a
descriptor (name, dtype, shape) for each frame; decoding checks every frame against it before any
array exists.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn, cast

import msgpack
import numpy as np
import zmq
from pydantic import ValidationError

from faissx_core.errors import ProtocolError
from faissx_core.messages import MAX_HEADER_BYTES, PROTOCOL_VERSION, ArrayDesc, Reply, Request

__all__ = [
    "PROTOCOL_VERSION",
    "decode",
    "decode_reply",
    "decode_request",
    "encode",
    "recv_reply",
    "send",
]

_DTYPES = {"float32", "uint8", "int64", "uint64", "int32"}
#: dtype -> wire name; ``ndarray.dtype.name`` is surprisingly slow on the hot path.
_WIRE_NAMES = {np.dtype(name): name for name in _DTYPES}
#: wire name -> dtype, so wrapping a frame does not parse a dtype string each time.
_NP_DTYPES = {name: np.dtype(name) for name in _DTYPES}
#: Below this many bytes a message is copied into ZeroMQ: tracking a zero-copy frame costs more.
COPY_BELOW = 1 << 16
#: Frames whose size is ``nbytes``; for the others (bytes, ``zmq.Frame``) it is ``len``.
_SIZED = (memoryview, np.ndarray)
_PLAIN = (bytes, bytearray, zmq.Frame)

#: One msgpack Packer per thread: ``packb`` builds a new one per call, which costs more than the
#: packing of a small header (a Packer is not thread-safe, hence one each).
_packers = threading.local()


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
    frames[0] = _packer().pack({**header, "arrays": descs})
    return frames


#: ``zmq.SNDMORE`` as a plain int: pyzmq's flags are ``enum.Flag`` members, and combining them
#: per frame (as ``send_multipart`` does) costs more than sending a small frame.
_SNDMORE = int(zmq.SNDMORE)


def send(socket: Any, frames: list[Any], flags: int = 0) -> None:
    """Send a message's frames: by reference when large, copied when small."""
    size = 0
    for frame in frames:  # inline: this runs for every request and every reply
        if isinstance(frame, _SIZED):
            size += frame.nbytes
        elif isinstance(frame, _PLAIN):
            size += len(frame)
        else:  # checked before the first frame leaves: a message is never sent in part
            raise TypeError(f"a frame must be bytes, an array or a zmq.Frame, not {type(frame)}")
    send_parts(socket, frames, size < COPY_BELOW, flags)


def send_parts(socket: Any, frames: list[Any], copy: bool, flags: int = 0) -> None:
    """Send ``frames`` as one message; the caller has checked that every frame is a buffer, so
    no frame can fail after the first has left."""
    more = int(flags) | _SNDMORE
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        socket.send(frame, more if i < last else flags, copy=copy)


#: ``zmq.EVENTS`` and ``zmq.POLLIN`` as plain ints (see ``_SNDMORE``).
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def readable(socket: Any) -> bool:
    """Whether a message is waiting on ``socket`` (checked between every two requests)."""
    return bool(cast(int, socket.getsockopt(_EVENTS)) & _POLLIN)


def recv_frames(socket: Any) -> list[Any]:
    """Every frame of the next message, as ``zmq.Frame`` objects (not copied).

    ``recv_multipart`` asks for ``RCVMORE`` through pyzmq's flag enums per frame; a received
    frame already knows whether more follow.
    """
    frame = socket.recv(copy=False)
    frames = [frame]
    while frame.more:
        frame = socket.recv(copy=False)
        frames.append(frame)
    return frames


def decode(frames: Sequence[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split frames into the raw header dict and named arrays (read-only views of the frames)."""
    header = _header(frames)
    return header, _arrays(map(_desc, header.get("arrays", [])), frames)


def decode_request(frames: Sequence[Any]) -> tuple[Request, dict[str, np.ndarray]]:
    """The request and its arrays; the header is validated once, descriptors included."""
    if frames and frame_bytes(frames[0]) > MAX_HEADER_BYTES:  # never parse a huge header
        raise ProtocolError(
            f"header frame of {frame_bytes(frames[0])} bytes; at most {MAX_HEADER_BYTES}"
        )
    header = _header(frames)
    try:
        request = Request.model_validate(header)
    except ValidationError as exc:
        _refuse(header, frames, exc, "bad request header", version=True)
    arrays = _arrays(request.arrays, frames)
    _check_version(header)
    return request, arrays


def decode_reply(frames: Sequence[Any]) -> tuple[Reply, dict[str, np.ndarray]]:
    header = _header(frames)
    try:
        reply = Reply.model_validate(header)
    except ValidationError as exc:
        _refuse(header, frames, exc, "bad reply header", version=False)
    return reply, _arrays(reply.arrays, frames)


def recv_reply(socket: Any) -> tuple[Reply, dict[str, np.ndarray]]:
    """Receive one reply from ``socket``; each array wraps its received frame, without a copy.

    Every frame's length is checked against its descriptor before an array exists, so a reply
    header announcing more than was sent allocates nothing (what arrived is all the memory a
    reply takes). The arrays are writable views of the received frames, as faiss's are writable.
    """
    frame = socket.recv(copy=False)  # each frame says whether more follow (no RCVMORE lookup)
    try:
        reply = _reply_header(frame)
    except ProtocolError:
        while frame.more:  # the rest of a broken message must not pass for the next
            frame = socket.recv(copy=False)
        raise
    arrays: dict[str, np.ndarray] = {}
    problem = None
    for desc in reply.arrays:
        if not frame.more:
            problem = f"reply describes {len(reply.arrays)} arrays but fewer frames arrived"
            break
        frame = socket.recv(copy=False)
        if problem is not None:
            continue  # drain the message, keep the first problem
        if len(frame) != desc.nbytes:
            problem = f"array {desc.name!r}: expected {desc.nbytes} bytes, frame had {len(frame)}"
            continue
        arr = np.frombuffer(frame, dtype=_NP_DTYPES[desc.dtype])
        if not arr.flags.writeable:
            arr = arr.copy()
        arrays[desc.name] = arr.reshape(desc.shape) if desc.shape else arr.reshape(())
    extra = 0
    while frame.more:
        frame = socket.recv(copy=False)
        extra += 1
    if problem is None and extra:
        problem = f"{extra} undescribed frame(s) after the reply"
    if problem is not None:
        raise ProtocolError(problem, id=reply.id)
    return reply, arrays


def _reply_header(frame: Any) -> Reply:
    try:
        return Reply.model_validate(msgpack.unpackb(frame, raw=False))
    except ValidationError as exc:
        raise ProtocolError(f"bad reply header: {_first_error(exc)}") from None
    except Exception as exc:
        raise ProtocolError(f"reply header is not valid msgpack: {type(exc).__name__}") from None


def request_id(frames: Sequence[Any]) -> int:
    """Best-effort id of a message that failed to decode, so its error reply can be matched."""
    try:
        if frame_bytes(frames[0]) > MAX_HEADER_BYTES:
            return 0  # refused for its size: not parsed here either
        header = msgpack.unpackb(frames[0], raw=False)
        rid = header.get("id") if isinstance(header, dict) else None
        return rid if type(rid) is int and 0 <= rid < 1 << 63 else 0  # bool is an int too
    except Exception:
        return 0


def _header(frames: Sequence[Any]) -> dict[str, Any]:
    """The header frame as a dict whose ``arrays`` list (if any) matches the frames in count."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a msgpack map")
    raw_descs = header.get("arrays", [])
    if not isinstance(raw_descs, list) or len(raw_descs) != len(frames) - 1:
        got = len(raw_descs) if isinstance(raw_descs, list) else "?"
        raise ProtocolError(f"header describes {got} arrays but {len(frames) - 1} frames follow")
    return header


def _refuse(
    header: dict[str, Any], frames: Sequence[Any], exc: ValidationError, what: str, version: bool
) -> NoReturn:
    """Raise for a header the model refused, reporting what the checks that come before the
    model (each descriptor against its frame, then the version) find first, as they always did."""
    _arrays(map(_desc, header.get("arrays", [])), frames)
    if version:
        _check_version(header)
    raise ProtocolError(f"{what}: {_first_error(exc)}") from None


def _check_version(header: dict[str, Any]) -> None:
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # True == 1 in Python
        raise ProtocolError(
            f"protocol version {version!r} not supported (server speaks {PROTOCOL_VERSION})"
        )


def _desc(raw: Any) -> ArrayDesc:
    try:
        return ArrayDesc.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(f"bad array descriptor: {_first_error(exc)}") from None


def _arrays(descs: Iterable[ArrayDesc], frames: Sequence[Any]) -> dict[str, np.ndarray]:
    """Each frame after the header wrapped by its descriptor (``descs`` may be lazy: a bad
    descriptor then stops the walk where it stands, after the frames before it were checked)."""
    arrays: dict[str, np.ndarray] = {}
    for desc, frame in zip(descs, frames[1:], strict=False):  # _header matched the counts
        if desc.name in arrays:
            raise ProtocolError(f"two arrays are named {desc.name!r}")
        arrays[desc.name] = _wrap(desc, frame)
    return arrays


def _wrap(desc: ArrayDesc, frame: Any) -> np.ndarray:
    expected = desc.nbytes
    size = frame_bytes(frame)
    if size != expected:
        raise ProtocolError(
            f"array {desc.name!r}: descriptor {desc.dtype}{desc.shape} needs {expected} bytes, "
            f"frame has {size}"
        )
    arr = np.frombuffer(frame, dtype=_NP_DTYPES[desc.dtype])
    try:
        return arr.reshape(desc.shape) if desc.shape else arr.reshape(())
    except ValueError:  # a zero dimension beside others numpy cannot index: (0, 2**34, 2**34)
        raise ProtocolError(
            f"array {desc.name!r}: numpy cannot hold an array of shape {desc.shape}"
        ) from None


def frame_bytes(frame: Any) -> int:
    """Bytes in a frame: ``len`` of bytes or a ``zmq.Frame``, ``nbytes`` of an array or view
    (``getattr`` with a default is slow on a ``zmq.Frame``, which has no ``nbytes``)."""
    return frame.nbytes if isinstance(frame, _SIZED) else len(frame)


def _packer() -> msgpack.Packer:
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = msgpack.Packer(use_bin_type=True)
        return _packers.packer


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "header"
    return f"{where}: {err.get('msg', 'invalid')}"
