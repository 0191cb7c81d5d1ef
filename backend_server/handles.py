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
"""

from __future__ import annotations

import os

from backend_server.identity import Identity


class Handle:
    __slots__ = ("closed", "fd", "ino", "is_dir", "opener", "snapshot", "users")

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
            os.close(fd)
