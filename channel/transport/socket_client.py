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
from typing import Self

import trio

from channel.protocol import handshake, limits
from channel.protocol.codec import Completion, HeaderFields
from channel.protocol.errors import ChannelClosed, ProtocolError
from channel.protocol.frames import (
    BUF_SIZE,
    MAX_BODY,
    RECV_SIZE,
    FrameReader,
    decode_completion_frame,
    encode_command_frame,
)
from channel.protocol.handshake import PeerCredentials
from channel.transport import handshake_io
from channel.transport.calls import (
    AsyncCalls,
    BlockingCalls,
    Buffer,
    Reply,
    Waiter,
    background,
    make_reply,
)

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


def _connect(
    socket_path: str | os.PathLike[str],
    role: str,
    secret: bytes | None,
    on_behalf_of: PeerCredentials | None,
    timeout: float,
    readonly: bool = False,
) -> tuple[socket.socket, handshake.Accept]:
    hello = handshake.make_hello(
        role, transport="socket", secret=secret, on_behalf_of=on_behalf_of, readonly=readonly
    )
    return handshake_io.exchange(socket_path, hello, (), timeout)


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
        cls,
        socket_path: str | os.PathLike[str],
        *,
        role: str = "app",
        secret: bytes | None = None,
        on_behalf_of: PeerCredentials | None = None,
        timeout: float = limits.HANDSHAKE_TIMEOUT,
    ) -> SocketBlockingClient:
        return cls(*_connect(socket_path, role, secret, on_behalf_of, timeout))

    def _call(
        self,
        opcode: int,
        packed: bytes,
        data: Buffer | None,
        read_size: int,
        dest: memoryview | None,
        need_buf: bool,
        fields: HeaderFields,
    ) -> Reply:
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


class SocketTrioClient(AsyncCalls):
    """`TrioClient`'s API over the socket alone: `async with SocketTrioClient.open(path)`."""

    buf_size = BUF_SIZE
    max_body = MAX_BODY

    def __init__(self, sock: socket.socket, accept: handshake.Accept) -> None:
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.channel_id = accept.channel_id
        self.token = accept.token
        self.server_pid = accept.server_pid
        self.closed = False
        self.max_in_flight = limits.MAX_RING_ENTRIES
        self._slots = trio.Semaphore(self.max_in_flight)
        self._send_lock = trio.Lock()
        self._waiters: dict[int, Waiter] = {}
        self._next_tag = 1
        self._closed_event = trio.Event()

    async def wait_closed(self) -> None:
        """Return once the channel is over (the server went away, or the client closed)."""
        await self._closed_event.wait()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        socket_path: str | os.PathLike[str],
        *,
        role: str = "app",
        secret: bytes | None = None,
        on_behalf_of: PeerCredentials | None = None,
        timeout: float = limits.HANDSHAKE_TIMEOUT,
        readonly: bool = False,
    ) -> AsyncIterator[SocketTrioClient]:
        sock, accept = await trio.to_thread.run_sync(
            _connect, socket_path, role, secret, on_behalf_of, timeout, readonly
        )
        client = cls(sock, accept)
        try:
            async with background(client._read_loop):
                yield client
        finally:
            client._fail(ChannelClosed("the client was closed"))
            client.sock.close()

    async def _call(
        self,
        opcode: int,
        packed: bytes,
        data: Buffer | None,
        read_size: int,
        dest: memoryview | None,
        need_buf: bool,
        fields: HeaderFields,
    ) -> Reply:
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

    def _fail(self, error: BaseException) -> None:
        self.closed = True
        self._closed_event.set()
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for waiter in waiters:
            if not waiter.event.is_set():
                waiter.error = error
                waiter.event.set()
