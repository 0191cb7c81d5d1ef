"""The server's side of a socket-transport channel: frames in, handler calls, frames out."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable

import trio

from channel.protocol.codec import (
    COMMAND_HEADER,
    COMPLETION_HEADER,
    NO_BUFFER,
    Command,
    decode_command,
    peek_tag,
    token_matches,
)
from channel.protocol.errors import ProtocolError
from channel.protocol.frames import (
    BUF_SIZE,
    FRAME_BUFFER,
    MAX_REPLY_BODY,
    RECV_SIZE,
    FrameReader,
)
from channel.protocol.handshake import LENGTH
from channel.transport.server_api import (
    ChannelIdentity,
    Identity,
    run_close_callbacks,
    serve_command,
)

log = logging.getLogger(__name__)

_EMPTY = memoryview(b"")


class SocketServerChannel(ChannelIdentity):
    """The server's side of a socket-transport channel: `ServerChannel`'s interface for the
    operations layer, plus `run(handler)`, which reads frames until the peer hangs up."""

    def __init__(self, sock: trio.socket.SocketType, who: Identity) -> None:
        super().__init__(who)
        self.sock = sock
        self.commands = 0
        self.protocol_errors = 0
        self.auth_failures = 0
        self._inputs: dict[int, memoryview] = {}
        self._outputs: dict[int, bytearray] = {}
        self._outq: list[memoryview] = []
        self._flush_wanted = trio.Event()

    def input_data(self, cmd: Command) -> memoryview:
        return self._inputs.get(cmd.tag, _EMPTY) if cmd.buf != NO_BUFFER else _EMPTY

    def output_buffer(self, cmd: Command) -> memoryview:
        if cmd.buf == NO_BUFFER:
            return _EMPTY
        out = self._outputs.get(cmd.tag)
        if out is None:
            out = self._outputs[cmd.tag] = bytearray(min(cmd.size, BUF_SIZE))
        return memoryview(out)

    def complete(
        self, tag: int, status: int, body: bytes = b"", *, data_len: int = 0, value: int = 0
    ) -> None:
        if self.closed:
            return
        self._inputs.pop(tag, None)
        out = self._outputs.pop(tag, None)
        if len(body) > MAX_REPLY_BODY:
            status, body, data_len = -errno.EOVERFLOW, b"", 0
        data = memoryview(out)[: min(data_len, len(out))] if out is not None else _EMPTY
        size = COMPLETION_HEADER.size + len(body) + len(data)
        head = LENGTH.pack(size) + COMPLETION_HEADER.pack(
            tag, status, len(body), len(data), NO_BUFFER if out is None else FRAME_BUFFER, value
        )
        self._write(head + body + data if data else head + body)

    def _write(self, message: bytes) -> None:
        if not self._outq:
            try:
                sent = os.write(self.sock.fileno(), message)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if sent == len(message):
                return
            message = message[sent:]
        self._outq.append(memoryview(message))
        self._flush_wanted.set()

    async def _flusher(self) -> None:
        fd = self.sock.fileno()
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            while self._outq:
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    sent = os.write(fd, self._outq[0])
                except BlockingIOError:
                    continue
                if sent == len(self._outq[0]):
                    self._outq.pop(0)
                else:
                    self._outq[0] = self._outq[0][sent:]

    async def run(self, handler: Callable[[SocketServerChannel, Command], None]) -> None:
        """Serve commands until the peer hangs up or breaks the framing."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher)
            try:
                await self._read_loop(handler)
            except (OSError, ProtocolError, trio.ClosedResourceError) as exc:
                log.info("socket channel %r ends: %s", self, exc)
            finally:
                nursery.cancel_scope.cancel()

    async def _read_loop(self, handler: Callable[[SocketServerChannel, Command], None]) -> None:
        reader = FrameReader()
        while True:
            chunk = await self.sock.recv(RECV_SIZE)
            if not chunk:
                return
            reader.feed(chunk)
            while (frame := reader.next_frame()) is not None:
                self._dispatch(frame, handler)
                if self.closed:
                    return

    def _dispatch(
        self, frame: bytes, handler: Callable[[SocketServerChannel, Command], None]
    ) -> None:
        self.commands += 1
        try:
            cmd = decode_command(frame, 1, BUF_SIZE)
            start = COMMAND_HEADER.size + cmd.body_len
            if start + cmd.data_len != len(frame):
                raise ProtocolError("command frame length disagrees with its header")
        except ProtocolError:
            self.protocol_errors += 1
            self.complete(peek_tag(frame), -errno.EPROTO)
            return
        if not token_matches(cmd.token, self.token):
            self.auth_failures += 1
            self.complete(cmd.tag, -errno.EACCES)
            return
        if cmd.data_len:
            self._inputs[cmd.tag] = memoryview(frame)[start:]
        serve_command(handler, self, cmd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        run_close_callbacks(self.on_close)
        self.on_close.clear()
        self._inputs.clear()
        self._outputs.clear()
        with contextlib.suppress(OSError):
            self.sock.close()
