"""The two ends of a channel as state machines over a mapped region: no I/O. The pure-Python
reference implementation: `channel.protocol.sides` selects it (RINGFS_PURE=1) or the compiled core
(`channel/_core.c`), which must reproduce it exactly.

`ClientSide` submits commands and reaps completions; `ServerSide` takes commands (checking
each one's token against the channel's) and publishes completions. Both keep the statistics
counters their side owns. Eventfd rings and sleeps belong to the adapters in
`channel.transport` (doorbell, shm_client, shm_server); this module only says *when* a
wake-up is needed, so tests can drive it byte by byte.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from time import monotonic_ns

from channel.protocol import layout
from channel.protocol.codec import (
    NO_BUFFER,
    NO_TOKEN,
    Command,
    Completion,
    HeaderFields,
    decode_command,
    decode_completion,
    header_fields,
    peek_tag,
    token_matches,
    write_command,
    write_completion,
)
from channel.protocol.errors import ProtocolError
from channel.protocol.layout import ClientStat, Region, ServerStat
from channel.protocol.ring import RingConsumer, RingProducer

_LAST_OPCODE_COUNTER = layout.OPCODE_COUNTERS - 1
_LAST_BUCKET = layout.LATENCY_BUCKETS - 1
# The counters as plain module constants: the hot paths below touch several per command.
_BY_OPCODE = ClientStat.BY_OPCODE
_COMMANDS = ClientStat.COMMANDS
_COMPLETIONS = ClientStat.COMPLETIONS
_BYTES_OUT = ClientStat.BYTES_OUT
_BYTES_IN = ClientStat.BYTES_IN
_LATENCY = ClientStat.LATENCY
_LATENCY_SUM_NS = ClientStat.LATENCY_SUM_NS
_SERVER_BY_OPCODE = ServerStat.BY_OPCODE
_SERVER_COMMANDS = ServerStat.COMMANDS
_SERVER_COMPLETIONS = ServerStat.COMPLETIONS


def _opcode_counter(opcode: int) -> int:
    """The per-opcode statistics word of `opcode` (an unsigned 16-bit number)."""
    return opcode if opcode < _LAST_OPCODE_COUNTER else _LAST_OPCODE_COUNTER


def sq_consumer(region: Region) -> RingConsumer:
    g = region.geometry
    return RingConsumer(
        region, layout.SQ_HEAD, layout.SQ_TAIL, layout.SQ_FLAGS, g.sq_offset, g.sq_entries
    )


def sq_producer(region: Region) -> RingProducer:
    g = region.geometry
    return RingProducer(
        region, layout.SQ_HEAD, layout.SQ_TAIL, layout.SQ_FLAGS, g.sq_offset, g.sq_entries
    )


def cq_consumer(region: Region) -> RingConsumer:
    g = region.geometry
    return RingConsumer(
        region, layout.CQ_HEAD, layout.CQ_TAIL, layout.CQ_FLAGS, g.cq_offset, g.cq_entries
    )


def cq_producer(region: Region) -> RingProducer:
    g = region.geometry
    return RingProducer(
        region, layout.CQ_HEAD, layout.CQ_TAIL, layout.CQ_FLAGS, g.cq_offset, g.cq_entries
    )


class ClientSide:
    """The submitting end. At most `cq_entries` commands are in flight, so the server can
    always place every completion; the data-buffer pool is managed here, privately."""

    def __init__(self, region: Region, token: bytes = NO_TOKEN) -> None:
        self.region = region
        self.token = token
        self.sq = sq_producer(region)
        self.cq = cq_consumer(region)
        self.stats = region.client_stats()
        self.max_in_flight = region.geometry.cq_entries
        #: tag -> submit time (ns), for the latency histogram
        self.in_flight: dict[int, int] = {}
        self._next_tag = 1
        self._buf_size = region.geometry.buf_size
        self._free_buffers = list(range(region.geometry.buf_count - 1, -1, -1))
        self.buffers = [region.buffer(i) for i in range(region.geometry.buf_count)]
        self.stats[ClientStat.PID] = os.getpid()

    # -- data buffers ---------------------------------------------------------------------
    def acquire_buffer(self) -> int | None:
        """A free data buffer's index, or None when all are in use."""
        return self._free_buffers.pop() if self._free_buffers else None

    def release_buffer(self, index: int) -> None:
        self._free_buffers.append(index)

    @property
    def free_buffers(self) -> int:
        return len(self._free_buffers)

    # -- submission -----------------------------------------------------------------------
    def can_submit(self) -> bool:
        return len(self.in_flight) < self.max_in_flight and self.sq.free_slots() > 0

    def post(
        self, opcode: int, body: bytes, buf: int, data_len: int, fields: HeaderFields
    ) -> tuple[int, bool]:
        """Put one command on the SQ; returns (tag, True if the server must be woken).
        The caller has checked can_submit(); `body` is already msgpacked."""
        tag = self._next_tag
        self._next_tag = tag + 1
        sq = self.sq
        write_command(sq.slots[sq.tail & sq.mask], tag, opcode, self.token, body, buf, data_len,
                      fields)  # fmt: skip
        self.in_flight[tag] = monotonic_ns()
        stats = self.stats
        stats[_COMMANDS] += 1
        stats[_BY_OPCODE + _opcode_counter(opcode)] += 1
        if data_len:
            stats[_BYTES_OUT] += data_len
        return tag, sq.publish()

    def submit(
        self, opcode: int, body: bytes = b"", *, buf: int = NO_BUFFER, data_len: int = 0,
        **fields: int,
    ) -> tuple[int, bool]:  # fmt: skip
        """`post` with the header fields as keywords."""
        return self.post(opcode, body, buf, data_len, header_fields(fields))

    # -- completion -----------------------------------------------------------------------
    def reap(self) -> Completion | None:
        """The next completion for a command in flight, or None when the CQ is empty.
        Completions whose tag is not in flight are dropped (and counted as protocol errors
        by nobody: the server is trusted not to invent them; they are simply ignored)."""
        cq = self.cq
        while cq.available():
            try:
                completion = decode_completion(cq.slots[cq.head & cq.mask], self._buf_size)
            finally:
                cq.release()
            started = self.in_flight.pop(completion.tag, None)
            if started is None:
                continue
            # Account for it: count, latency histogram, bytes.
            stats = self.stats
            elapsed = monotonic_ns() - started
            stats[_COMPLETIONS] += 1
            stats[_LATENCY_SUM_NS] += elapsed
            bucket = (elapsed // 1000).bit_length()
            stats[_LATENCY + (bucket if bucket < _LAST_BUCKET else _LAST_BUCKET)] += 1
            if completion.data_len:
                stats[_BYTES_IN] += completion.data_len
            return completion
        return None

    def count(self, stat: int, n: int = 1) -> None:
        self.stats[stat] += n


def _encode_completion(
    slot: memoryview, tag: int, status: int, body: bytes, data_len: int, buf: int, value: int
) -> None:
    try:
        write_completion(slot, tag, status, body, data_len, buf, value)
    except ValueError:  # the body does not fit a slot
        write_completion(slot, tag, -errno.EOVERFLOW, b"", 0, NO_BUFFER, 0)


class Rejected:
    """A command the server answers without executing it (bad token, malformed slot)."""

    __slots__ = ("status", "tag")

    def __init__(self, tag: int, status: int) -> None:
        self.tag = tag
        self.status = status


class ServerSide:
    """The serving end. Takes a command only while its completion is sure to find room in
    the CQ, so a client that stops reaping stalls only itself, and the server never holds
    more than `cq_entries` commands of one channel."""

    def __init__(self, region: Region, token: bytes) -> None:
        self.region = region
        self.token = token
        self.sq = sq_consumer(region)
        self.cq = cq_producer(region)
        self.stats = region.server_stats()
        g = region.geometry
        self.buf_count = g.buf_count
        self.buf_size = g.buf_size
        self.cq_entries = g.cq_entries
        self.buffers = [region.buffer(i) for i in range(g.buf_count)]
        #: commands taken whose completion has not been published yet
        self.outstanding = 0
        #: completions waiting for room in the CQ (only a client that stops reaping, or
        #: lies about its CQ head, makes any wait)
        self.pending: deque[tuple[int, int, bytes, int, int, int]] = deque()
        #: completions written to CQ slots (counted in `cq.tail`) whose tail is not stored yet
        self.staged = 0
        self.stats[ServerStat.PID] = os.getpid()

    def take(self) -> Command | Rejected | None:
        """The next command, a Rejected to answer with an error, or None (nothing to do, or
        no room for another completion). Raises ProtocolError if the ring itself is corrupt,
        after which the channel must be closed."""
        sq = self.sq
        if not sq.available():
            return None
        if self.outstanding >= self.cq.free_slots():
            return None  # every free CQ slot is promised to a command already taken
        item = self._take_slot(sq.slots[sq.head & sq.mask])
        sq.release()  # everything needed was copied out of the slot
        return item

    def take_many(self, limit: int) -> list[Command | Rejected]:
        """What up to `limit` calls of `take` would return, stopping where `take` would
        return None, from one load of the SQ's tail and one of the CQ's head; the slots go
        back to the client with one store of the SQ's head after the last was copied out.
        On an error the slots consumed so far are handed back and the commands taken are
        dropped (the caller closes the channel)."""
        if limit <= 0:
            return []
        sq = self.sq
        ready = sq.available()
        if not ready:
            return []
        # take() would succeed while outstanding + taken < free CQ slots
        n = min(self.cq.free_slots() - self.outstanding, ready, limit)
        items: list[Command | Rejected] = []
        head, mask, slots = sq.head, sq.mask, sq.slots
        try:
            for i in range(n):
                items.append(self._take_slot(slots[(head + i) & mask]))
        finally:
            if items:
                sq.release(len(items))
        return items

    def _take_slot(self, slot: memoryview) -> Command | Rejected:
        """The command in `slot`, validated and counted; the caller releases the slot."""
        stats = self.stats
        try:
            command = decode_command(slot, self.buf_count, self.buf_size)
        except ProtocolError:
            self.outstanding += 1
            stats[_SERVER_COMMANDS] += 1
            stats[ServerStat.PROTOCOL_ERRORS] += 1
            return Rejected(peek_tag(slot), -errno.EPROTO)
        self.outstanding += 1
        stats[_SERVER_COMMANDS] += 1
        if not token_matches(command.token, self.token):
            stats[ServerStat.AUTH_FAILURES] += 1
            return Rejected(command.tag, -errno.EACCES)
        stats[_SERVER_BY_OPCODE + _opcode_counter(command.opcode)] += 1
        return command

    def complete(
        self,
        tag: int,
        status: int,
        body: bytes = b"",
        *,
        data_len: int = 0,
        buf: int = NO_BUFFER,
        value: int = 0,
    ) -> bool:
        """Publish (or queue, if the CQ is full) one completion, after any staged before it;
        True if the client must be woken. Raises ProtocolError if the CQ's head is corrupt."""
        self.stage(tag, status, body, data_len=data_len, buf=buf, value=value)
        return self.publish()

    def stage(
        self,
        tag: int,
        status: int,
        body: bytes = b"",
        *,
        data_len: int = 0,
        buf: int = NO_BUFFER,
        value: int = 0,
    ) -> None:
        """`complete` without the publishing: write the completion into the CQ's next slot
        (or queue it while the CQ is full or completions are queued already); `publish`
        makes it visible, with every other staged one, in one store of the tail."""
        self.outstanding -= 1
        stats = self.stats
        stats[_SERVER_COMPLETIONS] += 1
        if status < 0:
            stats[ServerStat.ERRORS] += 1
        cq = self.cq
        if self.pending or not cq.free_slots():
            self.pending.append((tag, status, body, data_len, buf, value))
            return
        _encode_completion(cq.slots[cq.tail & cq.mask], tag, status, body, data_len, buf, value)
        cq.tail += 1  # the slot is filled; the tail word is stored by publish
        self.staged += 1

    def publish(self) -> bool:
        """Make the staged completions (and the queued ones, as far as the CQ has room)
        visible with one store of the CQ's tail; True if the client must be woken. The
        ordering argument is channel.protocol.ring's: the slots' stores come before the
        tail's, and x86-64 keeps stores in order."""
        if self.pending:
            return self.flush()
        if not self.staged:
            return False
        self.staged = 0
        return self.cq.publish(0)

    def flush(self) -> bool:
        """Publish queued completions while the CQ has room, and the staged ones before
        them; True if the client must be woken."""
        cq, pending = self.cq, self.pending
        published = 0
        free = cq.free_slots() if pending else 0
        while pending and free:
            tag, status, body, data_len, buf, value = pending.popleft()
            _encode_completion(cq.slots[(cq.tail + published) & cq.mask], tag, status, body,
                               data_len, buf, value)  # fmt: skip
            published += 1
            free -= 1
        if not (published or self.staged):
            return False
        self.staged = 0
        return cq.publish(published)

    def count(self, stat: int, n: int = 1) -> None:
        self.stats[stat] += n
