"""The inode table: inode numbers, how each inode is found again, its descriptor, lookup counts.

Identity. Where the export's file system supports file handles (`name_to_handle_at`, as ext4,
xfs, btrfs and tmpfs do) and the server may use them (`open_by_handle_at` needs
CAP_DAC_READ_SEARCH), an inode is identified by its mount id and file handle: equal handles
mean the same inode, and the generation number inside a handle makes a reused inode number a
different inode. Otherwise (a file system without handles, or a server that is not root) an
inode is identified by (st_dev, st_ino) and found again by the names it was reached by: its
parent inode and the name(s) beneath it, walked with O_NOFOLLOW and checked against the
recorded (st_dev, st_ino) and file type; a rename through the server updates the names, one
behind the server's back makes the inode ESTALE until it is looked up again. Either way every
name of a hard-linked file resolves to the same inode number.

Descriptors. Holding one O_PATH descriptor per inode the kernel knows would tie the number of
inodes a mount can hold to RLIMIT_NOFILE (virtiofsd has the same problem, and the same cure:
its `--inode-file-handles`). Descriptors are therefore opened on demand, as `O_PATH |
O_NOFOLLOW` (never following a symlink: a symlink is held as itself), and kept in a
least-recently-used cache of INODE_FD_CACHE entries. Every reopened descriptor is checked
against the inode's recorded type and st_ino before it is used. The root's descriptor is kept
for the life of the table, as is the descriptor of an inode that could not be found again
without it (no handle and no name: rare, and bounded by what the kernel holds).

Pins. The cache never closes a descriptor an operation may be using: `Request.inode` pins
the inode (`pin`) for the whole operation and the dispatcher unpins it when the operation is
done (`unpin`); eviction skips pinned inodes. So the descriptors held are at most
INODE_FD_CACHE plus those of the inodes operations in flight are using, plus two for the
root (its O_PATH descriptor, and the directory descriptor `open_by_handle_at` needs). Inodes
on other file systems mounted inside the export are found by name (the server holds no
descriptor that would keep such a mount busy).

Numbers are stable for the life of the server: the root is 1 (FUSE's ROOT_ID) and every other
inode gets the next number the first time it is seen and keeps it, even across forget and a
later lookup. That map costs about 150 bytes per file looked up, which is the price of `ls -i`
never changing under a mounted tree; a file's entry goes when its last lookup is forgotten
after it was removed (it can never be looked up again), so creating and removing files all day
does not grow the server.

Lookup counts are kept per channel (`Session.lookups`), and the table's count for an inode is
their sum: a channel can FORGET only what it looked up, can use only inodes it holds (and the
root), and when it ends every reference it held is dropped in one go. When an inode's count
reaches zero it leaves the table (and its descriptor, if it has one, is closed).

The table is used from the trio thread and, for READDIR pages, from worker threads; one lock
guards it, its cache included.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ParamSpec

from backend_server import syscalls
from backend_server.errors import fail
from channel.protocol.limits import INODE_FD_CACHE, INODE_FD_SHARE
from channel.protocol.opcodes import ROOT_INO

if TYPE_CHECKING:
    from backend_server.session import Session


P = ParamSpec("P")

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

#: An inode's identity: (mount id, file handle) or, without handles, (st_dev, st_ino).
Key = tuple[int, bytes] | tuple[int, int]

#: (key, mount id, file handle or None): what identifies an object, as found.
Found = tuple[Key, int, bytes | None]

#: errnos that mean "this object has no file handle": use names instead.
_NO_HANDLE = (errno.EOPNOTSUPP, errno.EOVERFLOW, errno.EINVAL, errno.ENOSYS)
#: errnos that mean "the process is out of descriptors": shed the cache and try once more.
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class Inode:
    """One file-system object the server knows. `kind` is the S_IFMT bits (a file's type
    never changes). Its descriptor is `fd`, opened on demand (see the module docstring)."""

    __slots__ = (
        "_fd", "dev", "dropped", "handle", "ino", "key", "kind", "lookups", "mount_id", "names",
        "number", "parent", "permanent", "pins", "table",
    )  # fmt: skip

    def __init__(self, table: InodeTable, number: int, key: Key, st: os.stat_result) -> None:
        self.table = table
        self.number = number
        self.key = key
        self.kind = stat.S_IFMT(st.st_mode)
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.lookups = 0
        self.pins = 0
        self._fd = -1
        #: Kept open for the life of the inode (root; or no way to find it again).
        self.permanent = False
        self.dropped = False
        self.mount_id = 0
        self.handle: bytes | None = None
        #: Without a handle: the parent it was last reached from and the names from there.
        self.parent: Inode | None = None
        self.names: tuple[bytes, ...] = ()

    @property
    def fd(self) -> int:
        """The O_PATH descriptor (opened now if it is not cached). Use it only while the
        inode is pinned (`Request.inode` does that) or is the root."""
        return self.table.fd_of(self)

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
    def __init__(
        self, export_root: str, *, handles: bool = True, fd_cache: int | None = None
    ) -> None:
        """`handles=False` identifies inodes by name even where handles work (for tests);
        `fd_cache` defaults to INODE_FD_CACHE, or less under a small RLIMIT_NOFILE."""
        fd = os.open(export_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self._lock = threading.Lock()
        if fd_cache is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            fd_cache = min(INODE_FD_CACHE, soft // INODE_FD_SHARE)
        #: descriptors the cache may hold (see the module docstring)
        self.fd_cache = max(1, fd_cache)
        #: inodes whose descriptor is open and may be closed, least recently used first
        self._cached: OrderedDict[Inode, None] = OrderedDict()
        #: the export's mount id -> a directory descriptor on it, for open_by_handle_at
        self._mount_fds: dict[int, int] = {}
        root_handle = self._probe_handles(fd) if handles else None
        #: whether inodes are identified by file handle (see the module docstring)
        self.handles = root_handle is not None
        key: Key = root_handle if root_handle is not None else (st.st_dev, st.st_ino)
        self.root = Inode(self, ROOT_INO, key, st)
        self.root._fd = fd
        self.root.permanent = True
        self.root.lookups = 1  # the table's own reference: the root is never freed
        self._by_number: dict[int, Inode] = {ROOT_INO: self.root}
        self._by_key: dict[Key, Inode] = {key: self.root}
        self._numbers: dict[Key, int] = {key: ROOT_INO}
        self._next_number = ROOT_INO + 1
        self.closed = False

    def _probe_handles(self, root_fd: int) -> tuple[int, bytes] | None:
        """The root's (mount id, handle) if handles work here, with its mount's descriptor
        kept; None if the file system has none or the server may not open them."""
        try:
            mount_id, handle = syscalls.name_to_handle(root_fd, b"")
            mount_fd = os.open(
                f"/proc/self/fd/{root_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError:
            return None
        try:
            os.close(syscalls.open_by_handle(mount_fd, handle, O_PATH_FLAGS))
        except OSError:
            os.close(mount_fd)
            return None
        self._mount_fds[mount_id] = mount_fd
        return mount_id, handle

    def __len__(self) -> int:
        """Inodes currently held (the root included)."""
        return len(self._by_number)

    @property
    def cached_fds(self) -> int:
        """Descriptors the cache holds now (not counting the root's and the mounts')."""
        return len(self._cached)

    # -- finding inodes -------------------------------------------------------------------
    def get(self, session: Session, number: int, *, pin: bool = False) -> Inode:
        """The inode `number` if `session` holds a reference to it (or it is the root);
        ESTALE otherwise: inode numbers are not capabilities a channel can guess. With
        `pin`, the inode is pinned (the caller must `unpin` it)."""
        if number == ROOT_INO:
            return self.root
        with self._lock:
            if number in session.lookups:
                inode = self._by_number.get(number)
                if inode is not None:
                    if pin:
                        inode.pins += 1
                    return inode
        raise fail(errno.ESTALE)

    def unpin(self, inodes: list[Inode]) -> None:
        with self._lock:
            for inode in inodes:
                inode.pins -= 1
                if inode.pins == 0 and inode.dropped:
                    self._close_fd(inode)

    @contextlib.contextmanager
    def pinned(self, inode: Inode) -> Iterator[int]:
        """`inode`'s descriptor, which the cache cannot close until the block ends."""
        with self._lock:
            inode.pins += 1
        try:
            yield self.fd_of(inode)
        finally:
            self.unpin([inode])

    def held_number(self, directory: Inode, name: bytes) -> int | None:
        """The number of `name` in `directory` if the table holds that object (someone has
        it looked up), else None; counts and assigns nothing (backend_server.watcher)."""
        with self.pinned(directory) as dir_fd:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            key = self._name_key(dir_fd, name, st)[0]
        with self._lock:
            inode = self._by_key.get(key)
            return None if inode is None else inode.number

    # -- counting lookups -----------------------------------------------------------------
    def register(
        self, session: Session, fd: int, st: os.stat_result, parent: Inode | None, *names: bytes
    ) -> Inode:
        """Count one lookup of the object behind O_PATH `fd`, reached from `parent` by
        `names` (None/none: it cannot be found by name). The table takes `fd` over: it is
        cached, or closed."""
        try:
            found = self._identify(fd, st)
        except BaseException:
            os.close(fd)
            raise
        return self._count(session, found, st, parent, names, fd, None, 1)

    def register_entry(
        self, session: Session, parent: Inode, dir_fd: int, name: bytes
    ) -> tuple[Inode, os.stat_result] | None:
        """Count one lookup of `name` in `parent` (whose directory descriptor is `dir_fd`),
        for a READDIR page. No descriptor is opened: the inode is found again by its handle,
        or by this name. None when the name is gone."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            found = self._name_key(dir_fd, name, st)
        except FileNotFoundError:
            return None
        return self._count(session, found, st, parent, (name,), -1, None, 1), st

    def register_opened(
        self, session: Session, fd: int, st: os.stat_result, parent: Inode, name: bytes
    ) -> Inode:
        """Count one lookup of the object open as `fd` (any descriptor; it stays the
        caller's), which is `name` in `parent`: costs no descriptor of its own."""
        return self._count(session, self._identify(fd, st), st, parent, (name,), -1, None, 1)

    def restore(
        self,
        session: Session,
        fd: int,
        st: os.stat_result,
        parent: Inode,
        name: bytes,
        number: int,
        count: int,
    ) -> Inode:
        """Like `register`, with `count` lookups and under the given `number`: a restarted
        server takes back what the kernel still holds. EEXIST when the number or the object
        is already known otherwise."""
        try:
            found = self._identify(fd, st)
        except BaseException:
            os.close(fd)
            raise
        return self._count(session, found, st, parent, (name,), fd, number, count)

    def number_of(self, fd: int, st: os.stat_result) -> int:
        """The number the object behind `fd` has, or will have once looked up."""
        key = self._identify(fd, st)[0]
        with self._lock:
            return self._number_for(key)

    def number_of_name(self, dir_fd: int, name: bytes) -> int:
        """The number of `name` in `dir_fd`, without counting a lookup or opening it."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        key = self._name_key(dir_fd, name, st)[0]
        with self._lock:
            return self._number_for(key)

    def _name_key(self, dir_fd: int, name: bytes, st: os.stat_result) -> Found:
        """Like `_identify`, for `name` in `dir_fd` (never following a symlink)."""
        if self.handles:
            try:
                return self._handle_key(*syscalls.name_to_handle(dir_fd, name))
            except OSError as exc:
                if exc.errno not in _NO_HANDLE:
                    raise
        return (st.st_dev, st.st_ino), 0, None

    def _number_for(self, key: Key) -> int:
        number = self._numbers.get(key)
        if number is None:
            number = self._numbers[key] = self._next_number
            self._next_number += 1
        return number

    def _identify(self, fd: int, st: os.stat_result) -> Found:
        """(key, mount id, handle) of the object behind `fd`; the handle is None (and the key
        (st_dev, st_ino)) when it has none."""
        if self.handles:
            try:
                return self._handle_key(*syscalls.name_to_handle(fd, b""))
            except OSError as exc:
                if exc.errno not in _NO_HANDLE:
                    raise
        return (st.st_dev, st.st_ino), 0, None

    def _handle_key(self, mount_id: int, handle: bytes) -> Found:
        return (mount_id, handle), mount_id, handle

    def _count(
        self,
        session: Session,
        found: Found,
        st: os.stat_result,
        parent: Inode | None,
        names: tuple[bytes, ...],
        fd: int,
        wanted: int | None,
        count: int,
    ) -> Inode:
        key, mount_id, handle = found
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
                    if mount_id not in self._mount_fds:
                        # Another file system mounted inside the export: found by name, so
                        # that no descriptor of the server's keeps it from being unmounted.
                        handle = None
                    if handle is None and not (parent is not None and names) and fd < 0:
                        raise fail(errno.ESTALE, "object cannot be found again")
                    if number is None or number in self._by_number:
                        number = self._next_number
                    self._next_number = max(self._next_number, number + 1)
                    self._numbers[key] = number
                    inode = Inode(self, number, key, st)
                    inode.mount_id, inode.handle = mount_id, handle
                    self._by_key[key] = inode
                    self._by_number[number] = inode
                if inode.handle is None and parent is not None and names:
                    # The latest way to reach it: a rename or a second link keeps it findable.
                    inode.parent, inode.names = parent, names
                if inode.handle is None and inode.parent is None and not inode.permanent:
                    inode.permanent = True  # no way to find it again: keep its descriptor
                if fd >= 0 and inode._fd < 0:
                    inode._fd, fd = fd, -1
                    if not inode.permanent:
                        self._cached[inode] = None
                        self._evict(inode)
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

    def renamed(self, directory: Inode, name: bytes) -> None:
        """After a rename through the server: the object now called `name` in `directory`
        (pinned by the caller) is found by that name (only inodes without a handle care)."""
        try:
            st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        except OSError:
            return
        with self._lock:
            inode = self._by_key.get((st.st_dev, st.st_ino))
            if inode is not None and inode.handle is None and inode.parent is not None:
                inode.parent, inode.names = directory, (name,)

    # -- descriptors ----------------------------------------------------------------------
    def fd_of(self, inode: Inode) -> int:
        with self._lock:
            if self.closed:
                raise fail(errno.ESHUTDOWN)
            fd = self._fd_locked(inode)
            self._evict(inode)
            return fd

    def _fd_locked(self, inode: Inode) -> int:
        if inode._fd >= 0:
            if inode in self._cached:
                self._cached.move_to_end(inode)
            return inode._fd
        try:
            fd = self._reopen(inode)
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                raise
            self._evict(inode, keep=0)  # descriptors ran short: give back all we can
            fd = self._reopen(inode)
        inode._fd = fd
        self._cached[inode] = None
        return fd

    def _reopen(self, inode: Inode) -> int:
        """A new O_PATH descriptor of `inode`, checked to be that very object."""
        if inode.handle is not None:
            fd = self._open_handle(self._mount_fds[inode.mount_id], inode.handle)
        elif inode.parent is not None:
            fd = self._walk(inode.parent, inode.names)
        else:
            raise fail(errno.ESTALE)
        try:
            st = os.fstat(fd)
            found = (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode))
            if found != (inode.dev, inode.ino, inode.kind):
                raise fail(errno.ESTALE, "the object is no longer the one looked up")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _walk(self, parent: Inode, names: tuple[bytes, ...]) -> int:
        """Open `names` beneath `parent`, never following a symlink; a name that is gone
        means the inode is (ESTALE, as for a handle whose inode was removed)."""
        try:
            fd = os.open(names[0], O_PATH_FLAGS, dir_fd=self._fd_locked(parent))
        except (FileNotFoundError, NotADirectoryError):
            raise fail(errno.ESTALE, "the name it was found by is gone") from None
        try:
            for name in names[1:]:
                child = os.open(name, O_PATH_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                raise fail(errno.ESTALE, "the name it was found by is gone") from None
            raise
        return fd

    @staticmethod
    def _open_handle(mount_fd: int, handle: bytes) -> int:
        try:
            return syscalls.open_by_handle(mount_fd, handle, O_PATH_FLAGS)
        except PermissionError:
            # Acting as a non-root caller drops CAP_DAC_READ_SEARCH from this thread. An
            # O_PATH open checks no permission of the object itself, so taking back the
            # server's fsuid for this one call gives the caller nothing it did not have.
            previous = syscalls.swap_fsuid(0)
            if previous == 0:
                raise
            try:
                return syscalls.open_by_handle(mount_fd, handle, O_PATH_FLAGS)
            finally:
                syscalls.swap_fsuid(previous)

    def _evict(self, keep_inode: Inode, keep: int | None = None) -> None:
        """Close the least recently used unpinned descriptors until at most `keep` (the
        cache's size) are cached; `keep_inode`'s, which a caller is about to use, stays."""
        limit = self.fd_cache if keep is None else keep
        cached = self._cached
        if len(cached) <= limit:
            return
        for inode in list(cached):
            if len(cached) <= limit:
                break
            if inode is not keep_inode and inode.pins == 0:
                self._close_fd(inode)

    def _close_fd(self, inode: Inode) -> None:
        self._cached.pop(inode, None)
        if inode._fd >= 0 and (inode.dropped or not inode.permanent):
            fd, inode._fd = inode._fd, -1
            os.close(fd)

    def opening(self, open_: Callable[P, int], *args: P.args, **kwargs: P.kwargs) -> int:
        """`open_(...)`, a call that opens a descriptor; when the process is out of them,
        the cache gives back every descriptor no operation is using and it is tried once
        more (then its EMFILE stands: the limit is truly reached)."""
        try:
            return open_(*args, **kwargs)
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                raise
        with self._lock:
            self._evict(self.root, keep=0)
        return open_(*args, **kwargs)

    # -- forgetting -----------------------------------------------------------------------
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
        if inode.lookups > 0:
            return
        del self._by_number[number]
        del self._by_key[inode.key]
        if self._removed(inode) and self._numbers.get(inode.key) == number:
            del self._numbers[inode.key]  # its number is never needed again
        self._evict(inode)  # finding it by names may have cached its parents
        inode.dropped = True
        if inode.pins == 0:
            self._close_fd(inode)

    def _removed(self, inode: Inode) -> bool:
        """Has `inode`'s object been removed (it can never be looked up again)?"""
        try:
            fd = inode._fd if inode._fd >= 0 else self._reopen(inode)
        except OSError as exc:
            return exc.errno == errno.ESTALE and inode.handle is not None
        try:
            return os.fstat(fd).st_nlink == 0
        except OSError:
            return False
        finally:
            if fd != inode._fd:
                os.close(fd)

    def close(self) -> None:
        """Close every descriptor, the root's and the mounts' included."""
        with self._lock:
            self.closed = True
            for inode in list(self._by_number.values()) + list(self._cached):
                fd, inode._fd = inode._fd, -1
                if fd >= 0:
                    os.close(fd)
            for fd in self._mount_fds.values():
                os.close(fd)
            self._mount_fds.clear()
            self._cached.clear()
            self._by_number.clear()
            self._by_key.clear()
