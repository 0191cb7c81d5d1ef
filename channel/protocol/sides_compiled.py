"""The compiled sides: `channel/protocol/_core.c`'s C types, completed with the reference's
cold parts.

`channel.protocol.sides` selects these unless RINGFS_PURE=1. The subclasses take everything
off the hot path (buffer pool, submit's keywords, the queued completions' flush) from
`channel.protocol.sides_pure`, so there is one definition of each; the layout's numbers reach
the C code here, from channel/protocol/layout.py, never re-typed in C.
"""

from __future__ import annotations

import os
import struct
from collections import deque

# No fallback: a missing or broken build is an ImportError here, not a silent slowdown.
from channel.protocol import _core, layout, sides_pure
from channel.protocol.codec import NO_TOKEN, Command, Completion, unpack_body
from channel.protocol.errors import ProtocolError
from channel.protocol.layout import ClientStat, Region, ServerStat
from channel.protocol.ring import RingConsumer, RingProducer
from channel.protocol.sides_pure import Rejected

_core.configure(
    NEED_WAKEUP=layout.NEED_WAKEUP,
    OPCODE_COUNTERS=layout.OPCODE_COUNTERS,
    LATENCY_BUCKETS=layout.LATENCY_BUCKETS,
    STATS_WORDS=layout.STATS_BLOCK // 8,
    C_COMMANDS=ClientStat.COMMANDS,
    C_COMPLETIONS=ClientStat.COMPLETIONS,
    C_BYTES_OUT=ClientStat.BYTES_OUT,
    C_BYTES_IN=ClientStat.BYTES_IN,
    C_LATENCY_SUM_NS=ClientStat.LATENCY_SUM_NS,
    C_LATENCY=ClientStat.LATENCY,
    C_BY_OPCODE=ClientStat.BY_OPCODE,
    S_COMMANDS=ServerStat.COMMANDS,
    S_COMPLETIONS=ServerStat.COMPLETIONS,
    S_ERRORS=ServerStat.ERRORS,
    S_AUTH_FAILURES=ServerStat.AUTH_FAILURES,
    S_PROTOCOL_ERRORS=ServerStat.PROTOCOL_ERRORS,
    S_BY_OPCODE=ServerStat.BY_OPCODE,
    ProtocolError=ProtocolError,
    struct_error=struct.error,
    Command=Command,
    Completion=Completion,
    Rejected=Rejected,
    unpack_body=unpack_body,
)


def _ring(
    region: Region, words: tuple[int, int, int], offset: int, entries: int, producer: bool
) -> _core.Producer | _core.Consumer:
    head, tail, flags = words
    # The core holds these views (no buffer export of its own), so Region.close and
    # client.release_views unmap at once, and the core refuses a released one.
    slots = tuple(region.slot(offset, i) for i in range(entries))
    kind = _core.Producer if producer else _core.Consumer
    return kind(region.words, head, tail, flags, entries, region.geometry.slot_size, slots,
                producer)  # fmt: skip


_SQ = (layout.SQ_HEAD, layout.SQ_TAIL, layout.SQ_FLAGS)
_CQ = (layout.CQ_HEAD, layout.CQ_TAIL, layout.CQ_FLAGS)


def sq_consumer(region: Region) -> RingConsumer:
    g = region.geometry
    return _ring(region, _SQ, g.sq_offset, g.sq_entries, False)  # type: ignore[return-value]


def sq_producer(region: Region) -> RingProducer:
    g = region.geometry
    return _ring(region, _SQ, g.sq_offset, g.sq_entries, True)  # type: ignore[return-value]


def cq_consumer(region: Region) -> RingConsumer:
    g = region.geometry
    return _ring(region, _CQ, g.cq_offset, g.cq_entries, False)  # type: ignore[return-value]


def cq_producer(region: Region) -> RingProducer:
    g = region.geometry
    return _ring(region, _CQ, g.cq_offset, g.cq_entries, True)  # type: ignore[return-value]


class ClientSide(_core.ClientCore, sides_pure.ClientSide):
    """sides_pure.ClientSide with post and reap (and its rings) in C."""

    def __init__(self, region: Region, token: bytes = NO_TOKEN) -> None:
        g = region.geometry
        _core.ClientCore.__init__(self, sq_producer(region), cq_consumer(region), token,
                                  region.client_stats(), g.buf_size)  # fmt: skip
        self.region = region
        self.max_in_flight = g.cq_entries
        self._buf_size = g.buf_size
        self._free_buffers = list(range(g.buf_count - 1, -1, -1))
        self.buffers = [region.buffer(i) for i in range(g.buf_count)]
        self.stats[ClientStat.PID] = os.getpid()


class ServerSide(_core.ServerCore, sides_pure.ServerSide):
    """sides_pure.ServerSide with take and complete (and its rings) in C; the queued
    completions' flush is the reference's."""

    def __init__(self, region: Region, token: bytes) -> None:
        g = region.geometry
        _core.ServerCore.__init__(self, sq_consumer(region), cq_producer(region), token,
                                  region.server_stats(), g.buf_count, g.buf_size,
                                  deque())  # fmt: skip
        self.region = region
        self.buf_count = g.buf_count
        self.buf_size = g.buf_size
        self.cq_entries = g.cq_entries
        self.buffers = [region.buffer(i) for i in range(g.buf_count)]
        self.stats[ServerStat.PID] = os.getpid()
