"""Operations on directories and names: LOOKUP, MKNOD, MKDIR, UNLINK, RMDIR, SYMLINK, RENAME,
LINK, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR.

Every name is checked by `names.check_name` and used relative to a directory's descriptor; no
path is ever resolved and no symlink followed. New objects are created with the caller's
umask applied here (the server's own process umask is 0, see `Backend`), and belong to the
caller because the kernel creates them with the thread's fsuid/fsgid (or the directory's gid
on setgid directories).

READDIR offsets: the first READDIR of a handle at offset 0 takes a snapshot of the names in
the directory; an entry's offset is its index in that snapshot plus one, so a cookie stays
valid however the directory changes meanwhile. Entries removed since the snapshot are skipped
when their page is built; entries added since are not shown until the next READDIR at offset
0 (rewinddir), which POSIX allows. `.` and `..` come first when the command asks for them
(READDIR_DOTS, as the driver does so that `ls -a` shows them); no lookup is counted for them,
since the kernel takes no lookup reference for them (fuse_direntplus_link skips them).

An entry's lookup is counted without opening anything: the inode is identified by its file
handle (or by this name, see `inodes`), and its descriptor is opened only if it is used.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import msgpack

from backend_server import syscalls, wire
from backend_server.context import EMPTY, Reply, Request
from backend_server.errors import fail
from backend_server.handles import Handle
from backend_server.inodes import O_PATH_FLAGS, Inode
from backend_server.names import Use, check_name, check_symlink_target
from backend_server.wire import U32_MAX, attr
from channel.protocol.codec import pack_body
from channel.protocol.opcodes import DOT_ENTRIES, READDIR_DOTS, ROOT_INO

#: A READDIR page built inline (in the trio thread) stops after this many entries (~0.25 ms of
#: work); a page built in a worker thread is bounded by the output buffer alone.
INLINE_READDIR_ENTRIES = 16
#: msgpack bytes of a READDIR entry besides its name, at most: array header (1), bin header
#: (2), attr array header (1) and 12 integers (9 each), next offset (9).
ENTRY_OVERHEAD_MAX = 1 + 2 + 1 + 12 * 9 + 9
#: The msgpack array header of a READDIR page is at most this long (0xdd + 32-bit count).
ARRAY_HEADER_MAX = 5

MKNOD_TYPES = frozenset((stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK))


def _directory(req: Request, number: int) -> Inode:
    inode = req.inode(number)
    if not inode.is_dir:
        raise fail(errno.ENOTDIR)
    return inode


def _open_child(parent_fd: int, name: bytes) -> int:
    return os.open(name, O_PATH_FLAGS, dir_fd=parent_fd)


# -- lookup -------------------------------------------------------------------------------
def lookup(req: Request) -> Reply:
    (name,) = wire.args(req.cmd.body, 1)
    name = check_name(name, Use.LOOKUP)
    parent = _directory(req, req.cmd.ino)
    if name == b".." and parent is req.table.root:
        name = b"."  # `..` at the root is the root: the export has no outside
    # needs search permission on parent, as the caller
    fd = req.table.opening(_open_child, parent.fd, name)
    if name == b"..":
        try:
            _confine(req, fd)
        except BaseException:
            os.close(fd)
            raise
    # `.` is the parent itself; `..` is never recorded as a way back (it is confined now,
    # not later): without a file handle it keeps its descriptor instead.
    return req.entry(fd, None) if name in (b".", b"..") else req.entry(fd, parent, name)


def _confine(req: Request, fd: int) -> None:
    """Check that the directory `fd` lies within the export, by walking up to the root.

    `..` of a directory inside the export is inside it, unless the directory was moved out of
    the export behind the server's back; then the walk reaches the file system's root (whose
    `..` is itself) without meeting the export's root, and the lookup answers ENOENT."""
    root = req.table.root
    root_key = (root.dev, root.ino)
    current = os.dup(fd)
    try:
        while True:
            st = os.fstat(current)
            key = (st.st_dev, st.st_ino)
            if key == root_key:
                return
            parent = _open_child(current, b"..")
            pst = os.fstat(parent)
            os.close(current)
            current = parent
            if (pst.st_dev, pst.st_ino) == key:
                raise fail(errno.ENOENT, "directory is no longer inside the export")
    finally:
        os.close(current)


