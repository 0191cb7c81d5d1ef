"""The same endpoints without shared memory: commands and completions framed over the socket.

The baseline the benchmarks compare the rings against, and a fallback where memfds cannot be
passed. The frames are `channel.protocol.frames`'; the hello says `transport: "socket"` and
carries no fds. `SocketBlockingClient` and `SocketTrioClient` have the shared-memory clients'
`call` and `call_into`; the server's side is `channel.transport.socket_server`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self, Unpack

import trio

from channel.protocol import handshake, limits
from channel.protocol.codec import Completion
from channel.protocol.errors import ChannelClosed, ProtocolError
from channel.protocol.frames import (
    BUF_SIZE,
    MAX_BODY,
    RECV_SIZE,
    FrameReader,
    decode_completion_frame,
    encode_command_frame,
)
from channel.transport.calls import (
    AsyncCalls,
    AsyncEnd,
    BlockingCalls,
    Reply,
    Request,
    Waiter,
    make_reply,
)
from channel.transport.handshake_io import HelloOptions, connect_socket

log = logging.getLogger(__name__)


def _reply_data(
    completion: Completion, data: memoryview, read_size: int, dest: memoryview | None
) -> bytes | None:
    if dest is not None:
        n = min(len(data), len(dest))
        dest[:n] = data[:n]
        return None
    if read_size <= 0:
        return None
    return bytes(data[:read_size])


class SocketBlockingClient(BlockingCalls):
    """`BlockingClient`'s API over the socket alone; thread-safe (one call at a time)."""

    buf_size = BUF_SIZE
    max_body = MAX_BODY

    def __init__(self, sock: socket.socket, accept: handshake.Accept) -> None:
        self.sock = sock
        self.channel_id = accept.channel_id
        self.token = accept.token
        self.server_pid = accept.server_pid
        self.closed = False
        self._reader = FrameReader()
        self._lock = threading.Lock()
        self._next_tag = 1

    @classmethod
    def connect(
        cls, socket_path: str | os.PathLike[str], **options: Unpack[HelloOptions]
    ) -> SocketBlockingClient:
        """Handshake (see `handshake_io.HelloOptions` for the options) and wrap the channel."""
        return cls(*connect_socket(socket_path, **options))

    def _call(self, request: Request) -> Reply:
        opcode, packed, data, read_size, dest, need_buf, fields = request
        with self._lock:
            if self.closed:
                raise ChannelClosed("the channel is closed")
            tag = self._next_tag
            self._next_tag += 1
            pieces = encode_command_frame(tag, opcode, self.token, packed, data, need_buf, fields)
            try:
                total = sum(len(p) for p in pieces)
                sent = self.sock.sendmsg(pieces)
                if sent < total:
                    self.sock.sendall(b"".join(bytes(p) for p in pieces)[sent:])
                while True:
                    completion, payload = decode_completion_frame(self._next_frame())
                    if completion.tag == tag:
                        break
            except OSError as exc:
                self.closed = True
                raise ChannelClosed(f"the server closed the channel: {exc}") from None
            return make_reply(completion, _reply_data(completion, payload, read_size, dest))

    def _next_frame(self) -> bytes:
        while (frame := self._reader.next_frame()) is None:
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                self.closed = True
                raise ChannelClosed("the server closed the channel")
            self._reader.feed(chunk)
        return frame

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SocketTrioClient(AsyncEnd[Waiter], AsyncCalls):
    """`TrioClient`'s API over the socket alone: `async with SocketTrioClient.open(path)`."""

    buf_size = BUF_SIZE
    max_body = MAX_BODY

    def __init__(self, sock: socket.socket, accept: handshake.Accept) -> None:
        super().__init__()
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.channel_id = accept.channel_id
        self.token = accept.token
        self.server_pid = accept.server_pid
        self.max_in_flight = limits.MAX_RING_ENTRIES
        self._slots = trio.Semaphore(self.max_in_flight)
        self._send_lock = trio.Lock()
        self._next_tag = 1

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        socket_path: str | os.PathLike[str],
        **options: Unpack[HelloOptions],
    ) -> AsyncIterator[SocketTrioClient]:
        def connect() -> tuple[socket.socket, handshake.Accept]:
            return connect_socket(socket_path, **options)

        sock, accept = await trio.to_thread.run_sync(connect)
        client = cls(sock, accept)
        async with client._running(client._read_loop):
            yield client

    def _hang_up(self) -> None:
        self.sock.close()

    async def _call(self, request: Request) -> Reply:
        opcode, packed, data, read_size, dest, need_buf, fields = request
        if self.closed:
            raise ChannelClosed("the channel is closed")
        async with self._slots:
            tag = self._next_tag
            self._next_tag += 1
            waiter = Waiter(read_size, dest)
            self._waiters[tag] = waiter
            try:
                pieces = encode_command_frame(
                    tag, opcode, self.token, packed, data, need_buf, fields
                )
                message = b"".join(bytes(p) for p in pieces) if len(pieces) > 1 else pieces[0]
                view = memoryview(message)
                async with self._send_lock:
                    while view:
                        view = view[await self.sock.send(view) :]
                await waiter.event.wait()
            except (OSError, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
                self._fail(ChannelClosed(f"the server closed the channel: {exc}"))
            finally:
                if not waiter.event.is_set():
                    waiter.dest = None  # cancelled: the read loop discards its reply
            if waiter.error is not None:
                raise waiter.error
            assert waiter.reply is not None
            return waiter.reply

    async def _read_loop(self) -> None:
        reader = FrameReader()
        try:
            while True:
                chunk = await self.sock.recv(RECV_SIZE)
                if not chunk:
                    break
                reader.feed(chunk)
                while (frame := reader.next_frame()) is not None:
                    completion, payload = decode_completion_frame(frame)
                    waiter = self._waiters.pop(completion.tag, None)
                    if waiter is None:
                        continue
                    waiter.reply = make_reply(
                        completion,
                        _reply_data(completion, payload, waiter.read_size, waiter.dest),
                    )
                    waiter.event.set()
        except (OSError, ProtocolError, trio.ClosedResourceError):
            pass
        self._fail(ChannelClosed("the server closed the channel"))
