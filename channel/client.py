"""Client endpoints over shared memory: a blocking one for plain programs, one for trio.

Both wrap a `ClientSide` (the I/O-free state machine) and add only what needs I/O or
waiting: the handshake, copying payloads into and out of data buffers, ringing the SQ
eventfd when the server sleeps, and the adaptive wait for completions (`channel.doorbell`).
Both notice the server's death through the handshake socket within a SLEEP_BOUND or so and
raise `ChannelClosed` instead of hanging.

    with BlockingClient.connect(path) as client:
        reply = client.call(Op.NOP, body=["hello"]).check()

    async with TrioClient.open(path) as client:     # owns a nursery with its reaper task
        reply = await client.call(Op.READ, fh=fh, offset=0, read_size=4096)
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, NamedTuple, Self

import trio

from channel import doorbell, handshake, limits
from channel.errors import ChannelClosed, status_to_oserror
from channel.handshake import ClientConnection, PeerCredentials
from channel.layout import ClientStat, Geometry
from channel.protocol import (
    NO_BUFFER,
    Completion,
    HeaderFields,
    max_command_body,
    pack_body,
)
from channel.protocol import header_fields as header_fields_of
from channel.sides import ClientSide, ServerSide

Buffer = bytes | bytearray | memoryview
_new_tuple = tuple.__new__


class Reply(NamedTuple):
    """A completion as the caller sees it. `data` holds reply data copied out of the data
    buffer (None when the call asked for none); `data_len` is its length (also for
    `call_into`, whose data went to the caller's buffer)."""

    status: int
    value: int = 0
    body: Any = None
    data: bytes | None = None
    data_len: int = 0

    @property
    def ok(self) -> bool:
        return self.status >= 0

    def check(self, what: str = "") -> Reply:
        """Raise the OSError of a negative status; return self otherwise."""
        if self.status < 0:
            raise status_to_oserror(self.status, what)
        return self


def release_views(side: ClientSide | ServerSide) -> None:
    """Release the memoryviews a side holds into its region, so that `Region.close` can
    really unmap it (and close the mapping's descriptor) now rather than at some later
    garbage collection. Views still exported elsewhere stay valid until dropped."""
    views = [*side.buffers, *side.sq.slots, *side.cq.slots, side.stats]
    for view in views:
        with suppress(BufferError):
            view.release()


def _pack(body: Any, max_body: int) -> bytes:
    packed = pack_body(body)
    if len(packed) > max_body:
        raise ValueError(f"body of {len(packed)} bytes exceeds the slot's {max_body}")
    return packed


def _reply(completion: Completion, data: bytes | None) -> Reply:
    return _new_tuple(
        Reply, (completion.status, completion.value, completion.body, data, completion.data_len)
    )


def call_fields(header_fields: dict[str, int], size: int) -> HeaderFields:
    """The header fields of a call's keywords, with `size` (the reply data wanted) set."""
    if size:
        header_fields["size"] = size
    return header_fields_of(header_fields)


class Requests:
    """What every endpoint, over either transport, does before sending a command: check the
    payload sizes against its data buffers and build the header fields."""

    buf_size: int
    max_body: int

    def _has_buffers(self) -> bool:
        return True

    def _request(
        self, data: Buffer | None, read_size: int, into: bool, header_fields: dict[str, int]
    ) -> tuple[bool, HeaderFields]:
        """(whether the command needs a data buffer, its header fields)."""
        if data is None and not read_size and not into:
            return False, header_fields_of(header_fields)
        if data is not None and len(data) > self.buf_size:
            raise ValueError(f"{len(data)} bytes of data exceed the {self.buf_size}-byte buffer")
        if read_size < 0 or read_size > self.buf_size:
            raise ValueError(f"read_size {read_size} is outside 0..{self.buf_size}")
        if not self._has_buffers():
            raise ValueError("this channel has no data buffers")
        return True, call_fields(header_fields, read_size)


class BlockingCalls(Requests):
    """`call` and `call_into` of the blocking endpoints; each transport provides `_call`."""

    def call(
        self,
        opcode: int,
        body: Any = None,
        *,
        data: Buffer | None = None,
        read_size: int = 0,
        **header_fields: Any,
    ) -> Reply:
        """Send one command and wait for its completion. `data` travels in a data buffer;
        with `read_size` > 0 up to that many bytes of reply data come back in `Reply.data`."""
        need_buf, fields = self._request(data, read_size, False, header_fields)
        packed = _pack(body, self.max_body)
        return self._call(opcode, packed, data, read_size, None, need_buf, fields)

    def call_into(
        self,
        opcode: int,
        dest: memoryview | bytearray,
        body: Any = None,
        *,
        data: Buffer | None = None,
        **header_fields: Any,
    ) -> Reply:
        """Like `call`, but reply data (up to len(dest)) is copied into `dest`."""
        dest = memoryview(dest).cast("B")
        size = min(len(dest), self.buf_size)
        _, fields = self._request(data, size, True, header_fields)
        return self._call(opcode, _pack(body, self.max_body), data, size, dest, True, fields)

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
        raise NotImplementedError


class AsyncCalls(Requests):
    """`call` and `call_into` of the trio endpoints: many calls may be in flight at once."""

    async def call(
        self,
        opcode: int,
        body: Any = None,
        *,
        data: Buffer | None = None,
        read_size: int = 0,
        **header_fields: Any,
    ) -> Reply:
        """As `BlockingCalls.call`."""
        need_buf, fields = self._request(data, read_size, False, header_fields)
        packed = _pack(body, self.max_body)
        return await self._call(opcode, packed, data, read_size, None, need_buf, fields)

    async def call_into(
        self,
        opcode: int,
        dest: memoryview | bytearray,
        body: Any = None,
        *,
        data: Buffer | None = None,
        **header_fields: Any,
    ) -> Reply:
        """As `BlockingCalls.call_into`."""
        dest = memoryview(dest).cast("B")
        size = min(len(dest), self.buf_size)
        _, fields = self._request(data, size, True, header_fields)
        packed = _pack(body, self.max_body)
        return await self._call(opcode, packed, data, size, dest, True, fields)

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
        raise NotImplementedError


class _Endpoint:
    """What both shared-memory clients hold: the connection and its ClientSide."""

    def __init__(self, conn: ClientConnection, idle_spin: float) -> None:
        self._conn = conn
        self.sock = conn.sock
        self.region = conn.region
        self.channel_id = conn.accept.channel_id
        self.token = conn.accept.token
        self.server_pid = conn.accept.server_pid
        self.side = ClientSide(conn.region, conn.accept.token)
        self.clock = doorbell.IdleClock(idle_spin)
        self.closed = False
        g = conn.region.geometry
        self.buf_size = g.buf_size
        self.max_body = max_command_body(g.slot_size)
        self._buffers = self.side.buffers
        self._sq_efd = conn.sq_efd
        self._cq_efd = conn.cq_efd

    def _check_open(self) -> None:
        if self.closed:
            raise ChannelClosed("the channel is closed")

    def _count_sleep(self) -> None:
        self.side.stats[ClientStat.SLEEPS] += 1

    def _nudge(self) -> None:
        doorbell.nudge_if_unconsumed(self.side.sq, self._sq_efd)

    def _has_buffers(self) -> bool:
        return bool(self._buffers)

    def _submit(
        self, opcode: int, packed: bytes, buf: int, data: Buffer | None, fields: HeaderFields
    ) -> int:
        """Copy `data` into buffer `buf`, put the command on the SQ, ring if needed."""
        side = self.side
        data_len = 0
        if data is not None:
            data_len = len(data)
            self._buffers[buf][:data_len] = data
        tag, wake = side.post(opcode, packed, buf, data_len, fields)
        if wake:
            doorbell.ring(self._sq_efd)
            side.stats[ClientStat.WAKEUPS_SENT] += 1
        if wake or data_len > limits.SPIN_WORTHY_BYTES or fields[4] > limits.SPIN_WORTHY_BYTES:
            # The answer is far off: the server was asleep (a wake-up away, and the kernel
            # tends to wake it on this very CPU), or the command moves so much data that the
            # server hands it to a worker thread, which needs a CPU that a spinning client
            # would hold until the next scheduler tick. So park at once instead of spinning.
            self.clock.last_work = 0.0
        else:
            self.clock.worked()  # the server is awake: the answer is worth spinning for
        return tag

    def _data_out(
        self, completion: Completion, buf: int, read_size: int, dest: memoryview | None
    ) -> bytes | None:
        if buf == NO_BUFFER:
            return None
        n = min(completion.data_len, self.buf_size)
        if dest is not None:
            n = min(n, len(dest))
            dest[:n] = self._buffers[buf][:n]
            return None
        if read_size <= 0:
            return None
        return bytes(self._buffers[buf][: min(n, read_size)])


class BlockingClient(_Endpoint, BlockingCalls):
    """A blocking shared-memory client; thread-safe (one call at a time, under a lock)."""

    def __init__(
        self, conn: ClientConnection, *, idle_spin: float = limits.DEFAULT_IDLE_SPIN
    ) -> None:
        super().__init__(conn, idle_spin)
        self._lock = threading.Lock()
        self._released = False
        #: tag -> data buffer of commands whose caller was interrupted (KeyboardInterrupt):
        #: the buffer is only reused once the server has answered.
        self._stale: dict[int, int] = {}

    @classmethod
    def connect(
        cls,
        socket_path: str | os.PathLike[str],
        *,
        role: str = "app",
        geometry: Geometry | None = None,
        secret: bytes | None = None,
        idle_spin: float = limits.DEFAULT_IDLE_SPIN,
        on_behalf_of: PeerCredentials | None = None,
        timeout: float = limits.HANDSHAKE_TIMEOUT,
    ) -> BlockingClient:
        conn = handshake.connect(
            socket_path,
            role=role,
            geometry=geometry,
            secret=secret,
            on_behalf_of=on_behalf_of,
            timeout=timeout,
        )
        return cls(conn, idle_spin=idle_spin)

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
            side = self.side
            while not side.can_submit() or (need_buf and not side.free_buffers):
                self._retire(self._wait_any())
            buf = NO_BUFFER
            if need_buf:
                acquired = side.acquire_buffer()
                assert acquired is not None
                buf = acquired
            tag = self._submit(opcode, packed, buf, data, fields)
            done = False
            try:
                while True:
                    completion = self._wait_any()
                    if completion.tag == tag:
                        break
                    self._retire(completion)
                reply = _reply(completion, self._data_out(completion, buf, read_size, dest))
                done = True
            finally:
                if buf != NO_BUFFER:
                    if done:
                        side.release_buffer(buf)
                    else:
                        self._stale[tag] = buf
        return reply

    def _retire(self, completion: Completion) -> None:
        buf = self._stale.pop(completion.tag, NO_BUFFER)
        if buf != NO_BUFFER:
            self.side.release_buffer(buf)

    def _wait_any(self) -> Completion:
        side = self.side
        while True:
            completion = side.reap()
            if completion is not None:
                return completion
            try:
                doorbell.wait_blocking(
                    side.cq, self._cq_efd, self.clock, self._count_sleep, self.sock, self._nudge
                )
            except ChannelClosed:
                self.closed = True
                raise

    def close(self) -> None:
        """Hang up (the server then releases the channel) and unmap."""
        with self._lock:
            if not self._released:
                self.closed = True
                self._released = True
                release_views(self.side)
                self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Waiter:
    __slots__ = ("buf", "dest", "error", "event", "owns_buffer_permit", "read_size", "reply")

    def __init__(self, buf: int, read_size: int, dest: memoryview | None, permit: bool) -> None:
        self.buf = buf
        self.read_size = read_size
        self.dest = dest
        self.owns_buffer_permit = permit
        self.event = trio.Event()
        self.reply: Reply | None = None
        self.error: BaseException | None = None


async def _acquire(semaphore: trio.Semaphore) -> None:
    """Take a permit; yield to the scheduler only when none is free. trio's own `acquire`
    always passes through the scheduler twice (about 10 µs each here), and a call takes two
    permits; the call still checkpoints while it awaits its completion."""
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()


class TrioClient(_Endpoint, AsyncCalls):
    """A trio shared-memory client: many tasks may `await call(...)` at once; completions
    are matched by tag by a reaper task in the client's own nursery. Use it only as
    `async with TrioClient.open(path) as client:`. Back-pressure: a call waits (never
    overwrites) while the in-flight limit is reached or no data buffer is free."""

    def __init__(
        self, conn: ClientConnection, *, idle_spin: float = limits.DEFAULT_IDLE_SPIN
    ) -> None:
        super().__init__(conn, idle_spin)
        g = conn.region.geometry
        # At most min(sq, cq) in flight: the CQ always has room for every completion and the
        # SQ can never be full when a permit is held.
        self.max_in_flight = min(g.sq_entries, g.cq_entries)
        self._slots = trio.Semaphore(self.max_in_flight)
        self._buffer_permits = trio.Semaphore(g.buf_count)
        self._waiters: dict[int, _Waiter] = {}
        self._work = trio.Event()
        self._tsock = trio.socket.from_stdlib_socket(conn.sock)
        self._closed_event = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        socket_path: str | os.PathLike[str],
        *,
        role: str = "app",
        geometry: Geometry | None = None,
        secret: bytes | None = None,
        idle_spin: float = limits.DEFAULT_IDLE_SPIN,
        on_behalf_of: PeerCredentials | None = None,
        timeout: float = limits.HANDSHAKE_TIMEOUT,
        readonly: bool = False,
    ) -> AsyncIterator[TrioClient]:
        """Handshake (in a worker thread: it is a short blocking exchange), then run the
        reaper and the peer watcher until the block exits."""

        def connect() -> ClientConnection:
            return handshake.connect(
                socket_path,
                role=role,
                geometry=geometry,
                secret=secret,
                on_behalf_of=on_behalf_of,
                timeout=timeout,
                readonly=readonly,
            )

        conn = await trio.to_thread.run_sync(connect)
        client = cls(conn, idle_spin=idle_spin)
        try:
            async with _background(client._reaper, client._watch_peer):
                yield client
        finally:
            client._fail(ChannelClosed("the client was closed"))
            release_views(client.side)
            conn.close()

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
        self._check_open()
        if need_buf:
            await _acquire(self._buffer_permits)
        try:
            await _acquire(self._slots)
        except BaseException:
            if need_buf:
                self._buffer_permits.release()
            raise
        # From here the permits belong to the waiter; whoever finishes it releases them.
        if self.closed:
            self._finish(_Waiter(NO_BUFFER, 0, None, need_buf))
            raise ChannelClosed("the channel is closed")
        buf = NO_BUFFER
        if need_buf:
            acquired = self.side.acquire_buffer()
            assert acquired is not None  # the buffer permits mirror the free list
            buf = acquired
        waiter = _Waiter(buf, read_size, dest, need_buf)
        tag = self._submit(opcode, packed, buf, data, fields)
        self._waiters[tag] = waiter
        self._work.set()
        try:
            await waiter.event.wait()
        except BaseException:
            # Cancelled while in flight: the reaper retires it when the server answers (the
            # server may still write into its buffer until then).
            waiter.dest = None
            raise
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None
        return waiter.reply

    def _finish(self, waiter: _Waiter) -> None:
        if waiter.buf != NO_BUFFER:
            self.side.release_buffer(waiter.buf)
        if waiter.owns_buffer_permit:
            self._buffer_permits.release()
        self._slots.release()

    async def _reaper(self) -> None:
        try:
            await self._reap_forever()
        except Exception as exc:  # a garbled CQ: this channel is unusable, fail its callers
            self._fail(ChannelClosed(f"the channel broke: {exc}"))

    async def _reap_forever(self) -> None:
        side, waiters = self.side, self._waiters
        while True:
            if not waiters:
                self._work = trio.Event()
                await self._work.wait()
                continue
            completion = side.reap()
            if completion is None:
                await doorbell.wait_trio(
                    side.cq, self._cq_efd, self.clock, self._count_sleep, self._nudge
                )
                continue
            waiter = waiters.pop(completion.tag, None)
            if waiter is None:
                continue
            waiter.reply = _reply(
                completion, self._data_out(completion, waiter.buf, waiter.read_size, waiter.dest)
            )
            self._finish(waiter)
            waiter.event.set()

    async def wait_closed(self) -> None:
        """Return once the channel is over (the server went away, or the client closed)."""
        await self._closed_event.wait()

    async def _watch_peer(self) -> None:
        with suppress(OSError, trio.ClosedResourceError):
            await self._tsock.recv(1)
        self._fail(ChannelClosed("the server closed the channel"))

    def _fail(self, error: BaseException) -> None:
        """Fail every waiter and every future call. Their buffers are not reused: the
        channel is over, and a server might still be writing into them."""
        self.closed = True
        self._closed_event.set()
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for waiter in waiters:
            waiter.error = error
            waiter.buf = NO_BUFFER
            self._finish(waiter)  # frees callers blocked on a permit; they see `closed`
            waiter.event.set()
        self._work.set()


@asynccontextmanager
async def _background(*tasks: Any) -> AsyncIterator[None]:
    """Run `tasks` in a nursery for the duration of the block, then cancel them. An exception
    raised by the block comes out as itself, not wrapped in an ExceptionGroup."""
    raised: BaseException | None = None
    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(task)
        try:
            yield
        except BaseException as exc:
            raised = exc
        finally:
            nursery.cancel_scope.cancel()
    if raised is not None:
        raise raised
