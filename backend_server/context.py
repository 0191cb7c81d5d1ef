"""One command in execution: the request object every operation function receives.

It binds the command to its channel, its session and its caller, and gives operations the
few verbs they share: resolve an inode the channel holds, count a lookup of a new one, reply.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, NamedTuple

from backend_server.errors import fail
from backend_server.handles import Handle
from backend_server.identity import Identity, Switcher
from backend_server.inodes import Inode, InodeTable
from backend_server.wire import entry_body
from channel.protocol.codec import Command
from channel.transport.server_api import ServedChannel

if TYPE_CHECKING:
    from backend_server.session import Session


class Reply(NamedTuple):
    """A successful completion: packed body, bytes placed in the output buffer, value."""

    body: bytes = b""
    data_len: int = 0
    value: int = 0


EMPTY = Reply()


class Request:
    __slots__ = (
        "caller",
        "channel",
        "cmd",
        "handle",
        "identity",
        "inline",
        "pinned",
        "session",
        "table",
    )

    def __init__(
        self,
        table: InodeTable,
        session: Session,
        channel: ServedChannel,
        cmd: Command,
        caller: Identity,
        identity: Switcher,
    ) -> None:
        self.table = table
        self.session = session
        self.channel = channel
        self.cmd = cmd
        self.caller = caller
        #: the thread's identity switcher (an operation acting as `caller` may step out)
        self.identity = identity
        #: The handle named by cmd.fh, resolved and pinned by the dispatcher for the
        #: operations that use one (None otherwise).
        self.handle: Handle | None = None
        #: Runs in the trio thread (operations with variable work bound it, see READDIR).
        self.inline = True
        #: Inodes this operation uses: their descriptors stay open until `done`.
        self.pinned: list[Inode] = []

    @property
    def umask(self) -> int:
        return self.cmd.umask & 0o777

    @property
    def caller_is_root(self) -> bool:
        return self.caller.uid == 0

    def inode(self, number: int) -> Inode:
        """The inode `number` the channel holds, pinned until the operation is `done`: its
        descriptor (`Inode.fd`) cannot be closed under the operation's feet."""
        inode = self.table.get(self.session, number, pin=True)
        if inode is not self.table.root:
            self.pinned.append(inode)
        return inode

    def done(self) -> None:
        """The operation has finished with its inodes (the dispatcher calls this)."""
        if self.pinned:
            pinned, self.pinned = self.pinned, []
            self.table.unpin(pinned)

    def file_handle(self) -> Handle:
        handle = self.handle
        assert handle is not None, "the dispatch table marks this operation as using a handle"
        return handle

    def register(
        self, fd: int, parent: Inode | None, *names: bytes
    ) -> tuple[Inode, os.stat_result]:
        """Count a lookup of the object behind O_PATH `fd` (taken over, see InodeTable),
        reached from `parent` by `names`."""
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.table.register(self.session, fd, st, parent, *names), st

    def register_opened(self, fd: int, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Count a lookup of the object open as `fd` (which stays the caller's), `name` in
        `parent`; takes no descriptor."""
        st = os.fstat(fd)
        return self.table.register_opened(self.session, fd, st, parent, name), st

    def entry_named(self, parent: Inode, name: bytes) -> Reply:
        """Register `name` in `parent` (just created) and reply with its `entry` body; opens
        no descriptor, so running out of them cannot fail a create after the fact."""
        counted = self.table.register_entry(self.session, parent, parent.fd, name)
        if counted is None:
            raise fail(errno.ENOENT)
        inode, st = counted
        return Reply(entry_body(inode.number, st))

    def entry(self, fd: int, parent: Inode | None, *names: bytes) -> Reply:
        """Register `fd`'s object and reply with its `entry` body."""
        inode, st = self.register(fd, parent, *names)
        return Reply(entry_body(inode.number, st))
