"""Per-channel state: what one channel holds, so that all of it can be released when it ends.

A `Session` is created on a channel's first command. It holds the channel's lookup counts
(see `inodes`), its open file and directory handles (see `handles`) and who its caller is.
Handles are per channel: a file handle number means nothing on another channel.
"""

from __future__ import annotations

import errno

from backend_server.errors import fail
from backend_server.handles import Handle, HandleQuota
from backend_server.identity import Identity
from channel.transport.server_api import ServedChannel


class Session:
    __slots__ = (
        "app_identity", "channel", "closed", "handles", "lookups", "next_fh", "quota", "readonly"
    )  # fmt: skip

    def __init__(
        self,
        channel: ServedChannel,
        app_identity: Identity | None,
        quota: HandleQuota | None = None,
        *,
        readonly: bool = False,
    ) -> None:
        self.channel = channel
        #: For an application channel, the identity cached at handshake; None for the driver,
        #: whose commands carry their caller in the header.
        self.app_identity = app_identity
        #: Counts this channel's handles (see HandleQuota); None: not counted.
        self.quota = quota
        #: The channel belongs to a read-only mount: every change is refused (EROFS).
        self.readonly = readonly
        self.lookups: dict[int, int] = {}
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.closed = False

    def add_handle(self, handle: Handle) -> int:
        fh = self.next_fh
        self.next_fh = fh + 1
        self.handles[fh] = handle
        self._charge(handle)
        return fh

    def _charge(self, handle: Handle) -> None:
        if self.quota is not None:
            owner = self.app_identity.uid if self.app_identity is not None else None
            self.quota.charge(handle, owner)

    def install_handle(self, fh: int, handle: Handle) -> None:
        """Put `handle` under the number `fh` (a restored handle keeps its old number)."""
        if fh in self.handles:
            raise fail(errno.EEXIST)
        self.handles[fh] = handle
        self.next_fh = max(self.next_fh, fh + 1)
        self._charge(handle)

    def handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise fail(errno.EBADF)
        return handle

    def pop_handle(self, fh: int) -> Handle:
        handle = self.handles.pop(fh, None)
        if handle is None:
            raise fail(errno.EBADF)
        return handle
