"""The shared region's layout: every offset and struct of the memfd, defined here and only here.

```
offset 0            header page (HEADER_SIZE bytes)
  0                   identity line: magic, version, geometry
  256.. 575           ring control: SQ head | SQ tail | SQ flags | CQ head | CQ tail | CQ flags,
                      each 8-byte word on a cache line of its own (no false sharing between
                      the side that writes it and the side that reads it)
  1024..2047          client statistics (written by the client only)
  2048..3071          server statistics (written by the server only)
HEADER_SIZE         SQ slots: sq_entries x slot_size
                    CQ slots: cq_entries x slot_size
page aligned        data buffers: buf_count x buf_size
```

Each statistics word has exactly one writer, so plain stores suffice and a third process can
read them through a read-only mapping at any time.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass

from channel.protocol import limits
from channel.protocol.errors import ProtocolError

MAGIC = b"RINGFS\x00\x01"
PAGE_SIZE = 4096
CACHE_LINE = 64
HEADER_SIZE = PAGE_SIZE

#: magic, version, sq_entries, cq_entries, slot_size, buf_count, buf_size
IDENTITY = struct.Struct("<8sIIIIII")
IDENTITY_OFFSET = 0

# Ring control words, as byte offsets. Each sits on its own cache line.
SQ_HEAD = 256
SQ_TAIL = SQ_HEAD + CACHE_LINE
SQ_FLAGS = SQ_TAIL + CACHE_LINE
CQ_HEAD = SQ_FLAGS + CACHE_LINE
CQ_TAIL = CQ_HEAD + CACHE_LINE
CQ_FLAGS = CQ_TAIL + CACHE_LINE

#: Ring flag: the consumer is parked and must be woken through the ring's eventfd.
NEED_WAKEUP = 1

#: Opcode counters per side: opcodes below this are counted, the rest share the last slot.
OPCODE_COUNTERS = 64
#: Latency histogram: bucket i counts round trips of [2**i, 2**(i+1)) microseconds.
LATENCY_BUCKETS = 32

CLIENT_STATS = 1024
SERVER_STATS = 2048
STATS_BLOCK = 1024


class ClientStat:
    """Word indices (in 8-byte units from CLIENT_STATS) of the client's counters."""

    COMMANDS = 0
    COMPLETIONS = 1
    BYTES_OUT = 2
    BYTES_IN = 3
    WAKEUPS_SENT = 4
    SLEEPS = 5
    LATENCY_SUM_NS = 6
    PID = 7
    LATENCY = 8  # LATENCY_BUCKETS words
    BY_OPCODE = LATENCY + LATENCY_BUCKETS  # OPCODE_COUNTERS words


class ServerStat:
    """Word indices (in 8-byte units from SERVER_STATS) of the server's counters."""

    COMMANDS = 0
    COMPLETIONS = 1
    BYTES_READ = 2
    BYTES_WRITTEN = 3
    WAKEUPS_SENT = 4
    SLEEPS = 5
    AUTH_FAILURES = 6
    PROTOCOL_ERRORS = 7
    PID = 8
    ERRORS = 9
    BY_OPCODE = 16  # OPCODE_COUNTERS words


assert ClientStat.BY_OPCODE + OPCODE_COUNTERS <= STATS_BLOCK // 8
assert ServerStat.BY_OPCODE + OPCODE_COUNTERS <= STATS_BLOCK // 8


#: Seals a region's memfd carries, so that its size can never change under a mapping.
SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def size_is_sealed(fd: int) -> bool:
    """True if `fd` is a memfd whose size can no longer shrink (mapping it is then safe)."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return False
    return bool(seals & fcntl.F_SEAL_SHRINK)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True, slots=True)
class Geometry:
    """The shape of a region: ring sizes, slot size and the data-buffer pool."""

    sq_entries: int = 256
    cq_entries: int = 256
    slot_size: int = 8192
    buf_count: int = 32
    buf_size: int = 1024 * 1024

    def validate(self) -> None:
        """Raise ProtocolError unless every field is within the limits."""
        for name in ("sq_entries", "cq_entries"):
            n = getattr(self, name)
            if not (
                _is_power_of_two(n) and limits.MIN_RING_ENTRIES <= n <= limits.MAX_RING_ENTRIES
            ):
                raise ProtocolError(f"{name}={n}: not a power of two in range")
        if not (
            limits.MIN_SLOT_SIZE <= self.slot_size <= limits.MAX_SLOT_SIZE
            and self.slot_size % CACHE_LINE == 0
        ):
            raise ProtocolError(f"slot_size={self.slot_size}: out of range or unaligned")
        if not 0 <= self.buf_count <= limits.MAX_BUFFERS:
            raise ProtocolError(f"buf_count={self.buf_count}: out of range")
        if not (
            limits.MIN_BUFFER_SIZE <= self.buf_size <= limits.MAX_BUFFER_SIZE
            and self.buf_size % PAGE_SIZE == 0
        ):
            raise ProtocolError(f"buf_size={self.buf_size}: out of range or not page sized")
        if self.region_size > limits.MAX_REGION_SIZE:
            raise ProtocolError(f"region of {self.region_size} bytes is too large")

    @property
    def sq_offset(self) -> int:
        return HEADER_SIZE

    @property
    def cq_offset(self) -> int:
        return HEADER_SIZE + self.sq_entries * self.slot_size

    @property
    def buffers_offset(self) -> int:
        end = self.cq_offset + self.cq_entries * self.slot_size
        return (end + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE

    @property
    def region_size(self) -> int:
        return self.buffers_offset + self.buf_count * self.buf_size

    def as_list(self) -> list[int]:
        return [self.sq_entries, self.cq_entries, self.slot_size, self.buf_count, self.buf_size]

    @classmethod
    def from_list(cls, values: object) -> Geometry:
        """Build from the handshake's list form, validating types and ranges."""
        if not (
            isinstance(values, list | tuple)
            and len(values) == 5
            and all(type(v) is int for v in values)
        ):
            raise ProtocolError("geometry must be a list of five integers")
        geometry = cls(*values)
        geometry.validate()
        return geometry


