"""Operations on an inode's metadata: NOP, FORGET, BATCH_FORGET, GETATTR, SETATTR, READLINK,
ACCESS, STATFS.

Path-taking system calls reach an inode through its /proc/self/fd magic link, or, where a
symlink must not be followed, through its O_PATH descriptor with AT_EMPTY_PATH
(`backend_server.syscalls`). Permission decisions are the kernel's, made with the caller's
fsuid/fsgid (the dispatcher has switched to it for the operations that need it).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from backend_server import syscalls, wire
from backend_server.context import EMPTY, Reply, Request
from backend_server.names import fail
from backend_server.wire import U32_MAX, attr
from channel.protocol import pack_body

#: The body of a FORGET can carry at most this many pairs before it is refused (one slot's
#: worth is far less; this only bounds the work a hostile body can ask for).
MAX_FORGETS = 1 << 16

SETATTR_KEYS = frozenset(("mode", "uid", "gid", "size", "atime_ns", "mtime_ns"))


def nop(req: Request) -> Reply:
    return Reply(pack_body(req.cmd.body))


def forget(req: Request) -> Reply:
    (count,) = wire.args(req.cmd.body, 1)
    req.table.forget(req.session, req.cmd.ino, wire.integer(count))
    return EMPTY


def batch_forget(req: Request) -> Reply:
    body = req.cmd.body
    if type(body) is not list or len(body) > MAX_FORGETS:
        raise fail(errno.EINVAL)
    pairs = [wire.args(pair, 2) for pair in body]
    for ino, count in pairs:
        req.table.forget(req.session, wire.integer(ino), wire.integer(count))
    return EMPTY


def getattr_(req: Request) -> Reply:
    inode = req.inode(req.cmd.ino)
    return Reply(pack_body(attr(inode.number, os.fstat(inode.fd))))


def _time(value: Any) -> int | None:
    if value == "now":
        return -1
    return wire.integer(value, 0, wire.OFF_MAX)


def setattr_(req: Request) -> Reply:
    """Owner first, then mode, size and times: when a request both chowns and chmods, the
    mode asked for is the mode that results (a non-root chown clears setuid/setgid)."""
    cmd = req.cmd
    inode = req.inode(cmd.ino)
    changes = cmd.body if cmd.body is not None else {}
    if type(changes) is not dict or not changes.keys() <= SETATTR_KEYS:
        raise fail(errno.EINVAL, "SETATTR body must be a map of known keys")
    if "uid" in changes or "gid" in changes:
        uid = wire.integer(changes.get("uid", U32_MAX), 0, U32_MAX)
        gid = wire.integer(changes.get("gid", U32_MAX), 0, U32_MAX)
        syscalls.chown(inode.fd, uid, gid)
    if "mode" in changes:
        mode = wire.integer(changes["mode"], 0, U32_MAX) & 0o7777
        if inode.is_symlink:
            raise fail(errno.EOPNOTSUPP)  # as fchmodat(AT_SYMLINK_NOFOLLOW) on Linux
        os.chmod(inode.proc_path, mode)
    if "size" in changes:
        size = wire.integer(changes["size"], 0, wire.OFF_MAX)
        handle = req.session.handles.get(cmd.fh) if cmd.fh else None
        if handle is not None and handle.ino == inode.number and not handle.is_dir:
            os.ftruncate(handle.fd, size)  # ftruncate: permission was checked at open
        elif inode.is_dir:
            raise fail(errno.EISDIR)
        elif inode.is_symlink:
            raise fail(errno.EINVAL)
        else:
            os.truncate(inode.proc_path, size)  # truncate: needs write permission
    if "atime_ns" in changes or "mtime_ns" in changes:
        atime = _time(changes["atime_ns"]) if "atime_ns" in changes else None
        mtime = _time(changes["mtime_ns"]) if "mtime_ns" in changes else None
        syscalls.utimens(inode.fd, atime, mtime)
    return Reply(pack_body(attr(inode.number, os.fstat(inode.fd))))


def readlink(req: Request) -> Reply:
    inode = req.inode(req.cmd.ino)
    if not inode.is_symlink:
        raise fail(errno.EINVAL)
    return Reply(pack_body([os.readlink(b"", dir_fd=inode.fd)]))


def access(req: Request) -> Reply:
    (mask,) = wire.args(req.cmd.body, 1)
    mask = wire.integer(mask, 0, os.R_OK | os.W_OK | os.X_OK)
    inode = req.inode(req.cmd.ino)
    if inode.is_symlink:
        return EMPTY  # a symlink's own permissions are always rwxrwxrwx
    syscalls.access(inode.proc_path, mask)
    return EMPTY


def statfs(req: Request) -> Reply:
    inode = req.inode(req.cmd.ino)
    if inode.is_symlink:
        inode = req.table.root
    return Reply(wire.statfs_body(os.statvfs(inode.proc_path)))


def is_special(kind: int) -> bool:
    """FIFOs, sockets and devices: opened by the kernel on the client's side, never here."""
    return kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)
