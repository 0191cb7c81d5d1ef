"""The inode table: inode numbers, the O_PATH descriptors behind them, and lookup counts.

Every inode the server has handed out is held as an `O_PATH | O_NOFOLLOW` descriptor opened
relative to its parent's descriptor, so nothing is ever resolved by path and no symlink is
ever followed: a symlink is held as itself. Inodes are keyed by (st_dev, st_ino), so every
name of a hard-linked file resolves to the same inode number.

Numbers are stable for the life of the server: the root is 1 (FUSE's ROOT_ID) and every other
(st_dev, st_ino) gets the next number the first time it is seen and keeps it, even across
forget and a later lookup. That map costs about 100 bytes per file looked up, which is the
price of `ls -i` never changing under a mounted tree; a file's entry goes when its last
lookup is forgotten after it was removed (link count 0: it can never be looked up again), so
creating and removing files all day does not grow the server. (While the server holds a
descriptor the kernel cannot reuse the st_ino; after the last forget it may, and the reused
st_ino then gets the old number, exactly as on the underlying file system.)

Lookup counts are kept per channel (`Session.lookups`), and the table's count for an inode is
their sum: a channel can FORGET only what it looked up, can use only inodes it holds (and the
root), and when it ends every reference it held is dropped in one go. When an inode's count
reaches zero its descriptor is closed.

The table is used from the trio thread and, for READDIR pages, from worker threads; one lock
guards it. Descriptors are closed only by forget and session release, which run in the trio
thread; worker threads use handle descriptors (pinned, see `handles`), never inode ones.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from typing import TYPE_CHECKING

from backend_server.names import fail
from channel.protocol.opcodes import ROOT_INO

if TYPE_CHECKING:
    from backend_server.session import Session


O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Inode:
    """One file-system object the server holds. `kind` is the S_IFMT bits (a file's type
    never changes)."""

    __slots__ = ("fd", "key", "kind", "lookups", "number")

    def __init__(self, number: int, fd: int, key: tuple[int, int], kind: int) -> None:
        self.number = number
        self.fd = fd
        self.key = key
        self.kind = kind
        self.lookups = 0

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def is_symlink(self) -> bool:
        return self.kind == stat.S_IFLNK

    @property
    def proc_path(self) -> str:
        """The magic link through which path-taking calls reach this very inode (not for
        symlinks: following the magic link of a symlink's O_PATH descriptor lands on the
        symlink, and a path call would then follow the symlink itself)."""
        return f"/proc/self/fd/{self.fd}"


class InodeTable:
    def __init__(self, export_root: str) -> None:
        fd = os.open(export_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self.root = Inode(ROOT_INO, fd, (st.st_dev, st.st_ino), stat.S_IFDIR)
        self.root.lookups = 1  # the table's own reference: the root is never freed
        self._lock = threading.Lock()
        self._by_number: dict[int, Inode] = {ROOT_INO: self.root}
        self._by_key: dict[tuple[int, int], Inode] = {self.root.key: self.root}
        self._numbers: dict[tuple[int, int], int] = {self.root.key: ROOT_INO}
        self._next_number = ROOT_INO + 1
        self.closed = False

    def __len__(self) -> int:
        """Inodes currently held (the root included)."""
        return len(self._by_number)

    def get(self, session: Session, number: int) -> Inode:
        """The inode `number` if `session` holds a reference to it (or it is the root);
        ESTALE otherwise: inode numbers are not capabilities a channel can guess."""
        if number == ROOT_INO:
            return self.root
        with self._lock:
            if number in session.lookups:
                inode = self._by_number.get(number)
                if inode is not None:
                    return inode
        raise fail(errno.ESTALE)

    def register(self, session: Session, fd: int, st: os.stat_result) -> Inode:
        """Count one lookup of the object behind `fd` (an O_PATH descriptor this call takes
        over: it is kept, or closed when the object is already held)."""
        return self._count(session, fd, st, None, 1)

    def count_known(self, session: Session, st: os.stat_result) -> Inode | None:
        """Count one lookup of the object with these stats if the table already holds it
        (its own descriptor keeps the object, so its (st_dev, st_ino) cannot have been
        reused); None if it is not held, and then nothing is counted."""
        with self._lock:
            inode = self._by_key.get((st.st_dev, st.st_ino))
            if inode is None or session.closed or self.closed:
                return None
            return self._counted(session, inode, 1)

    def number_of(self, st: os.stat_result) -> int:
        """The number the object with these stats has, or will have once looked up."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            number = self._numbers.get(key)
            if number is None:
                number = self._numbers[key] = self._next_number
                self._next_number += 1
            return number

    def restore(
        self, session: Session, fd: int, st: os.stat_result, number: int, count: int
    ) -> Inode:
        """Like `register`, with `count` lookups and under the given `number`: a restarted
        server takes back what the kernel still holds. EEXIST when the number or the object
        is already known otherwise."""
        return self._count(session, fd, st, number, count)

    def _count(
        self, session: Session, fd: int, st: os.stat_result, wanted: int | None, count: int
    ) -> Inode:
        key = (st.st_dev, st.st_ino)
        with self._lock:
            try:
                if session.closed or self.closed:
                    raise fail(errno.ESHUTDOWN, "channel closed")
                inode = self._by_key.get(key)
                number = self._numbers.get(key)
                if wanted is not None:
                    if number not in (None, wanted) or (
                        inode is None and wanted in self._by_number
                    ):
                        raise fail(errno.EEXIST, "inode number already in use")
                    number = wanted
                if inode is None:
                    if number is None:
                        number = self._next_number
                    self._next_number = max(self._next_number, number + 1)
                    self._numbers[key] = number
                    inode = Inode(number, fd, key, stat.S_IFMT(st.st_mode))
                    self._by_key[key] = inode
                    self._by_number[number] = inode
                    fd = -1  # kept by the inode
            finally:
                if fd >= 0:
                    os.close(fd)
            return self._counted(session, inode, count)

    @staticmethod
    def _counted(session: Session, inode: Inode, count: int) -> Inode:
        """Add `count` lookups of `inode` by `session` (the caller holds the lock)."""
        inode.lookups += count
        lookups = session.lookups
        lookups[inode.number] = lookups.get(inode.number, 0) + count
        return inode

    def forget(self, session: Session, number: int, count: int) -> None:
        """Drop up to `count` of `session`'s references to `number` (never more than the
        session holds; unknown numbers are ignored, as FORGET has no reply to fail in)."""
        with self._lock:
            held = session.lookups.get(number, 0)
            count = min(count, held)
            if count <= 0:
                return
            if held == count:
                del session.lookups[number]
            else:
                session.lookups[number] = held - count
            self._drop(number, count)

    def release_session(self, session: Session) -> None:
        """Drop every reference `session` holds."""
        with self._lock:
            lookups, session.lookups = session.lookups, {}
            for number, count in lookups.items():
                self._drop(number, count)

    def _drop(self, number: int, count: int) -> None:
        inode = self._by_number.get(number)
        if inode is None or inode is self.root:
            return
        inode.lookups -= count
        if inode.lookups <= 0:
            del self._by_number[number]
            del self._by_key[inode.key]
            try:
                if os.fstat(inode.fd).st_nlink == 0:
                    del self._numbers[inode.key]  # removed: its number is never needed again
            except OSError:
                pass
            os.close(inode.fd)
            inode.fd = -1

    def close(self) -> None:
        """Close every descriptor, the root's included."""
        with self._lock:
            self.closed = True
            for inode in self._by_number.values():
                if inode.fd >= 0:
                    os.close(inode.fd)
                    inode.fd = -1
            self._by_number.clear()
            self._by_key.clear()
