"""The pyfuse3 `Operations` that forwards every FUSE request as a command on the driver channel.

Each method builds one command (carrying the request's uid, gid, pid and umask in the fixed
header) and maps the completion back: a negative errno becomes `FUSEError`, attributes become
`EntryAttributes`. No file-system logic lives here; the server decides everything.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from channel.protocol.codec import unpack_body
from channel.protocol.errors import ChannelClosed
from channel.protocol.limits import MAX_RESTORE_BATCH, XATTR_SIZE_MAX
from channel.protocol.opcodes import DOT_ENTRIES, READDIR_DOTS, READDIR_PAGE, Op, readdir_page_ends
from channel.transport.calls import AsyncCaller, Reply
from fusefront import commands
from fusefront.bodies import RESTORE_BODY_BYTES, forget_bodies
from fusefront.cache import CacheMode
from fusefront.guard import answer_every_request, guarded, unguarded
from fusefront.invalidation import ALL, INODE
from fusefront.link import OperationLost
from fusefront.listing import Listing
from fusefront.mountinfo import INFO_XATTR_NAME
from fusefront.nodes import NodeTable
from fusefront.presentation import Presentation

log = logging.getLogger(__name__)

#: The xattr the kernel reads before every buffered write.
CAPABILITY_XATTR = b"security.capability"
#: The answer to the kernel's per-write question from the negative cache (see getxattr):
#: one exception, reused, its traceback dropped at each raise (or it would grow with every
#: one). pyfuse3 reads its errno before the coroutine ends, so no two requests share it.
_NO_CAPABILITY = FUSEError(errno.ENODATA)
#: renameat2's flag: the two names swap their objects.
RENAME_EXCHANGE = 2


def _data_state(attr: Sequence[int]) -> tuple[int, int, int]:
    """What tells whether a file's data changed: size, mtime and ctime (ATTR_FIELDS order)."""
    return attr[6], attr[10], attr[11]


def _ctx_fields(ctx: pyfuse3.RequestContext) -> dict[str, int]:
    return {"uid": ctx.uid, "gid": ctx.gid, "pid": ctx.pid, "umask": ctx.umask}


