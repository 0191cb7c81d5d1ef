"""Doorbells: the eventfds of a channel, and the adaptive wait of a ring's consumer.

This module owns every eventfd system call and every sleep of the channel. It implements the
io_uring SQPOLL discipline on top of `RingConsumer.prepare_park/finish_park` and
`RingProducer.publish`:

* a consumer spins while work arrives (the blocking endpoints and the server's poller; a
  trio client's callers spin for their own answers, see `shm_client.TrioClient`);
* after `idle_spin` seconds without work it calls `prepare_park()`, which sets NEED_WAKEUP and
  re-checks the ring; only if the ring is still empty does it sleep on the eventfd, and never
  longer than `limits.SLEEP_BOUND`, so that even a lost wake-up costs a bounded delay;
* a producer writes the eventfd only when `publish()` says the consumer is parked.

There is one eventfd per direction: the SQ's wakes the server, the CQ's wakes the client.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable

import trio

from channel.protocol import limits
from channel.protocol.errors import ChannelClosed
from channel.protocol.ring import RingConsumer, RingProducer


def make_eventfd() -> int:
    """A fresh non-blocking, close-on-exec eventfd with a zero counter."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def ring(fd: int) -> None:
    """Wake the consumer sleeping on `fd`. A full counter (EAGAIN) already means "wake up"."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_write(fd, 1)


def drain(fd: int) -> None:
    """Reset the eventfd's counter so that the next sleep on it really sleeps."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)


def is_eventfd(fd: int) -> bool:
    """True if `fd` (in this process) is an eventfd; used on fds received from a peer."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
            return any(line.startswith("eventfd-count:") for line in info)
    except OSError:
        return False


def peer_gone(sock: socket.socket) -> bool:
    """True if the stream socket's peer has hung up. After the handshake a peer never sends
    anything, so readable bytes also end the channel."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True  # EOF (b"") or unexpected bytes: either way the channel is over


_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_END = select.POLLHUP | select.POLLERR | select.POLLNVAL


def sleep_blocking(
    eventfd: int, watch: socket.socket | None = None, timeout: float = limits.SLEEP_BOUND
) -> bool:
    """Sleep until the eventfd is rung or `timeout` passes; drain it. Returns False if the
    watched socket says the peer is gone (then the caller raises ChannelClosed)."""
    poller = select.poll()
    poller.register(eventfd, select.POLLIN)
    if watch is not None:
        poller.register(watch.fileno(), _POLL_IN | select.POLLRDHUP)
    try:
        events = poller.poll(timeout * 1000.0)
    except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
        events = []
    gone = False
    for fd, mask in events:
        if fd == eventfd:
            drain(eventfd)
        elif watch is not None and mask & (_POLL_IN | _POLL_END | select.POLLRDHUP):
            gone = peer_gone(watch)
    return not gone


async def sleep_trio(eventfd: int, timeout: float = limits.SLEEP_BOUND) -> None:
    """Trio's bounded sleep on an eventfd (peer death is watched by a separate task)."""
    with trio.move_on_after(timeout):
        await trio.lowlevel.wait_readable(eventfd)
    drain(eventfd)


class IdleClock:
    """When did this consumer last see work? Decides between spinning and parking.

    After a park that found nothing, the consumer parks again at once instead of spinning
    another `idle_spin`: an idle consumer then costs one wake-up per SLEEP_BOUND, not a
    spin of idle_spin per SLEEP_BOUND.
    """

    __slots__ = ("idle_spin", "last_work")

    def __init__(self, idle_spin: float = limits.DEFAULT_IDLE_SPIN) -> None:
        self.idle_spin = idle_spin
        self.last_work = time.monotonic()

    def worked(self) -> None:
        self.last_work = time.monotonic()

    def should_park(self) -> bool:
        return time.monotonic() - self.last_work >= self.idle_spin


def nudge_if_unconsumed(producer: RingProducer, eventfd: int) -> bool:
    """Ring the peer again if commands still sit unconsumed on `producer`'s ring, and say
    whether they did.

    Called by a waiting client after each bounded sleep that brought nothing: should a
    wake-up of the server ever be lost, this re-ring bounds the command's wait by
    SLEEP_BOUND, which lets an idle server sleep longer (limits.IDLE_POLLER_SLEEP).
    A spurious ring only makes the server's next park return at once."""
    if producer.free_slots() < producer.entries:
        ring(eventfd)
        return True
    return False


def wait_blocking(
    consumer: RingConsumer,
    eventfd: int,
    clock: IdleClock,
    on_sleep: Callable[[], None],
    watch: socket.socket | None = None,
    nudge: Callable[[], bool] | None = None,
) -> None:
    """Return once `consumer` has something available; spin, then park bounded, calling
    `nudge` after each sleep that brought nothing. Raises ChannelClosed if the watched
    socket's peer goes away while we wait."""
    available = consumer.available
    should_park = clock.should_park
    yield_cpu = os.sched_yield
    while not available():
        if not should_park():
            # On two cores the peer is often queued on this very CPU (wake-affine
            # scheduling); yielding lets it run instead of spinning against it.
            yield_cpu()
            continue
        if consumer.prepare_park():
            alive = sleep_blocking(eventfd, watch)
            consumer.finish_park()
            on_sleep()
            if not alive:
                raise ChannelClosed("the server closed the channel")
            if nudge is not None and not available():
                nudge()
    clock.worked()
