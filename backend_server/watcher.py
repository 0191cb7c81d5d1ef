"""Watching the export for changes made behind the server's back, for the mounts' caches.

A mount's kernel caches names and attributes for its cache mode's timeouts. Changes made
through the server reach it anyway (through the mount itself, or as coherence notices for
application channels), but a change made directly in the export (another program on the
export's machine) would stay unseen until a timeout. So the server watches, with inotify,
every directory a driver looked something up in (the directories whose names and children
the kernel may now cache; the root from the start), and turns each event into coherence
notices (`[ENTRY, dir, name]` and `[INODE, dir]` for a name created, removed or moved;
`[INODE, child]` for a child's attributes or a closed write; `[INODE, dir]` for the
directory's own), which every watching driver applies to its kernel. The cache modes'
promises (fusefront.cache) rest on this.

Watched: IN_CREATE, IN_DELETE, IN_MOVED_FROM/TO, IN_ATTRIB (mode, owner, times, links,
xattrs) and IN_CLOSE_WRITE (data, once its writer closes the file: close-to-open). Not
IN_MODIFY: every write would be an event, the server's own included, and a writer's data
counts once it closes the file. So a truncate(2) by path and the writes of a writer still
holding the file open are seen when the cache mode's timeouts run out, or at the next open.

The server's own changes are events too; they are not reported (the mount knows them, and
an application channel's are reported by coherence with their completion). Each inline
operation that may change the export runs between two reads of the inotify queue (`around`):
what was queued before is someone else's and is reported, what is queued right after is the
operation's own and is dropped. Events from another process that land within those few
microseconds are dropped with them. Commands run in worker threads change only file data
(large writes, fallocate: IN_MODIFY, not watched).

Bounds: at most MAX_WATCHED_DIRS directories (limits). When a new one cannot be watched
(that bound, or the kernel's inotify limits) every watch is dropped and the drivers are told
to forget everything ([ALL]); watching starts again with the directories looked up next.
A queue overflow (IN_Q_OVERFLOW: events were lost) tells the drivers the same.

Why ctypes and not a library: the standard library has no inotify, and the three calls
(inotify_init1, inotify_add_watch, inotify_rm_watch) are libc's stable ABI; the well-kept
wrappers (inotify_simple) are the same few lines over ctypes, and the events are read with
os.read on a descriptor trio waits on. Where inotify is unavailable the server runs without
it (logged): the timeouts are then the only bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio

from backend_server.coherence import ALL, ENTRY, INODE, Notice
from channel.protocol.limits import MAX_WATCHED_DIRS
from channel.protocol.opcodes import ROOT_INO, Op

if TYPE_CHECKING:
    from backend_server.context import Request
    from backend_server.inodes import Inode, InodeTable

log = logging.getLogger(__name__)

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

NAMES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
MASK = NAMES | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
MASK |= IN_EXCL_UNLINK
#: struct inotify_event: wd, mask, cookie, len; then the name, NUL-padded to len.
EVENT = struct.Struct("iIII")
READ_SIZE = 64 * 1024

Report = Callable[[list[Notice]], None]

#: The operations whose own system calls make watched events (names, attributes, a close
#: after writing): run between two reads of the queue (ExportWatcher.around).
SELF_NOTIFYING = frozenset(
    {Op.CREATE, Op.MKNOD, Op.MKDIR, Op.SYMLINK, Op.LINK, Op.UNLINK, Op.RMDIR, Op.RENAME,
     Op.SETATTR, Op.SETXATTR, Op.REMOVEXATTR, Op.RELEASE}
)  # fmt: skip


def _parent(req: Request) -> list[int]:
    return [req.cmd.ino]


def _listed(req: Request) -> list[int]:
    return [req.handle.ino] if req.handle is not None else []


#: A driver's command after which its kernel may cache names in these directories.
LOOKS_UP: dict[int, Callable[[Request], list[int]]] = {
    Op.LOOKUP: _parent, Op.CREATE: _parent, Op.MKNOD: _parent, Op.MKDIR: _parent,
    Op.SYMLINK: _parent, Op.OPENDIR: _parent, Op.READDIR: _listed,
    Op.LINK: lambda req: [req.cmd.body[0]],
    Op.RENAME: lambda req: [req.cmd.ino, req.cmd.body[1]],
}  # fmt: skip


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class ExportWatcher:
    """The inotify watches of one server (see the module docstring). Used from the trio
    thread only; `report` hands notices to coherence."""

    def __init__(self, table: InodeTable, report: Report) -> None:
        self.table = table
        self.report = report
        self._wds: dict[int, Inode] = {}  # watch descriptor -> the directory
        self._watched: dict[int, int] = {}  # inode number -> watch descriptor
        self.fd = -1
        try:
            self._c = _libc()
            fd = self._c.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            self.fd = fd
        except (OSError, AttributeError) as exc:
            log.warning("no inotify (%s): changes made behind the server's back are seen "
                        "only when the mounts' cache timeouts run out", exc)  # fmt: skip

    @property
    def watching(self) -> bool:
        """Is any directory watched (so that the server's own changes must be told apart)?"""
        return bool(self._wds)

    def watches(self, number: int) -> bool:
        return number in self._watched or self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._wds.clear()
        self._watched.clear()

    # -- watching ---------------------------------------------------------------------------
    def watch(self, directory: Inode) -> None:
        """Watch `directory` (a driver looked a name up in it), if not yet watched."""
        if self.fd < 0 or directory.number in self._watched or not directory.is_dir:
            return
        if len(self._watched) >= MAX_WATCHED_DIRS:
            self._start_over()
        wd = self._add(directory)
        if wd < 0:
            if ctypes.get_errno() not in (errno.ENOSPC, errno.ENOMEM):
                return  # gone meanwhile, or not watchable: nothing to promise about it
            self._start_over()
            wd = self._add(directory)
            if wd < 0:
                return
        self._wds[wd] = directory
        self._watched[directory.number] = wd

    def _add(self, directory: Inode) -> int:
        try:
            with self.table.pinned(directory) as fd:
                wd: int = self._c.inotify_add_watch(self.fd, f"/proc/self/fd/{fd}".encode(), MASK)
        except OSError:
            return -1
        return wd

    def _start_over(self) -> None:
        """No room for another watch: drop them all and have the drivers forget everything."""
        log.info("watching %d directories, no room for more: starting over", len(self._wds))
        for wd in list(self._wds):
            self._c.inotify_rm_watch(self.fd, wd)
        self._wds.clear()
        self._watched.clear()
        self.report([[ALL, ROOT_INO]])

    # -- events -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: report the events as they come."""
        if self.fd < 0:
            return
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            self.drain()

    def drain(self, *, report: bool = True) -> None:
        """Read every queued event; report them (or drop them: the server's own)."""
        if self.fd < 0:
            return
        notices: list[Notice] = []
        while True:
            try:
                raw = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            if report:
                notices += self._notices(raw)
            else:
                self._forget_ignored(raw)
        if notices:
            self.report(notices)

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        """Run one of the server's own changes: what it queues is not reported."""
        if self.fd < 0:
            yield
            return
        self.drain()
        try:
            yield
        finally:
            self.drain(report=False)

    def _events(self, raw: bytes) -> Iterator[tuple[int, int, bytes]]:
        at = 0
        while at + EVENT.size <= len(raw):
            wd, mask, _cookie, length = EVENT.unpack_from(raw, at)
            at += EVENT.size
            name = raw[at : at + length].rstrip(b"\0")
            at += length
            yield wd, mask, name

    def _forget_ignored(self, raw: bytes) -> None:
        for wd, mask, _ in self._events(raw):
            if mask & IN_IGNORED:
                self._unwatch(wd)
            elif mask & IN_Q_OVERFLOW:
                self.report([[ALL, ROOT_INO]])  # lost events may be someone else's

    def _unwatch(self, wd: int) -> None:
        directory = self._wds.pop(wd, None)
        if directory is not None:
            self._watched.pop(directory.number, None)

    def _notices(self, raw: bytes) -> list[Notice]:
        notices: list[Notice] = []
        for wd, mask, name in self._events(raw):
            if mask & IN_Q_OVERFLOW:
                return [[ALL, ROOT_INO]]
            if mask & IN_IGNORED:
                self._unwatch(wd)
                continue
            directory = self._wds.get(wd)
            if directory is None:
                continue
            number = directory.number
            if not name:  # the directory itself: its attributes, or it moved or went
                notices.append([INODE, number])
            elif mask & NAMES:
                notices += [[ENTRY, number, name], [INODE, number]]
            else:  # a child's attributes, or a write it closed
                child = self._child(directory, name)
                notices.append([INODE, child] if child else [ENTRY, number, name])
        return notices

    def _child(self, directory: Inode, name: bytes) -> int | None:
        """The number of `name` in `directory` if the server holds it, else None."""
        if directory.dropped:
            return None
        try:
            return self.table.held_number(directory, name)
        except OSError:
            return None
