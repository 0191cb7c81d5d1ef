"""Commands and completions framed over a stream socket (the socket transport's wire, no I/O).

A frame is a 4-byte little-endian length, then exactly what a ring slot would hold (command or
completion header, msgpack body), then the data inline. A command that carries data or wants
reply data sets `buf = 0`: the frame stands in for a single data buffer of
`limits.MAX_BUFFER_SIZE` bytes, so the server's `input_data`/`output_buffer` behave as on a
ring (empty when `buf` is NO_BUFFER). `FrameReader` splits a byte stream into frames; whoever
reads the socket feeds it.
"""

from __future__ import annotations

from channel.protocol import limits
from channel.protocol.codec import (
    COMMAND_HEADER,
    COMPLETION_HEADER,
    NO_BUFFER,
    Completion,
    HeaderFields,
    decode_completion,
    max_command_body,
    max_completion_body,
    write_command,
)
from channel.protocol.errors import ProtocolError
from channel.protocol.handshake import LENGTH

Buffer = bytes | bytearray | memoryview
#: The one virtual data buffer of a frame.
FRAME_BUFFER = 0
BUF_SIZE = limits.MAX_BUFFER_SIZE
MAX_BODY = max_command_body(limits.MAX_SLOT_SIZE)
MAX_REPLY_BODY = max_completion_body(limits.MAX_SLOT_SIZE)
MAX_FRAME = COMMAND_HEADER.size + MAX_BODY + BUF_SIZE
RECV_SIZE = 256 * 1024


class FrameReader:
    """Splits a byte stream into frames (pure; fed by whoever reads the socket)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: Buffer) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(buf, pos)
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit")
        end = pos + LENGTH.size + length
        if len(buf) < end:
            return None
        self._pos = end
        return bytes(buf[pos + LENGTH.size : end])


def encode_command_frame(
    tag: int,
    opcode: int,
    token: bytes,
    body: bytes,
    data: Buffer | None,
    need_buf: bool,
    fields: HeaderFields,
) -> list[Buffer]:
    """A command frame as a list of pieces for sendmsg (the data is not copied)."""
    head = bytearray(LENGTH.size + COMMAND_HEADER.size + len(body))
    data_len = len(data) if data is not None else 0
    buf = FRAME_BUFFER if need_buf else NO_BUFFER
    write_command(memoryview(head)[LENGTH.size :], tag, opcode, token, body, buf, data_len, fields)
    LENGTH.pack_into(head, 0, len(head) - LENGTH.size + data_len)
    return [head, data] if data_len and data is not None else [head]


def decode_completion_frame(frame: bytes) -> tuple[Completion, memoryview]:
    completion = decode_completion(frame, BUF_SIZE)
    start = COMPLETION_HEADER.size + completion.body_len
    if start + completion.data_len != len(frame):
        raise ProtocolError("completion frame length disagrees with its header")
    return completion, memoryview(frame)[start:]