class Region:
    """A mapped channel region: the memfd's bytes with typed views over the header.

    The creator (a client) calls `create`; the server `attach`es to a received memfd after
    checking its real size; `stats` readers attach read-only.
    """

    def __init__(self, fd: int, geometry: Geometry, *, readonly: bool = False) -> None:
        self.fd = fd
        self.geometry = geometry
        self.readonly = readonly
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        self.mmap = mmap.mmap(fd, geometry.region_size, mmap.MAP_SHARED, prot)
        self.buf = memoryview(self.mmap)
        if readonly:
            self.buf = self.buf.toreadonly()
        #: The header page as 8-byte words: ring counters and statistics.
        self.words = self.buf[:HEADER_SIZE].cast("Q")

    @classmethod
    def create(cls, geometry: Geometry, name: str = "ringfs") -> Region:
        """Create a memfd of the geometry's size, map it and write the identity line."""
        geometry.validate()
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, geometry.region_size)
            # A peer that maps this memfd would take SIGBUS if it shrank later: seal its size,
            # and the server refuses a memfd without SEAL_SHRINK (see `size_is_sealed`).
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SIZE_SEALS | fcntl.F_SEAL_SEAL)
            region = cls(fd, geometry)
        except BaseException:
            os.close(fd)
            raise
        IDENTITY.pack_into(
            region.buf, IDENTITY_OFFSET, MAGIC, limits.PROTOCOL_VERSION, *geometry.as_list()
        )
        return region

    @classmethod
    def attach(cls, fd: int, geometry: Geometry, *, readonly: bool = False) -> Region:
        """Map a received memfd after checking that it really is as large as its geometry
        says and that its identity line matches; raise ProtocolError otherwise."""
        geometry.validate()
        size = os.fstat(fd).st_size
        if size < geometry.region_size:
            raise ProtocolError(
                f"memfd holds {size} bytes, its geometry needs {geometry.region_size}"
            )
        region = cls(fd, geometry, readonly=readonly)
        try:
            magic, version, *shape = IDENTITY.unpack_from(region.buf, IDENTITY_OFFSET)
            if magic != MAGIC:
                raise ProtocolError("bad magic in region header")
            if version != limits.PROTOCOL_VERSION:
                raise ProtocolError(f"region version {version}, expected {limits.PROTOCOL_VERSION}")
            if shape != geometry.as_list():
                raise ProtocolError("region header disagrees with the announced geometry")
        except BaseException:
            region.close(close_fd=False)
            raise
        return region

    @classmethod
    def open_stats(cls, fd: int) -> Region:
        """Map an existing region read-only, reading its geometry from its own header."""
        with mmap.mmap(fd, HEADER_SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as head:
            magic, version, *shape = IDENTITY.unpack_from(head, IDENTITY_OFFSET)
        if magic != MAGIC or version != limits.PROTOCOL_VERSION:
            raise ProtocolError("not a ringfs region of this version")
        return cls.attach(fd, Geometry(*shape), readonly=True)

    def slot(self, ring_offset: int, index: int) -> memoryview:
        size = self.geometry.slot_size
        start = ring_offset + index * size
        return self.buf[start : start + size]

    def buffer(self, index: int) -> memoryview:
        """Data buffer `index`; the caller has validated it against the geometry."""
        g = self.geometry
        start = g.buffers_offset + index * g.buf_size
        return self.buf[start : start + g.buf_size]

    def client_stats(self) -> memoryview:
        return self.words[CLIENT_STATS // 8 : (CLIENT_STATS + STATS_BLOCK) // 8]

    def server_stats(self) -> memoryview:
        return self.words[SERVER_STATS // 8 : (SERVER_STATS + STATS_BLOCK) // 8]

    def close(self, *, close_fd: bool = True) -> None:
        """Drop every view and unmap; views still held elsewhere keep the mapping alive
        (mmap refuses to close while exported), so the region is then left to the GC."""
        self.words.release()
        self.buf.release()
        with contextlib.suppress(BufferError):
            self.mmap.close()
        if close_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
