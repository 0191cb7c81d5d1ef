"""The wire format of commands and completions: fixed binary headers plus a msgpack body.

Pure functions over a buffer handed in (a ring slot, or a frame read from a socket): no I/O.
Decoding validates every length, index and type against the geometry, so that any byte
pattern yields either a value or a ProtocolError, never another exception and never an access
outside the slot or the region. The errno convention: a completion's status is 0 or -errno.
"""

from __future__ import annotations

import hmac
import struct
import threading
from typing import Any, NamedTuple

import msgpack

from channel.protocol.errors import ProtocolError

#: tag, opcode, flags, body_len, token, buf, data_len, ino, fh, offset, size, uid, gid, pid,
#: umask, reserved. `buf` is a data-buffer index or NO_BUFFER.
COMMAND_HEADER = struct.Struct("<QHHI16siIQQQIIIIII")
#: tag, status (0 or -errno), body_len, data_len, buf, value
COMPLETION_HEADER = struct.Struct("<QiIIiQ")
_COMMAND_SIZE = COMMAND_HEADER.size
_COMPLETION_SIZE = COMPLETION_HEADER.size
_unpack_command = COMMAND_HEADER.unpack_from
_unpack_completion = COMPLETION_HEADER.unpack_from
_pack_command = COMMAND_HEADER.pack_into
_pack_completion = COMPLETION_HEADER.pack_into

TOKEN_SIZE = 16
NO_BUFFER = -1
NO_TOKEN = bytes(TOKEN_SIZE)


def token_matches(presented: bytes, expected: bytes) -> bool:
    """Does a command's token match its channel's? The one token check of both transports
    (`channel.protocol.sides_pure.ServerSide.take`, `channel.transport.socket_server`), in
    constant time; the compiled core (`_core.c`) reproduces it in C."""
    return hmac.compare_digest(presented, expected)


class Command(NamedTuple):
    """A decoded command: the header's fields in wire order, then the msgpack body's value
    (None when empty). A tuple, so that decoding builds it in one step."""

    tag: int
    opcode: int
    flags: int
    body_len: int
    token: bytes
    buf: int
    data_len: int
    ino: int
    fh: int
    offset: int
    size: int
    uid: int
    gid: int
    pid: int
    umask: int
    reserved: int
    body: Any

    def __repr__(self) -> str:
        return f"Command(tag={self.tag}, opcode={self.opcode}, ino={self.ino}, fh={self.fh})"


class Completion(NamedTuple):
    """A decoded completion: the header's fields in wire order, then the body's value."""

    tag: int
    status: int
    body_len: int
    data_len: int
    buf: int
    value: int
    body: Any

    def __repr__(self) -> str:
        return f"Completion(tag={self.tag}, status={self.status}, value={self.value})"


#: Building the tuples straight from the unpacked header plus the body skips NamedTuple's
#: keyword-matching constructor, which costs more than the whole header unpack.
_new_tuple = tuple.__new__
_unpackb = msgpack.unpackb
_packers = threading.local()


def pack_body(body: Any) -> bytes:
    """msgpack a body; bytes stay bytes (bin), str stays str."""
    if body is None:
        return b""
    try:
        pack = _packers.pack
    except AttributeError:
        # A Packer reused per thread is twice as fast as msgpack.packb, which builds one
        # per call; per thread because the server packs replies in worker threads too.
        pack = _packers.pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
    return pack(body)  # type: ignore[no-any-return]


def unpack_body(data: bytes | memoryview) -> Any:
    """Decode a body, turning every decoder failure into a ProtocolError."""
    if not data:
        return None
    try:
        return _unpackb(data)  # msgpack 1.x defaults: raw=False, strict_map_key, use_list
    except Exception as exc:  # msgpack raises a spread of types for bad input
        raise ProtocolError(f"malformed body: {exc.__class__.__name__}") from None


#: The header fields a caller sets, in the order `header_fields` returns them.
HEADER_FIELDS = ("flags", "ino", "fh", "offset", "size", "uid", "gid", "pid", "umask")
HeaderFields = tuple[int, int, int, int, int, int, int, int, int]
NO_FIELDS: HeaderFields = (0, 0, 0, 0, 0, 0, 0, 0, 0)
_FIELD_NAMES = frozenset(HEADER_FIELDS)


def header_fields(fields: dict[str, int]) -> HeaderFields:
    """The caller-set header fields of keyword arguments, in `HEADER_FIELDS` order."""
    if not fields:
        return NO_FIELDS
    unknown = fields.keys() - _FIELD_NAMES
    if unknown:
        raise TypeError(f"unknown or client-managed header fields: {sorted(unknown)}")
    get = fields.get
    return (
        get("flags", 0), get("ino", 0), get("fh", 0), get("offset", 0), get("size", 0),
        get("uid", 0), get("gid", 0), get("pid", 0), get("umask", 0),
    )  # fmt: skip


