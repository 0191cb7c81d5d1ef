"""The same endpoints without shared memory: commands and completions framed over the socket.

The baseline the benchmarks compare the rings against, and a fallback where memfds cannot be
passed. A frame is a 4-byte little-endian length, then exactly what a ring slot would hold
(command or completion header, msgpack body), then the data inline. A command that carries
data or wants reply data sets `buf = 0`: the frame stands in for a single data buffer of
`limits.MAX_BUFFER_SIZE` bytes, so the server's `input_data`/`output_buffer` behave as on a
ring (empty when `buf` is NO_BUFFER). The hello says `transport: "socket"` and carries no fds.

`SocketBlockingClient` and `SocketTrioClient` have the shared-memory clients' `call` and
`call_into`; `SocketServerChannel` has `ServerChannel`'s interface plus `run(handler)`.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import inspect
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Self

import trio

from channel import handshake, limits
from channel.client import AsyncCalls, BlockingCalls, Buffer, Reply, _background, _reply
from channel.errors import ChannelClosed, ProtocolError
from channel.handshake import LENGTH, PeerCredentials
from channel.protocol import (
    COMMAND_HEADER,
    COMPLETION_HEADER,
    NO_BUFFER,
    Command,
    Completion,
    HeaderFields,
    decode_command,
    decode_completion,
    max_command_body,
    max_completion_body,
    peek_tag,
    write_command,
)

log = logging.getLogger(__name__)

_EMPTY = memoryview(b"")
#: The one virtual data buffer of a frame.
FRAME_BUFFER = 0
BUF_SIZE = limits.MAX_BUFFER_SIZE
MAX_BODY = max_command_body(limits.MAX_SLOT_SIZE)
MAX_REPLY_BODY = max_completion_body(limits.MAX_SLOT_SIZE)
MAX_FRAME = COMMAND_HEADER.size + MAX_BODY + BUF_SIZE
_RECV_SIZE = 256 * 1024


def run_close_callbacks(channel: object, callbacks: list[Callable[..., None]]) -> None:
    """Call each `on_close` callback once. The contract is a callback without arguments; one
    that requires a positional argument gets the channel (so `cb(channel)` styles work too)."""
    for callback in callbacks:
        try:
            try:
                inspect.signature(callback).bind()
                takes_channel = False
            except TypeError:
                takes_channel = True
            except ValueError:  # no signature available (some builtins)
                takes_channel = False
            if takes_channel:
                callback(channel)
            else:
                callback()
        except Exception:
            log.exception("on_close callback %r failed", callback)


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
    return handshake.exchange(socket_path, hello, (), timeout)


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
            return _reply(completion, _reply_data(completion, payload, read_size, dest))

    def _next_frame(self) -> bytes:
        while (frame := self._reader.next_frame()) is None:
            chunk = self.sock.recv(_RECV_SIZE)
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


class _SocketWaiter:
    __slots__ = ("dest", "error", "event", "read_size", "reply")

    def __init__(self, read_size: int, dest: memoryview | None) -> None:
        self.read_size = read_size
        self.dest = dest
        self.event = trio.Event()
        self.reply: Reply | None = None
        self.error: BaseException | None = None


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
        self._waiters: dict[int, _SocketWaiter] = {}
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
            async with _background(client._read_loop):
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
            waiter = _SocketWaiter(read_size, dest)
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
                chunk = await self.sock.recv(_RECV_SIZE)
                if not chunk:
                    break
                reader.feed(chunk)
                while (frame := reader.next_frame()) is not None:
                    completion, payload = decode_completion_frame(frame)
                    waiter = self._waiters.pop(completion.tag, None)
                    if waiter is None:
                        continue
                    waiter.reply = _reply(
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


class SocketServerChannel:
    """The server's side of a socket-transport channel: `ServerChannel`'s interface for the
    operations layer, plus `run(handler)`, which reads frames until the peer hangs up."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        *,
        token: bytes,
        creds: PeerCredentials,
        peer: PeerCredentials,
        role: str,
        channel_id: int,
    ) -> None:
        self.sock = sock
        self.token = token
        self.creds = creds
        self.peer = peer
        self.role = role
        self.channel_id = channel_id
        #: The channel belongs to a read-only mount (see `channel.poller.ServerChannel`).
        self.readonly = False
        self.closed = False
        self.on_close: list[Callable[..., None]] = []
        self.commands = 0
        self.protocol_errors = 0
        self.auth_failures = 0
        self._inputs: dict[int, memoryview] = {}
        self._outputs: dict[int, bytearray] = {}
        self._outq: list[memoryview] = []
        self._flush_wanted = trio.Event()

    def __repr__(self) -> str:
        return f"SocketServerChannel(id={self.channel_id}, role={self.role}, pid={self.peer.pid})"

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
            chunk = await self.sock.recv(_RECV_SIZE)
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
        if not hmac.compare_digest(cmd.token, self.token):
            self.auth_failures += 1
            self.complete(cmd.tag, -errno.EACCES)
            return
        if cmd.data_len:
            self._inputs[cmd.tag] = memoryview(frame)[start:]
        try:
            handler(self, cmd)
        except Exception:
            log.exception("handler failed on %r of %r", cmd, self)
            self.complete(cmd.tag, -errno.EIO)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        run_close_callbacks(self, self.on_close)
        self.on_close.clear()
        self._inputs.clear()
        self._outputs.clear()
        with contextlib.suppress(OSError):
            self.sock.close()
