"""The server's side of shared-memory channels under trio: one channel, and the poller of all.

`ServerChannel` wraps a `ServerSide` with its region, eventfds, socket and the identity the
handshake established; the filesystem operations layer sees it as a
`channel.transport.server_api.ServedChannel`. `Poller` polls every channel's SQ round-robin in
one trio task, takes each channel's ready commands in a batch (up to BATCH per pass), hands
them to a plain sync handler one after the other without a scheduler pass in between,
publishes the completions answered inline together (one CQ tail store and at most one
wake-up per batch; the trio scheduler runs every YIELD_INTERVAL), and parks on an epoll of all SQ
eventfds when every channel has been idle for `idle_spin`: for SLEEP_BOUND while a channel
needs re-checking on its own (a stalled ring, completions waiting for CQ room), otherwise for
up to IDLE_POLLER_SLEEP, because a waiting client re-rings (see `doorbell.nudge_if_unconsumed`).

Channels come from `channel.transport.serve`, which runs the handshake, `add`s each
shared-memory channel to the poller and closes it when its peer goes away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable

import trio

from channel.protocol import limits
from channel.protocol.codec import NO_BUFFER, Command
from channel.protocol.errors import ProtocolError
from channel.protocol.layout import Region, ServerStat
from channel.protocol.sides import Rejected, ServerSide
from channel.transport import doorbell
from channel.transport.regions import release_views
from channel.transport.server_api import (
    ChannelIdentity,
    Identity,
    run_close_callbacks,
    serve_command,
)

log = logging.getLogger(__name__)

_EMPTY = memoryview(b"")
#: Commands taken from one channel per pass before the next channel's turn (in one
#: `take_many`, their completions published together): small, so that a flooding client
#: delays the others by at most this many handler calls.
BATCH = 16
#: Longest stretch (seconds) the spinning poller runs without letting other trio tasks run:
#: they (handlers' spawned tasks, the accept loop, peer watchers) wait at most this long.
YIELD_INTERVAL = 0.0002


class ServerChannel(ChannelIdentity):
    """One shared-memory channel, as the server sees it."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        region: Region,
        sq_efd: int,
        cq_efd: int,
        who: Identity,
        *,
        idle_spin: float = limits.DEFAULT_IDLE_SPIN,
    ) -> None:
        super().__init__(who)
        self.sock = sock
        self.region = region
        self.sq_efd = sq_efd
        self.cq_efd = cq_efd
        self.idle_spin = idle_spin
        self.side = ServerSide(region, who.token)
        self._buffers = self.side.buffers
        self._buf_size = region.geometry.buf_size
        #: tag -> data buffer of commands handed out, so completions can echo it
        self._bufs: dict[int, int] = {}
        #: The poller is serving a batch of this channel's commands: completions are staged
        #: and published together when the batch ends (`publish`).
        self._staging = False
        self._detach: Callable[[ServerChannel], None] | None = None
        self._closed_event = trio.Event()

    # -- the operations layer's interface -------------------------------------------------
    def input_data(self, cmd: Command) -> memoryview:
        """The bytes the client sent with `cmd` (validated against the pool by decoding)."""
        if cmd.buf == NO_BUFFER:
            return _EMPTY
        return self._buffers[cmd.buf][: cmd.data_len]

    def output_buffer(self, cmd: Command) -> memoryview:
        """Where `cmd`'s reply data goes: `cmd.size` bytes of its data buffer (taking the
        command checked that they fit the buffer)."""
        if cmd.buf == NO_BUFFER:
            return _EMPTY
        return self._buffers[cmd.buf][: cmd.size]

    def complete(
        self, tag: int, status: int, body: bytes = b"", *, data_len: int = 0, value: int = 0
    ) -> None:
        """Publish `tag`'s completion and wake the client if it sleeps; during a batch of
        the poller, stage it for the batch's one publish. Ignored once the channel is
        closed; a corrupt CQ head (hostile client) closes the channel."""
        if self.closed:
            return
        buf = self._bufs.pop(tag, NO_BUFFER) if self._bufs else NO_BUFFER
        side = self.side
        if data_len > self._buf_size:
            data_len = self._buf_size
        try:
            if self._staging:
                side.stage(tag, status, body, data_len=data_len, buf=buf, value=value)
            elif side.complete(tag, status, body, data_len=data_len, buf=buf, value=value):
                doorbell.ring(self.cq_efd)
                side.stats[ServerStat.WAKEUPS_SENT] += 1
        except ProtocolError:
            side.count(ServerStat.PROTOCOL_ERRORS)
            self.close()

    def publish(self) -> None:
        """Make the staged completions visible with one store of the CQ's tail, and wake
        the client if it sleeps (one eventfd write for the whole batch)."""
        if self.closed:
            return
        side = self.side
        try:
            if side.publish():
                doorbell.ring(self.cq_efd)
                side.stats[ServerStat.WAKEUPS_SENT] += 1
        except ProtocolError:
            side.count(ServerStat.PROTOCOL_ERRORS)
            self.close()

    # -- lifecycle ------------------------------------------------------------------------
    async def watch_peer(self) -> None:
        """Return when the peer hangs up (EOF), sends anything, or the channel is closed."""
        with contextlib.suppress(OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            await self.sock.recv(1)

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def close(self) -> None:
        """End the channel: detach from the poller, run on_close, unmap, close descriptors."""
        if self.closed:
            return
        self.closed = True
        if self._detach is not None:
            self._detach(self)  # before the eventfd is closed: its number may be reused
        run_close_callbacks(self.on_close)
        self.on_close.clear()  # callbacks often refer to the channel: break that cycle
        self._bufs.clear()
        release_views(self.side)
        self.region.close()
        for fd in (self.sq_efd, self.cq_efd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sock.close()  # wakes watch_peer (trio notifies a task blocked on a closed socket)
        self._closed_event.set()


Handler = Callable[[ServerChannel, Command], None]


class Poller:
    """Polls the SQs of many channels in one trio task, fairly; parks when all are idle.

    Run it once (`await poller.run(handler)`, in a nursery); `add`/`remove` channels at any
    time. The handler is a sync callable; it may complete inline or later (from any task of
    the same trio run) through `channel.complete`.
    """

    def __init__(self, idle_spin: float = limits.DEFAULT_IDLE_SPIN) -> None:
        self.clock = doorbell.IdleClock(idle_spin)
        self._channels: dict[int, ServerChannel] = {}
        self._order: tuple[ServerChannel, ...] = ()
        self._epoll = select.epoll(flags=select.EPOLL_CLOEXEC)
        self._park_scope: trio.CancelScope | None = None
        #: Number of times the poller slept; for tests and statistics.
        self.sleeps = 0

    @property
    def channels(self) -> tuple[ServerChannel, ...]:
        return self._order

    def add(self, channel: ServerChannel) -> None:
        channel._detach = self.remove
        self._channels[channel.sq_efd] = channel
        self._order = tuple(self._channels.values())
        self._epoll.register(channel.sq_efd, select.EPOLLIN)
        self.clock.worked()
        if self._park_scope is not None:  # a new client may already have submitted
            self._park_scope.cancel()

    def remove(self, channel: ServerChannel) -> None:
        if self._channels.get(channel.sq_efd) is channel:
            del self._channels[channel.sq_efd]
            self._order = tuple(self._channels.values())
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(channel.sq_efd)

    async def run(self, handler: Handler, *, others_busy: Callable[[], bool] = bool) -> None:
        """Serve until cancelled. While `others_busy()` is true (worker threads are running
        commands) the poller parks as soon as the rings are empty instead of spinning: on a
        small machine a spinning poller (and a spinning client) leave a worker thread no CPU
        until the next scheduler tick, which made every threaded command a millisecond
        slower. A parked poller is woken by the next command's ring, at once."""
        clock = self.clock
        checkpoint = trio.lowlevel.checkpoint
        monotonic = time.monotonic
        next_yield = 0.0
        try:
            while True:
                now = monotonic()
                if self._pass(handler):
                    clock.last_work = now
                elif now - clock.last_work >= clock.idle_spin or others_busy():
                    await self._park()
                    next_yield = monotonic() + YIELD_INTERVAL
                    continue
                else:
                    os.sched_yield()  # see doorbell.wait_blocking: a client may wait here
                # A trio checkpoint costs about ten microseconds, more than a command's own
                # round trip, so the spin yields to the other tasks every YIELD_INTERVAL
                # rather than between every two polls.
                if now >= next_yield:
                    await checkpoint()
                    next_yield = monotonic() + YIELD_INTERVAL
        finally:
            self._epoll.close()

    def _pass(self, handler: Handler) -> bool:
        """Take up to BATCH commands from each channel; True if any work was done."""
        worked = False
        for channel in self._order:
            if channel.closed:
                continue
            try:
                worked |= self._take_batch(channel, handler)
            except ProtocolError as exc:
                log.warning("closing %r: %s", channel, exc)
                channel.side.count(ServerStat.PROTOCOL_ERRORS)
                channel.close()
            except Exception:  # whatever one channel does, the others keep being served
                log.exception("closing %r after an unexpected error", channel)
                channel.close()
        return worked

    @staticmethod
    def _take_batch(channel: ServerChannel, handler: Handler) -> bool:
        """Deliver `channel`'s held-back completions, then take up to BATCH of its commands
        at once (one head store) and serve them one after the other, with no scheduler pass
        in between; the completions of those answered inline are staged and published
        together at the end (one tail store, one wake-up). True if any command was taken."""
        side = channel.side
        if side.pending and side.flush():
            doorbell.ring(channel.cq_efd)
            side.stats[ServerStat.WAKEUPS_SENT] += 1
        items = side.take_many(BATCH)
        if not items:
            return False
        bufs = channel._bufs
        channel._staging = True
        try:
            for item in items:
                if isinstance(item, Rejected):
                    channel.complete(item.tag, item.status)
                else:
                    if item.buf != NO_BUFFER:
                        bufs[item.tag] = item.buf
                    serve_command(handler, channel, item)
                if channel.closed:  # a completion (corrupt CQ head) or the handler closed it
                    break
        finally:
            channel._staging = False
            channel.publish()
        return True

    @staticmethod
    def _stalled(side: ServerSide) -> bool:
        """Commands are waiting but none may be taken until the client reaps completions;
        the client will not ring for that, so such a channel is re-checked after a bounded
        sleep instead of keeping the poller awake."""
        return side.outstanding + (side.cq_entries - side.cq.free_slots()) >= side.cq_entries

    async def _park(self) -> None:
        parked: list[ServerChannel] = []
        work = False
        # A stalled channel or an undelivered completion needs a re-check that no client
        # will ring for: sleep SLEEP_BOUND then. Otherwise every command that arrives is
        # announced by a ring (or, were that ring lost, by the waiting client's re-ring).
        bound = limits.IDLE_POLLER_SLEEP
        for channel in self._order:
            if channel.closed:
                continue
            try:
                if channel.side.pending:
                    bound = limits.SLEEP_BOUND
                if channel.side.sq.prepare_park():
                    parked.append(channel)
                elif self._stalled(channel.side):
                    bound = limits.SLEEP_BOUND
                else:
                    work = True
                    break
            except ProtocolError as exc:
                log.warning("closing %r: %s", channel, exc)
                channel.close()
        if not work:
            # Every flag is set and every ring was re-checked after its fence: a producer
            # that publishes from now on sees NEED_WAKEUP and rings its SQ eventfd.
            with trio.CancelScope() as scope:
                if self._order:
                    scope.deadline = trio.current_time() + bound
                self._park_scope = scope
                await trio.lowlevel.wait_readable(self._epoll.fileno())
            self._park_scope = None
            for fd, _events in self._epoll.poll(0):
                doorbell.drain(fd)
            self.sleeps += 1
        for channel in parked:
            if not channel.closed:
                channel.side.sq.finish_park()
                if not work:
                    channel.side.stats[ServerStat.SLEEPS] += 1