# -- creating and removing names ----------------------------------------------------------
def mknod(req: Request) -> Reply:
    name, mode, rdev = wire.args(req.cmd.body, 3)
    name = check_name(name, Use.CREATE_NODE)
    mode = wire.integer(mode, 0, U32_MAX)
    rdev = wire.integer(rdev, 0, wire.U64_MAX)
    kind = stat.S_IFMT(mode) or stat.S_IFREG
    if kind not in MKNOD_TYPES:
        raise fail(errno.EINVAL)
    parent = _directory(req, req.cmd.ino)
    os.mknod(name, kind | (mode & 0o7777 & ~req.umask), rdev, dir_fd=parent.fd)
    return req.entry_named(parent, name)


def mkdir(req: Request) -> Reply:
    name, mode = wire.args(req.cmd.body, 2)
    name = check_name(name, Use.CREATE_NODE)
    mode = wire.integer(mode, 0, U32_MAX)
    parent = _directory(req, req.cmd.ino)
    os.mkdir(name, mode & 0o1777 & ~req.umask, dir_fd=parent.fd)
    return req.entry_named(parent, name)


def symlink(req: Request) -> Reply:
    name, target = wire.args(req.cmd.body, 2)
    name = check_name(name, Use.CREATE_NODE)
    target = check_symlink_target(target)
    parent = _directory(req, req.cmd.ino)
    os.symlink(target, name, dir_fd=parent.fd)
    return req.entry_named(parent, name)


def unlink(req: Request) -> Reply:
    (name,) = wire.args(req.cmd.body, 1)
    name = check_name(name, Use.UNLINK)
    os.unlink(name, dir_fd=_directory(req, req.cmd.ino).fd)
    return EMPTY


def rmdir(req: Request) -> Reply:
    (name,) = wire.args(req.cmd.body, 1)
    name = check_name(name, Use.RMDIR)
    os.rmdir(name, dir_fd=_directory(req, req.cmd.ino).fd)
    return EMPTY


def rename(req: Request) -> Reply:
    name, new_parent, new_name, flags = wire.args(req.cmd.body, 4)
    name = check_name(name, Use.RENAME)
    new_name = check_name(new_name, Use.RENAME)
    flags = wire.integer(flags, 0, U32_MAX)
    if flags & ~(syscalls.RENAME_NOREPLACE | syscalls.RENAME_EXCHANGE):
        raise fail(errno.EINVAL, "unsupported rename flags")
    old_dir = _directory(req, req.cmd.ino)
    new_dir = _directory(req, wire.integer(new_parent))
    if flags:
        syscalls.renameat2(old_dir.fd, name, new_dir.fd, new_name, flags)
    else:
        os.rename(name, new_name, src_dir_fd=old_dir.fd, dst_dir_fd=new_dir.fd)
    req.table.renamed(new_dir, new_name)
    if flags & syscalls.RENAME_EXCHANGE:
        req.table.renamed(old_dir, name)
    return EMPTY


def link(req: Request) -> Reply:
    new_parent, new_name = wire.args(req.cmd.body, 2)
    new_name = check_name(new_name, Use.CREATE_NODE)
    inode = req.inode(req.cmd.ino)
    new_dir = _directory(req, wire.integer(new_parent))
    if inode.is_dir:
        raise fail(errno.EPERM)
    if inode.is_symlink:
        _link_symlink(req, inode, new_dir, new_name)
    else:
        # Following the magic link reaches the inode itself; no capability needed, and the
        # kernel applies protected_hardlinks and the directory's permissions as the caller.
        os.link(inode.proc_path, new_name, dst_dir_fd=new_dir.fd, follow_symlinks=True)
    return req.entry_named(new_dir, new_name)