@answer_every_request
class RingOperations(pyfuse3.Operations):
    """Every operation is one round trip on the driver channel (a kernel request too large
    for one command is split, see fusefront.bodies). No handler's exception ends the driver:
    see fusefront.guard."""

    supports_dot_lookup = True

    def __init__(
        self,
        client: AsyncCaller,
        cache: CacheMode,
        *,
        writeback: bool = False,
        xattr: bool = True,
        info: Callable[[], bytes] = lambda: b"{}",
        presentation: Presentation | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.cache = cache
        self.presentation = presentation or Presentation()
        self.enable_writeback_cache = writeback
        #: False with `-o noxattr`: every xattr request is answered ENOSYS here, at once. The
        #: kernel then marks the connection as having none of that operation (userspace
        #: sees EOPNOTSUPP) and stops sending it: no GETXATTR security.capability before
        #: each write.
        self.xattr = xattr
        self._info = info
        #: inode -> until when it is known to carry no security.capability. The kernel asks
        #: before every buffered write (to strip file capabilities); answering from here for
        #: as long as the cache mode trusts attributes halves the round trips of small
        #: writes. Never used with cache=none; setxattr/removexattr/forget drop the entry.
        self._no_capability: dict[int, float] = {}
        #: What the kernel holds, to be restored on a new server (see fusefront.nodes).
        self.nodes = NodeTable()
        #: inode -> (size, mtime, ctime) when last closed here; see fusefront.cache, `auto`.
        self._closed_state: dict[int, tuple[int, int, int]] = {}
        #: directory handle -> what the driver holds of its listing (see fusefront.listing)
        self._listings: dict[int, Listing] = {}

    async def _call(self, opcode: int, body: Any = None, **kwargs: Any) -> Reply:
        try:
            reply = await self.client.call(opcode, body, **kwargs)
        except OperationLost:
            raise FUSEError(errno.EIO) from None
        except ChannelClosed:
            raise FUSEError(errno.ENOTCONN) from None
        if reply.status < 0:
            raise FUSEError(-reply.status)
        return reply

    async def restore(self, client: AsyncCaller) -> None:
        """Hand a new server what the kernel holds: inode numbers, then open handles."""
        for listing in self._listings.values():
            listing.lost()  # entries counted by the old server: the new one never counted them
        restored = lost = 0
        for batch in self.nodes.restore_batches(MAX_RESTORE_BATCH, RESTORE_BODY_BYTES):
            reply = await client.call(Op.RESTORE_INODES, batch)
            statuses = reply.body if reply.status >= 0 else [reply.status] * len(batch)
            restored += sum(1 for status in statuses if status == 0)
            lost += sum(1 for status in statuses if status != 0)
        handles = lost_handles = 0
        for fh, handle in list(self.nodes.handles.items()):
            body = commands.open_flags(handle.flags)
            reply = await client.call(Op.RESTORE_HANDLE, body, ino=handle.ino, fh=fh)
            if reply.status < 0:
                lost_handles += 1
            else:
                handles += 1
        log.warning(
            "restored %d inodes and %d open handles on the new server (%d and %d not found)",
            restored, handles, lost, lost_handles,
        )  # fmt: skip

    def _attr(self, fields: Sequence[int], generation: int = 0) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        (
            a.st_ino, a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, a.st_size,
            a.st_blocks, a.st_blksize, a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns,
        ) = self.presentation.apply(fields)  # fmt: skip
        a.generation = generation
        a.entry_timeout = self.cache.entry_timeout
        a.attr_timeout = self.cache.attr_timeout
        return a

    def _entry(self, body: Any, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        """The entry of a reply that counted a lookup, which the kernel now holds."""
        attr, generation = body
        entry = self._attr(attr, generation)
        self.nodes.learned(entry.st_ino, parent, name)
        return entry

    def _file_info(self, fh: int, flags: int, keep_cache: bool = False) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(
            fh=fh,
            direct_io=self.cache.direct_io(flags),
            keep_cache=self.cache.keep_cache or keep_cache,
        )

    def _unchanged(self, inode: int, attr: Sequence[int] | None) -> bool:
        """Is the file as it was when last closed here (see fusefront.cache, `auto`)?"""
        return (
            self.cache.keep_unchanged
            and attr is not None
            and self._closed_state.get(inode) == _data_state(attr)
        )

    def forget_cached(self, notices: list[Any]) -> list[Any]:
        """The driver's own knowledge of what the server's notices name goes too (see
        fusefront.invalidation); [ALL] becomes a notice for everything the kernel holds."""
        if any(notice[0] == ALL for notice in notices):
            self._no_capability.clear()
            return [[INODE, pyfuse3.ROOT_INODE], *self.nodes.everything()]
        for notice in notices:
            if notice[0] == INODE:
                self._no_capability.pop(notice[1], None)
        return notices

    # -- names --------------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> Any:
        body = commands.named(name)
        reply = await self._call(Op.LOOKUP, body, ino=parent_inode, **_ctx_fields(ctx))
        return self._entry(reply.body, parent_inode, name)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self._no_capability.pop(inode, None)
            self.nodes.forgot(inode, count)
            self._closed_state.pop(inode, None)
        await self._give_back(inode_list)

    async def _give_back(self, inode_list: Sequence[tuple[int, int]]) -> None:
        with contextlib.suppress(ChannelClosed):
            for body in forget_bodies(inode_list):
                await self.client.call(Op.BATCH_FORGET, body)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Any:
        reply = await self._call(Op.GETATTR, ino=inode, **_ctx_fields(ctx))
        return self._attr(reply.body)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> Any:
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_size:
            changes["size"] = attr.st_size
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        reply = await self._call(Op.SETATTR, changes, ino=inode, fh=fh or 0, **_ctx_fields(ctx))
        return self._attr(reply.body)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        reply = await self._call(Op.READLINK, ino=inode, **_ctx_fields(ctx))
        target: bytes = reply.body[0]
        return target

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> Any:
        body = commands.mknod(name, mode, rdev)
        reply = await self._call(Op.MKNOD, body, ino=parent_inode, **_ctx_fields(ctx))
        return self._entry(reply.body, parent_inode, name)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> Any:
        body = commands.mkdir(name, mode)
        reply = await self._call(Op.MKDIR, body, ino=parent_inode, **_ctx_fields(ctx))
        return self._entry(reply.body, parent_inode, name)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(Op.UNLINK, commands.named(name), ino=parent_inode, **_ctx_fields(ctx))
        self.nodes.removed(parent_inode, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(Op.RMDIR, commands.named(name), ino=parent_inode, **_ctx_fields(ctx))
        self.nodes.removed(parent_inode, name)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> Any:
        body = commands.symlink(name, target)
        reply = await self._call(Op.SYMLINK, body, ino=parent_inode, **_ctx_fields(ctx))
        return self._entry(reply.body, parent_inode, name)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        body = commands.rename(name_old, parent_inode_new, name_new, flags)
        await self._call(Op.RENAME, body, ino=parent_inode_old, **_ctx_fields(ctx))
        if flags & RENAME_EXCHANGE:
            self.nodes.exchanged(parent_inode_old, name_old, parent_inode_new, name_new)
        else:
            self.nodes.renamed(parent_inode_old, name_old, parent_inode_new, name_new)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> Any:
        body = commands.link(new_parent_inode, new_name)
        reply = await self._call(Op.LINK, body, ino=inode, **_ctx_fields(ctx))
        return self._entry(reply.body, new_parent_inode, new_name)

    # -- files --------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> Any:
        reply = await self._call(Op.OPEN, commands.open_flags(flags), ino=inode, **_ctx_fields(ctx))
        self.nodes.opened(reply.value, inode, flags)
        return self._file_info(reply.value, flags, self._unchanged(inode, reply.body))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> Any:
        body = commands.create(name, mode, flags)
        reply = await self._call(Op.CREATE, body, ino=parent_inode, **_ctx_fields(ctx))
        entry = self._entry(reply.body, parent_inode, name)
        self.nodes.opened(reply.value, entry.st_ino, flags)
        return self._file_info(reply.value, flags), entry

    async def read(self, fh: int, off: int, size: int) -> bytes:
        reply = await self._call(Op.READ, fh=fh, offset=off, size=size, read_size=size)
        return reply.data or b""

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        reply = await self._call(Op.WRITE, fh=fh, offset=off, data=buf)
        return reply.value

    async def flush(self, fh: int) -> None:
        # Every close(2) would cost a round trip for nothing: the export is a local file
        # system, whose close reports no errors that write and fsync did not. ENOSYS tells the
        # kernel to stop sending FLUSH for this mount (it still writes back dirty pages).
        raise FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        inode = self.nodes.handle_inode(fh)
        self.nodes.closed(fh)
        reply = await self._call(Op.RELEASE, fh=fh)
        if inode is not None and reply.body:
            self._closed_state[inode] = _data_state(reply.body)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._call(Op.FSYNC, fh=fh, flags=int(datasync))

    # -- directories --------------------------------------------------------------------
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        reply = await self._call(Op.OPENDIR, ino=inode, **_ctx_fields(ctx))
        self.nodes.opened(reply.value, inode, 0, is_dir=True)
        return reply.value

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._listings.setdefault(fh, Listing())
        if stale := listing.seek(start_id):
            await self._give_back(stale)
        directory = self.nodes.handle_inode(fh) or 0
        while not listing.ended:
            if not listing.pending:
                reply = await self._call(
                    Op.READDIR, fh=fh, offset=listing.at, flags=READDIR_DOTS,
                    size=READDIR_PAGE, read_size=READDIR_PAGE,
                )  # fmt: skip
                listing.fill(
                    unpack_body(reply.data) if reply.data else [], readdir_page_ends(reply.body)
                )
                continue
            name, attr, next_offset = listing.next()
            if not pyfuse3.readdir_reply(token, name, self._attr(attr), next_offset):
                return  # the kernel's buffer is full: the rest waits for its next READDIR
            listing.passed()
            if name not in DOT_ENTRIES:
                self.nodes.learned(attr[0], directory, name)

    async def releasedir(self, fh: int) -> None:
        listing = self._listings.pop(fh, None)
        if listing is not None and (stale := listing.take_back()):
            await self._give_back(stale)
        self.nodes.closed(fh)
        await self._call(Op.RELEASEDIR, fh=fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._call(Op.FSYNCDIR, fh=fh, flags=int(datasync))

    async def statfs(self, ctx: pyfuse3.RequestContext) -> Any:
        reply = await self._call(Op.STATFS, ino=pyfuse3.ROOT_INODE, **_ctx_fields(ctx))
        s = pyfuse3.StatvfsData()
        for key, value in reply.body.items():
            setattr(s, key, value)
        return s

    # -- extended attributes ------------------------------------------------------------
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        if not self.xattr:
            raise FUSEError(errno.ENOSYS)
        self._no_capability.pop(inode, None)
        await self._call(Op.SETXATTR, [name, 0], ino=inode, data=value, **_ctx_fields(ctx))

    @unguarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # The kernel asks this before every buffered write: the cached answer allocates
        # nothing, reaches no trio checkpoint and needs no guard (it cannot fail).
        if name == CAPABILITY_XATTR and self._no_capability.get(inode, 0.0) > time.monotonic():
            raise _NO_CAPABILITY.with_traceback(None)
        value: bytes = await self._getxattr(inode, name, ctx)
        return value

    @guarded("getxattr")
    async def _getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not self.xattr:
            raise FUSEError(errno.ENOSYS)
        if inode == pyfuse3.ROOT_INODE and name == INFO_XATTR_NAME:
            return self._info()  # the driver describes itself: `ringfs stats`, discovery
        try:
            reply = await self._call(
                Op.GETXATTR,
                [name],
                ino=inode,
                size=XATTR_SIZE_MAX,
                read_size=XATTR_SIZE_MAX,
                **_ctx_fields(ctx),
            )
        except FUSEError as exc:
            if name == CAPABILITY_XATTR and exc.errno == errno.ENODATA and self.cache.timeout:
                self._no_capability[inode] = time.monotonic() + self.cache.timeout
            raise
        return reply.data or b""

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if not self.xattr:
            raise FUSEError(errno.ENOSYS)
        reply = await self._call(
            Op.LISTXATTR,
            ino=inode,
            size=XATTR_SIZE_MAX,
            read_size=XATTR_SIZE_MAX,
            **_ctx_fields(ctx),
        )
        return [n for n in (reply.data or b"").split(b"\0") if n]

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not self.xattr:
            raise FUSEError(errno.ENOSYS)
        self._no_capability.pop(inode, None)
        await self._call(Op.REMOVEXATTR, [name], ino=inode, **_ctx_fields(ctx))

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        await self._call(Op.ACCESS, commands.access(mode), ino=inode, **_ctx_fields(ctx))
        return True