def max_command_body(slot_size: int) -> int:
    return slot_size - COMMAND_HEADER.size


def max_completion_body(slot_size: int) -> int:
    return slot_size - COMPLETION_HEADER.size


def write_command(
    slot: memoryview | bytearray,
    tag: int,
    opcode: int,
    token: bytes,
    body: bytes,
    buf: int,
    data_len: int,
    fields: HeaderFields,
) -> int:
    """Write a command into `slot`; `body` is already msgpacked. Returns the bytes used."""
    n = len(body)
    end = _COMMAND_SIZE + n
    if end > len(slot):
        raise ValueError(f"command body of {n} bytes does not fit a {len(slot)}-byte slot")
    flags, ino, fh, offset, size, uid, gid, pid, umask = fields
    _pack_command(
        slot, 0, tag, opcode, flags, n, token, buf, data_len,
        ino, fh, offset, size, uid, gid, pid, umask, 0,
    )  # fmt: skip
    if n:
        slot[_COMMAND_SIZE:end] = body
    return end


def encode_command(
    slot: memoryview | bytearray,
    tag: int,
    opcode: int,
    token: bytes,
    body: bytes = b"",
    *,
    buf: int = NO_BUFFER,
    data_len: int = 0,
    **fields: int,
) -> int:
    """`write_command` with the header fields as keywords (see HEADER_FIELDS)."""
    return write_command(slot, tag, opcode, token, body, buf, data_len, header_fields(fields))


def decode_command(
    slot: memoryview | bytes, buf_count: int, buf_size: int, max_inline_data: int = 0
) -> Command:
    """Parse and validate a command. `buf_count`/`buf_size` are the region's pool; with
    `max_inline_data` > 0 (socket transport) the data follows the body instead."""
    try:
        header = _unpack_command(slot, 0)
    except struct.error:
        raise ProtocolError("slot shorter than a command header") from None
    body_len = header[3]
    buf = header[5]
    data_len = header[6]
    if body_len > len(slot) - _COMMAND_SIZE:
        raise ProtocolError(f"body length {body_len} overruns the slot")
    if buf == NO_BUFFER:
        if data_len > max_inline_data:
            raise ProtocolError(f"data length {data_len} without a data buffer")
    elif not 0 <= buf < buf_count:
        raise ProtocolError(f"data buffer index {buf} out of range")
    elif data_len > buf_size:
        raise ProtocolError(f"data length {data_len} exceeds the buffer size {buf_size}")
    elif header[10] > buf_size:
        raise ProtocolError(f"size {header[10]} exceeds the buffer size {buf_size}")
    body = unpack_body(slot[_COMMAND_SIZE : _COMMAND_SIZE + body_len]) if body_len else None
    return _new_tuple(Command, (*header, body))


def peek_tag(slot: memoryview | bytes) -> int:
    """The tag of a slot whose command could not be decoded, so an error can answer it."""
    return int.from_bytes(slot[:8], "little") if len(slot) >= 8 else 0


def write_completion(
    slot: memoryview | bytearray,
    tag: int,
    status: int,
    body: bytes,
    data_len: int,
    buf: int,
    value: int,
) -> int:
    """Write a completion into `slot`; `body` is already msgpacked. Returns the bytes used."""
    n = len(body)
    end = _COMPLETION_SIZE + n
    if end > len(slot):
        raise ValueError(f"completion body of {n} bytes does not fit the slot")
    _pack_completion(slot, 0, tag, status, n, data_len, buf, value)
    if n:
        slot[_COMPLETION_SIZE:end] = body
    return end


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
    """`write_completion` with keywords."""
    return write_completion(slot, tag, status, body, data_len, buf, value)


def decode_completion(
    slot: memoryview | bytes, buf_size: int, max_inline_data: int = 0
) -> Completion:
    """Parse and validate a completion."""
    try:
        header = _unpack_completion(slot, 0)
    except struct.error:
        raise ProtocolError("slot shorter than a completion header") from None
    status = header[1]
    body_len = header[2]
    data_len = header[3]
    if status > 0:
        raise ProtocolError(f"completion status {status} is neither 0 nor a negative errno")
    if body_len > len(slot) - _COMPLETION_SIZE:
        raise ProtocolError(f"completion body length {body_len} overruns the slot")
    if data_len > buf_size and data_len > max_inline_data:
        raise ProtocolError(f"completion data length {data_len} is too large")
    body = unpack_body(slot[_COMPLETION_SIZE : _COMPLETION_SIZE + body_len]) if body_len else None
    return _new_tuple(Completion, (*header, body))
