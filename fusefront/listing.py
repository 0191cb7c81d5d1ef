"""What the driver holds of one open directory's listing between the kernel's READDIRs.

The driver asks the server for pages of READDIR_PAGE bytes (hundreds of entries, a lookup
counted for each); the kernel asks for as many entries as fit its own buffer, often far
fewer. The rest of a page waits here for the kernel's next READDIR, which continues at the
very offset where the previous one stopped, so each entry costs the server one count and the
channel one share of a page: nothing is forgotten and fetched again. Entries still waiting
when the listing is rewound, seeks elsewhere or is closed are handed back (`take_back`, for
one BATCH_FORGET). The listing also remembers where the server said it ends, so that the
kernel's last READDIR (which finds nothing more) needs no round trip.

`.` and `..` (the listing begins with them, see READDIR_DOTS) count no lookup: they are
never handed back, and never remembered as names of the inodes they reach.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from channel.protocol.opcodes import DOT_ENTRIES

#: An entry as READDIR sends it: [name, attr, next_offset].
Entry = list[Any]


class Listing:
    __slots__ = ("at", "end", "pending")

    def __init__(self) -> None:
        #: entries fetched and not yet passed to the kernel
        self.pending: deque[Entry] = deque()
        #: the offset after the last entry passed on (where the first pending one starts)
        self.at = 0
        #: the offset at which the server said the listing ends, once it has
        self.end: int | None = None

    def seek(self, offset: int) -> list[tuple[int, int]]:
        """The kernel asks for entries from `offset`; returns the lookups of waiting
        entries that cannot be used there (to be forgotten)."""
        if offset == self.at and offset:
            return []
        if not offset:
            self.end = None  # offset 0 lists afresh: the old end means nothing
        self.at = offset
        return self.take_back()

    @property
    def ended(self) -> bool:
        return not self.pending and self.end is not None and self.at >= self.end

    def fill(self, entries: list[Entry], ends: bool) -> None:
        """A page the server sent from `at`; `ends`: nothing follows it."""
        self.pending.extend(entries)
        if ends or not entries:
            self.end = entries[-1][2] if entries else self.at

    def next(self) -> Entry:
        return self.pending[0]

    def passed(self) -> Entry:
        """The kernel took the next entry."""
        entry = self.pending.popleft()
        self.at = entry[2]
        return entry

    def take_back(self) -> list[tuple[int, int]]:
        """Drop the waiting entries; the lookups the server counted for them."""
        pending, self.pending = self.pending, deque()
        return [(entry[1][0], 1) for entry in pending if entry[0] not in DOT_ENTRIES]

    def lost(self) -> None:
        """The server that counted the waiting entries is gone: drop them unforgotten."""
        self.pending.clear()