def _link_symlink(req: Request, inode: Inode, new_dir: Inode, new_name: bytes) -> None:
    """A symlink can only be linked by descriptor with AT_EMPTY_PATH, which needs
    CAP_DAC_READ_SEARCH, a capability a non-root fsuid drops. For a non-root caller the
    checks the kernel would make are made first, as the caller: write and search permission
    on the new directory, and protected_hardlinks (only the owner may link a symlink)."""
    if not req.caller_is_root:
        syscalls.access(new_dir.proc_path, os.W_OK | os.X_OK)
        if os.fstat(inode.fd).st_uid != req.caller.uid and _protected_hardlinks():
            raise fail(errno.EPERM)
        try:
            os.stat(new_name, dir_fd=new_dir.fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise fail(errno.EEXIST)
    syscalls.link_empty_path(inode.fd, new_dir.fd, new_name)


def _protected_hardlinks() -> bool:
    try:
        with open("/proc/sys/fs/protected_hardlinks", "rb") as setting:
            return setting.read().strip() != b"0"
    except OSError:
        return True


# -- directory handles ----------------------------------------------------------------------
def opendir(req: Request) -> Reply:
    inode = _directory(req, req.cmd.ino)
    fd = req.table.opening(os.open, inode.proc_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return Reply(value=req.session.add_handle(Handle(fd, inode.number, is_dir=True)))


def _dir_handle(req: Request) -> Handle:
    handle = req.file_handle()
    if not handle.is_dir:
        raise fail(errno.ENOTDIR)
    return handle


def snapshot_names(fd: int) -> list[bytes]:
    """The names in directory `fd`, `.` and `..` excepted, in the file system's order."""
    # os.listdir(fd) reads through a dup of the descriptor after rewinding it, and decodes
    # names with the file-system encoding and surrogateescape; this undoes that exactly
    # (os.fsencode does the same, at twice the cost per name).
    encoding = sys.getfilesystemencoding()
    return [name.encode(encoding, "surrogateescape") for name in os.listdir(fd)]


def readdir(req: Request) -> Reply:
    """A page of entries from offset `cmd.offset`; the body says how many and whether the
    page ends the snapshot, so that a reader needs no extra round trip to learn it is done."""
    cmd = req.cmd
    handle = _dir_handle(req)
    out = req.channel.output_buffer(cmd)
    if len(out) == 0:
        raise fail(errno.EINVAL, "READDIR needs an output buffer")
    if cmd.offset > wire.OFF_MAX:
        raise fail(errno.EINVAL)
    names = handle.snapshot
    if cmd.offset == 0 or names is None:
        names = snapshot_names(handle.fd)
        if cmd.flags & READDIR_DOTS:
            names[:0] = DOT_ENTRIES
        handle.snapshot = names
    directory = req.inode(handle.ino)
    entries: list[list[object]] = []
    room = len(out) - ARRAY_HEADER_MAX
    index = cmd.offset
    limit = INLINE_READDIR_ENTRIES if req.inline else len(names)
    while index < len(names) and len(entries) < limit:
        name = names[index]
        # Bound the entry's size before counting a lookup, so that an entry that does not fit
        # is never registered and then forgotten.
        room -= len(name) + ENTRY_OVERHEAD_MAX
        if room < 0:
            if not entries:
                raise fail(errno.EINVAL, "output buffer too small for one entry")
            break
        index += 1
        if name in DOT_ENTRIES:  # only a READDIR_DOTS snapshot has them
            entries.append([name, _dot_attr(req, handle, name), index])
            continue
        counted = req.table.register_entry(req.session, directory, handle.fd, name)
        if counted is not None:
            inode, st = counted
            entries.append([name, attr(inode.number, st), index])
    page = msgpack.packb(entries, use_bin_type=True)
    out[: len(page)] = page
    return Reply(pack_body([len(entries), index >= len(names)]), data_len=len(page))


def _dot_attr(req: Request, handle: Handle, name: bytes) -> list[int]:
    """Attributes of `.` or `..` of the directory `handle` lists (counting no lookup; `..`
    of the export's root is the root itself, as LOOKUP answers)."""
    if name == b"." or handle.ino == ROOT_INO:
        return attr(handle.ino, os.fstat(handle.fd))
    st = os.stat(b"..", dir_fd=handle.fd, follow_symlinks=False)
    return attr(req.table.number_of_name(handle.fd, b".."), st)


def releasedir(req: Request) -> Reply:
    req.session.pop_handle(req.cmd.fh).close()
    return EMPTY


def fsyncdir(req: Request) -> Reply:
    syscalls.sync(_dir_handle(req).fd, req.cmd.flags)
    return EMPTY
