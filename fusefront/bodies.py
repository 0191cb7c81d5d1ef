"""Command bodies that grow with the kernel's request, split so that each fits one slot.

Most commands have a bounded body (a name, a mode, a symlink target: see
`channel.protocol.limits.DRIVER_SLOT_SIZE`). Two grow without a bound the slot knows of:

* BATCH_FORGET: the kernel gives back every inode it evicted since the driver last read
  /dev/fuse in one request; after `drop_caches` or under memory pressure, with the driver
  descheduled for a moment, that is tens of thousands of [ino, nlookup] pairs;
* RESTORE_INODES: after a server restart, every inode the kernel holds.

Both are sent as several commands. The sizes are msgpack's worst case for each entry, so a
body is never packed twice to be measured, and every body fits `MAX_BODY`: the body room of
the driver channel's slot, the smallest the driver talks through (the socket transport's
frames are larger).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from channel.protocol.codec import max_command_body
from channel.protocol.limits import DRIVER_SLOT_SIZE

#: Bytes of msgpack body one driver command may carry.
MAX_BODY = max_command_body(DRIVER_SLOT_SIZE)
#: msgpack's widest array header (array 32): what a list costs besides its entries.
ARRAY_HEADER = 5
#: msgpack's widest unsigned integer (uint 64).
UINT_MAX_BYTES = 9
#: One [ino, nlookup] pair at its widest: a fixarray header and two uint 64.
FORGET_ENTRY_BYTES = 1 + 2 * UINT_MAX_BYTES
#: Pairs per BATCH_FORGET command (426 with 8 KiB slots).
FORGETS_PER_BODY = (MAX_BODY - ARRAY_HEADER) // FORGET_ENTRY_BYTES
#: Bytes of restore entries per RESTORE_INODES command (fusefront.nodes sizes each entry).
RESTORE_BODY_BYTES = MAX_BODY - ARRAY_HEADER


def forget_bodies(pairs: Sequence[tuple[int, int]]) -> Iterator[list[list[int]]]:
    """BATCH_FORGET bodies of at most FORGETS_PER_BODY [ino, nlookup] pairs each."""
    for start in range(0, len(pairs), FORGETS_PER_BODY):
        yield [[ino, count] for ino, count in pairs[start : start + FORGETS_PER_BODY]]
