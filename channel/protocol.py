"""The wire format of commands and completions: fixed binary headers plus a msgpack body.

Pure functions over a buffer handed in (a ring slot, or a frame read from a socket): no I/O.
Decoding validates every length, index and type against the geometry, so that any byte
pattern yields either a value or a ProtocolError, never another exception and never an access
outside the slot or the region. The errno convention: a completion's status is 0 or -errno.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from channel.errors import ProtocolError

#: tag, opcode, flags, body_len, token, buf, data_len, ino, fh, offset, size, uid, gid, pid,
#: umask, reserved. `buf` is a data-buffer index or NO_BUFFER.
COMMAND_HEADER = struct.Struct("<QHHI16siIQQQIIIIII")
#: tag, status (0 or -errno), body_len, data_len, buf, value
COMPLETION_HEADER = struct.Struct("<QiIIiQ")

TOKEN_SIZE = 16
NO_BUFFER = -1
NO_TOKEN = bytes(TOKEN_SIZE)


class Command:
    """A decoded command. `body` is the msgpack body's value (None when empty)."""

    __slots__ = (
        "body", "buf", "data_len", "fh", "flags", "gid", "ino", "offset", "opcode", "pid",
        "size", "tag", "token", "uid", "umask",
    )  # fmt: skip

    def __init__(
        self,
        tag: int,
        opcode: int,
        flags: int,
        token: bytes,
        buf: int,
        data_len: int,
        ino: int,
        fh: int,
        offset: int,
        size: int,
        uid: int,
        gid: int,
        pid: int,
        umask: int,
        body: Any,
    ) -> None:
        self.tag = tag
        self.opcode = opcode
        self.flags = flags
        self.token = token
        self.buf = buf
        self.data_len = data_len
        self.ino = ino
        self.fh = fh
        self.offset = offset
        self.size = size
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.umask = umask
        self.body = body

    def __repr__(self) -> str:
        return f"Command(tag={self.tag}, opcode={self.opcode}, ino={self.ino}, fh={self.fh})"


class Completion:
    """A decoded completion."""

    __slots__ = ("body", "buf", "data_len", "status", "tag", "value")

    def __init__(
        self, tag: int, status: int, data_len: int, buf: int, value: int, body: Any
    ) -> None:
        self.tag = tag
        self.status = status
        self.data_len = data_len
        self.buf = buf
        self.value = value
        self.body = body

    def __repr__(self) -> str:
        return f"Completion(tag={self.tag}, status={self.status}, value={self.value})"


_packb = msgpack.packb
_unpackb = msgpack.unpackb


def pack_body(body: Any) -> bytes:
    """msgpack a body; bytes stay bytes (bin), str stays str."""
    if body is None:
        return b""
    return _packb(body, use_bin_type=True)


def unpack_body(data: bytes | memoryview) -> Any:
    """Decode a body, turning every decoder failure into a ProtocolError."""
    if not data:
        return None
    try:
        return _unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a spread of types for bad input
        raise ProtocolError(f"malformed body: {exc.__class__.__name__}") from None


def max_command_body(slot_size: int) -> int:
    return slot_size - COMMAND_HEADER.size


def max_completion_body(slot_size: int) -> int:
    return slot_size - COMPLETION_HEADER.size


def encode_command(
    slot: memoryview | bytearray,
    tag: int,
    opcode: int,
    token: bytes,
    body: bytes = b"",
    *,
    flags: int = 0,
    buf: int = NO_BUFFER,
    data_len: int = 0,
    ino: int = 0,
    fh: int = 0,
    offset: int = 0,
    size: int = 0,
    uid: int = 0,
    gid: int = 0,
    pid: int = 0,
    umask: int = 0,
) -> int:
    """Write a command into `slot`; `body` is already msgpacked. Returns the bytes used."""
    end = COMMAND_HEADER.size + len(body)
    if end > len(slot):
        raise ValueError(f"command body of {len(body)} bytes does not fit a {len(slot)}-byte slot")
    COMMAND_HEADER.pack_into(
        slot, 0, tag, opcode, flags, len(body), token, buf, data_len,
        ino, fh, offset, size, uid, gid, pid, umask, 0,
    )  # fmt: skip
    if body:
        slot[COMMAND_HEADER.size : end] = body
    return end


def decode_command(
    slot: memoryview | bytes, buf_count: int, buf_size: int, max_inline_data: int = 0
) -> Command:
    """Parse and validate a command. `buf_count`/`buf_size` are the region's pool; with
    `max_inline_data` > 0 (socket transport) the data follows the body instead."""
    try:
        (
            tag, opcode, flags, body_len, token, buf, data_len,
            ino, fh, offset, size, uid, gid, pid, umask, _reserved,
        ) = COMMAND_HEADER.unpack_from(slot, 0)  # fmt: skip
    except struct.error:
        raise ProtocolError("slot shorter than a command header") from None
    if body_len > len(slot) - COMMAND_HEADER.size:
        raise ProtocolError(f"body length {body_len} overruns the slot")
    if buf == NO_BUFFER:
        if data_len > max_inline_data:
            raise ProtocolError(f"data length {data_len} without a data buffer")
    elif not 0 <= buf < buf_count:
        raise ProtocolError(f"data buffer index {buf} out of range")
    elif data_len > buf_size:
        raise ProtocolError(f"data length {data_len} exceeds the buffer size {buf_size}")
    if size > buf_size and buf != NO_BUFFER:
        raise ProtocolError(f"size {size} exceeds the buffer size {buf_size}")
    start = COMMAND_HEADER.size
    body = unpack_body(slot[start : start + body_len])
    return Command(
        tag,
        opcode,
        flags,
        token,
        buf,
        data_len,
        ino,
        fh,
        offset,
        size,
        uid,
        gid,
        pid,
        umask,
        body,
    )


def peek_tag(slot: memoryview | bytes) -> int:
    """The tag of a slot whose command could not be decoded, so an error can answer it."""
    return int.from_bytes(slot[:8], "little") if len(slot) >= 8 else 0


def encode_completion(
    slot: memoryview | bytearray,
    tag: int,
    status: int,
    body: bytes = b"",
    *,
    data_len: int = 0,
    buf: int = NO_BUFFER,
    value: int = 0,
) -> int:
    """Write a completion into `slot`; `body` is already msgpacked. Returns the bytes used."""
    end = COMPLETION_HEADER.size + len(body)
    if end > len(slot):
        raise ValueError(f"completion body of {len(body)} bytes does not fit the slot")
    COMPLETION_HEADER.pack_into(slot, 0, tag, status, len(body), data_len, buf, value)
    if body:
        slot[COMPLETION_HEADER.size : end] = body
    return end


def decode_completion(
    slot: memoryview | bytes, buf_size: int, max_inline_data: int = 0
) -> Completion:
    """Parse and validate a completion."""
    try:
        tag, status, body_len, data_len, buf, value = COMPLETION_HEADER.unpack_from(slot, 0)
    except struct.error:
        raise ProtocolError("slot shorter than a completion header") from None
    if status > 0:
        raise ProtocolError(f"completion status {status} is neither 0 nor a negative errno")
    if body_len > len(slot) - COMPLETION_HEADER.size:
        raise ProtocolError(f"completion body length {body_len} overruns the slot")
    if data_len > max(buf_size, max_inline_data):
        raise ProtocolError(f"completion data length {data_len} is too large")
    start = COMPLETION_HEADER.size
    body = unpack_body(slot[start : start + body_len])
    return Completion(tag, status, data_len, buf, value, body)
