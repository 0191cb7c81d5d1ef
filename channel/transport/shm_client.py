"""Client endpoints over shared memory: a blocking one for plain programs, one for trio.

Both wrap a `ClientSide` (the I/O-free state machine) and add only what needs I/O or
waiting: the handshake, copying payloads into and out of data buffers, ringing the SQ
eventfd when the server sleeps, and the adaptive wait for completions (`doorbell`).
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
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Self, Unpack

import trio

from channel.protocol import limits
from channel.protocol.codec import NO_BUFFER, Completion, HeaderFields, max_command_body
from channel.protocol.errors import ChannelClosed
from channel.protocol.layout import ClientStat
from channel.protocol.sides import ClientSide
from channel.transport import doorbell, handshake_io
from channel.transport.calls import (
    AsyncCalls,
    AsyncEnd,
    BlockingCalls,
    Buffer,
    Reply,
    Request,
    Waiter,
    make_reply,
)
from channel.transport.handshake_io import ClientConnection, ShmHelloOptions
from channel.transport.regions import release_views

_perf_counter = time.perf_counter
_yield_cpu = os.sched_yield


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

    def _nudge(self) -> bool:
        return doorbell.nudge_if_unconsumed(self.side.sq, self._sq_efd)

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
        idle_spin: float = limits.DEFAULT_IDLE_SPIN,
        **options: Unpack[ShmHelloOptions],
    ) -> BlockingClient:
        """Handshake (see `handshake_io.HelloOptions` for the options) and wrap the channel."""
        return cls(handshake_io.connect(socket_path, **options), idle_spin=idle_spin)

    def _call(self, request: Request) -> Reply:
        # The socket client's _call has this shape too: its I/O (frames, not a ring) differs.
        opcode, packed, data, read_size, dest, need_buf, fields = request
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
                reply = make_reply(completion, self._data_out(completion, buf, read_size, dest))
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


class _Waiter(Waiter):
    """A shared-memory call in flight also holds its data buffer and maybe a buffer permit."""

    __slots__ = ("buf", "owns_buffer_permit")

    def __init__(self, buf: int, read_size: int, dest: memoryview | None, permit: bool) -> None:
        super().__init__(read_size, dest)
        self.buf = buf
        self.owns_buffer_permit = permit


async def _acquire(semaphore: trio.Semaphore) -> None:
    """Take a permit; yield to the scheduler only when none is free. trio's own `acquire`
    always passes through the scheduler twice (about 10 µs each here), and a call takes two
    permits; the call still checkpoints while it awaits its completion."""
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()


class TrioClient(_Endpoint, AsyncEnd[_Waiter], AsyncCalls):
    """A trio shared-memory client: many tasks may `await call(...)` at once; completions
    are matched by tag by a reaper task in the client's own nursery. Use it only as
    `async with TrioClient.open(path) as client:`. Back-pressure: a call waits (never
    overwrites) while the in-flight limit is reached or no data buffer is free."""

    def __init__(
        self, conn: ClientConnection, *, idle_spin: float = limits.DEFAULT_IDLE_SPIN
    ) -> None:
        _Endpoint.__init__(self, conn, idle_spin)
        AsyncEnd.__init__(self)
        g = conn.region.geometry
        # At most min(sq, cq) in flight: the CQ always has room for every completion and the
        # SQ can never be full when a permit is held.
        self.max_in_flight = min(g.sq_entries, g.cq_entries)
        self._slots = trio.Semaphore(self.max_in_flight)
        self._buffer_permits = trio.Semaphore(g.buf_count)
        self._work = trio.Event()
        self._tsock = trio.socket.from_stdlib_socket(conn.sock)
        self._inline_run = 0
        self._reaper_parked = False
        #: calls whose answer was reaped inline, without a scheduler pass
        self.inline_reaps = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        socket_path: str | os.PathLike[str],
        *,
        idle_spin: float = limits.DEFAULT_IDLE_SPIN,
        **options: Unpack[ShmHelloOptions],
    ) -> AsyncIterator[TrioClient]:
        """Handshake (in a worker thread: it is a short blocking exchange), then run the
        reaper and the peer watcher until the block exits."""

        def connect() -> ClientConnection:
            return handshake_io.connect(socket_path, **options)

        conn = await trio.to_thread.run_sync(connect)
        client = cls(conn, idle_spin=idle_spin)
        async with client._running(client._reaper, client._watch_peer):
            yield client

    def _hang_up(self) -> None:
        release_views(self.side)
        self._conn.close()

    async def _call(self, request: Request) -> Reply:
        opcode, packed, data, read_size, dest, need_buf, fields = request
        # A cancel point, not a schedule point: an answer reaped inline returns without one.
        await trio.lowlevel.checkpoint_if_cancelled()
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
        if self._reap_inline(waiter):
            self._inline_run += 1
            if self._inline_run >= limits.INLINE_REAP_RUN:
                self._inline_run = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
            return self._answer(waiter)
        self._work.set()
        try:
            await waiter.event.wait()
        except BaseException:
            # Cancelled while in flight: the reaper retires it when the server answers (the
            # server may still write into its buffer until then).
            waiter.dest = None
            raise
        return self._answer(waiter)

    @staticmethod
    def _answer(waiter: _Waiter) -> Reply:
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None
        return waiter.reply

    def _reap_inline(self, waiter: _Waiter) -> bool:
        """Reap on the caller's own task while the server is awake, for at most
        INLINE_REAP_SPIN, and say whether the waiter's answer came. A trio scheduler pass
        costs about as much as a busy server's whole answer, and parking on the event to be
        woken by the reaper costs two or more; so the caller spins for its answer, and the
        reaper only serves callers whose answers are far off (it parks at once).

        While the reaper is parked, its NEED_WAKEUP flag is lifted for the spin, so the
        server does not ring for answers reaped here, and set again afterwards exactly as
        the reaper's own `prepare_park` would: whatever was published meanwhile is reaped
        and delivered before the flag stands again."""
        if self.clock.should_park():
            return False
        side, deliver = self.side, self._deliver
        cq = side.cq
        lifted = self._reaper_parked
        try:
            if lifted:
                cq.finish_park()
            try:
                deadline = 0.0
                while waiter.reply is None and waiter.error is None:
                    completion = side.reap()
                    if completion is not None:
                        deliver(completion)
                        continue
                    now = _perf_counter()
                    if not deadline:
                        deadline = now + limits.INLINE_REAP_SPIN
                    elif now >= deadline:
                        return False
                    # The server is often queued on this very CPU (wake-affine scheduling
                    # put us where it ran): yield it the CPU instead of spinning against it.
                    _yield_cpu()
            finally:
                while lifted and not cq.prepare_park():
                    completion = side.reap()
                    if completion is not None:
                        deliver(completion)
        except Exception as exc:  # a garbled CQ, as in the reaper
            self._fail(ChannelClosed(f"the channel broke: {exc}"))
            return True
        self.clock.worked()
        self.inline_reaps += 1
        return True

    def _deliver(self, completion: Completion) -> None:
        waiter = self._waiters.pop(completion.tag, None)
        if waiter is None:
            return
        waiter.reply = make_reply(
            completion, self._data_out(completion, waiter.buf, waiter.read_size, waiter.dest)
        )
        self._finish(waiter)
        waiter.event.set()

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
        side, waiters, cq = self.side, self._waiters, self.side.cq
        timeout = limits.SLEEP_BOUND
        while True:
            if not waiters:
                self._work = trio.Event()
                await self._work.wait()
                continue
            completion = side.reap()
            if completion is not None:
                self._deliver(completion)
                timeout = limits.SLEEP_BOUND
                continue
            # The answers still awaited are far off (near ones are reaped by their callers):
            # park at once. While one of our commands sits unconsumed on the SQ, sleep
            # SLEEP_BOUND and re-ring (`_nudge`), which bounds the wait should the server's
            # wake-up be lost; once the server holds them all, only its completion wake-up
            # ends the sleep (a long poll such as the driver's WATCH waits here), and the
            # bound is IDLE_POLLER_SLEEP: each trio wake-up costs up to several ms of CPU on
            # a small, busy machine, and an idle mount must not pay that every few ms.
            if not cq.prepare_park():
                continue
            self._reaper_parked = True
            try:
                await doorbell.sleep_trio(self._cq_efd, timeout)
            finally:
                self._reaper_parked = False
                cq.finish_park()
            self._count_sleep()
            if not cq.available():
                timeout = limits.SLEEP_BOUND if self._nudge() else limits.IDLE_POLLER_SLEEP

    async def _watch_peer(self) -> None:
        with suppress(OSError, trio.ClosedResourceError):
            await self._tsock.recv(1)
        self._fail(ChannelClosed("the server closed the channel"))

    def _fail(self, error: BaseException) -> None:
        super()._fail(error)
        self._work.set()

    def _abandon(self, waiter: _Waiter) -> None:
        # Its buffer is not reused: the channel is over, and a server might still be
        # writing into it. Its permits free callers blocked on one; they see `closed`.
        waiter.buf = NO_BUFFER
        self._finish(waiter)
