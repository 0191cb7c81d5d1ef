"""Open file and directory handles, and the rule that keeps their descriptors alive while used.

A handle owns one real descriptor (opened through the inode's /proc/self/fd magic link as the
caller, so open-time permission checks are the kernel's). A directory handle also owns the
listing snapshot that makes READDIR offsets stable (see `ops_dir.readdir`).

An operation running in a worker thread pins the handle it uses (`users`), and a handle that
is released (RELEASE, or its channel ending) while pinned closes its descriptor only when the
last user unpins it. Without that, a RELEASE or a channel teardown racing a slow FSYNC could
close the descriptor and let the kernel reuse its number for an unrelated file under the
worker's feet. Pins are taken and dropped in the trio thread only.

A file handle remembers who opened it (`opener`): WRITE acts as that identity (see
`dispatch.OPS`), because a FUSE WRITE does not say who writes.

`HandleQuota` bounds what application channels may hold: MAX_HANDLES_PER_CHANNEL handles
per channel and MAX_HANDLES_PER_UID per user (the application's, as the kernel reported it),
EMFILE past either, as a process past its RLIMIT_NOFILE would get. It counts every handle's
descriptor in the server's `DescriptorBudget` too, the driver channel's included; those are
never refused here (the budget's reserve is theirs). A handle gives its share back when its
descriptor closes.
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Callable

from backend_server.identity import Identity
from channel.protocol import limits
from channel.transport.descriptors import DescriptorBudget


class Handle:
    __slots__ = ("closed", "fd", "ino", "is_dir", "opener", "refund", "snapshot", "users")

    def __init__(self, fd: int, ino: int, *, is_dir: bool, opener: Identity | None = None) -> None:
        self.fd = fd
        self.ino = ino
        self.is_dir = is_dir
        #: who opened it; None for a handle restored after a server restart (not recorded)
        self.opener = opener
        #: Directory listing taken at the last READDIR from offset 0 (names, in order).
        self.snapshot: list[bytes] | None = None
        self.users = 0
        self.closed = False
        #: Gives the handle's share of its quota back (see HandleQuota), once.
        self.refund: Callable[[], None] | None = None

    def pin(self) -> None:
        self.users += 1

    def unpin(self) -> None:
        self.users -= 1
        if self.closed and self.users == 0:
            self._close_fd()

    def close(self) -> None:
        """Release the handle; the descriptor goes now, or with the last pin."""
        self.closed = True
        self.snapshot = None
        if self.users == 0:
            self._close_fd()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            refund, self.refund = self.refund, None
            if refund is not None:
                refund()
            os.close(fd)


class HandleQuota:
    def __init__(
        self,
        budget: DescriptorBudget | None = None,
        *,
        per_channel: int = limits.MAX_HANDLES_PER_CHANNEL,
        per_uid: int = limits.MAX_HANDLES_PER_UID,
    ) -> None:
        self.budget = budget
        self.per_channel = per_channel
        self.per_uid = per_uid
        self.by_uid: collections.Counter[int] = collections.Counter()

    def refusal(self, held: int, uid: int) -> OSError | None:
        """Why an application channel of `uid` holding `held` handles may not open one
        more, or None."""
        if held >= self.per_channel:
            return OSError(errno.EMFILE, f"{held} handles open on this channel")
        if self.by_uid[uid] >= self.per_uid:
            return OSError(errno.EMFILE, f"uid {uid} holds {self.per_uid} handles")
        return None

    def charge(self, handle: Handle, uid: int | None) -> None:
        """Count `handle` (for `uid`, None for a driver channel's) until its descriptor closes."""
        budget = self.budget
        if budget is not None:
            budget.held += 1
        if uid is not None:
            self.by_uid[uid] += 1

        def refund() -> None:
            if budget is not None:
                budget.held -= 1
            if uid is not None:
                self.by_uid[uid] -= 1

        handle.refund = refund
