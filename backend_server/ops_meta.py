"""Operations on an inode's metadata: NOP, FORGET, BATCH_FORGET, GETATTR, SETATTR, READLINK,
ACCESS, STATFS.

Path-taking system calls reach an inode through its /proc/self/fd magic link, or, where a
symlink must not be followed, through its O_PATH descriptor with AT_EMPTY_PATH
(`backend_server.syscalls`). Permission decisions are the kernel's, made with the caller's
fsuid/fsgid (the dispatcher has switched to it for the operations that need it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from typing import Any

from backend_server import syscalls, wire
from backend_server.context import EMPTY, Reply, Request
from backend_server.errors import fail
from backend_server.handles import Handle
from backend_server.identity import Identity
from backend_server.inodes import Inode
from backend_server.wire import U32_MAX, attr
from channel.protocol.codec import pack_body

#: The body of a FORGET can carry at most this many pairs before it is refused (one slot's
#: worth is far less; this only bounds the work a hostile body can ask for).
MAX_FORGETS = 1 << 16

#: How close to the server's clock refused times must be to stand for "now" (_meant_now): the
#: time between pyfuse3 reading the clock and the server acting, with room for a loaded host.
NOW_WINDOW_NS = 2_000_000_000

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


def _meant_now(atime: int | None, mtime: int | None) -> bool:
    """Were these times the kernel's "the current time" (UTIME_NOW, a plain `touch`)?

    pyfuse3 hands the driver UTIME_NOW as a timestamp it read from the clock just before,
    so the server sees explicit times, which only the owner may set (EPERM). Linux lets
    anyone with write permission set the current time. So a refused request whose times are
    all within NOW_WINDOW_NS of the server's clock is taken for "now" and tried again as
    such. Only a caller who is not the owner gets here, and on a `default_permissions` mount
    (the default) the kernel has already refused such a caller's explicit times: what
    arrives is UTIME_NOW. Without it, a non-owner's explicit time within the window is
    treated as a `touch`, which that caller may do anyway if it may write the file."""
    now = time.time_ns()
    times = [t for t in (atime, mtime) if t is not None]
    return bool(times) and all(t != -1 and abs(now - t) < NOW_WINDOW_NS for t in times)


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
        if "uid" not in changes and "gid" not in changes and _kills_privileges(req, inode, mode):
            with req.identity.as_server():
                os.chmod(inode.proc_path, mode)
        else:
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
        try:
            syscalls.utimens(inode.fd, atime, mtime)
        except PermissionError as exc:
            if exc.errno != errno.EPERM or not _meant_now(atime, mtime):
                raise
            # Setting the current time needs only write permission (EACCES without it).
            syscalls.utimens(inode.fd, None if atime is None else -1, None if mtime is None else -1)
    return Reply(pack_body(attr(inode.number, os.fstat(inode.fd))))


def kill_bits(st: os.stat_result, caller: Identity) -> int:
    """The setuid/setgid bits Linux removes when `caller` writes or truncates the file
    (`setattr_should_drop_suidgid`): setuid always; setgid when the file is group-executable
    or the caller is not in its group; nothing for a caller with CAP_FSETID (root) or for
    anything but a regular file."""
    mode = st.st_mode
    if caller.uid == 0 or not stat.S_ISREG(mode):
        return 0
    kill = mode & stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not caller.in_group(st.st_gid)):
        kill |= stat.S_ISGID
    return kill


def _kills_privileges(req: Request, inode: Inode, mode: int) -> bool:
    """Is this chmod the kernel clearing setuid/setgid before a write or truncate by a
    caller who does not own the file?

    Without FUSE_HANDLE_KILLPRIV (libfuse 3.14 through pyfuse3 does not ask for it) the
    kernel does that with an ordinary SETATTR of the mode, sent as the writer, and the
    export's kernel would refuse the chmod to a non-owner (EPERM, which then fails the
    write). Linux lets anyone who may write the file clear exactly those bits (by writing),
    so the server grants exactly that: only the bits a write by this caller would clear,
    nothing else changed, and only to a caller who may write the file (write permission
    now, or the handle the request names opened for writing). On a `default_permissions`
    mount (the default) the kernel has already refused a non-owner's own chmod with EPERM,
    so only the kernel's request gets here."""
    cmd = req.cmd
    st = os.fstat(inode.fd)
    caller = req.caller
    if caller.uid in (0, st.st_uid):
        return False  # may chmod anyway
    current = stat.S_IMODE(st.st_mode)
    dropped = current & ~mode
    kill = kill_bits(st, caller)
    if mode & ~current or not dropped or dropped & ~kill:
        return False
    handle = req.session.handles.get(cmd.fh) if cmd.fh else None
    if handle is not None and handle.ino == inode.number and _writable(handle):
        return True
    try:
        syscalls.access(inode.proc_path, os.W_OK)
    except OSError:
        return False
    return True


def _writable(handle: Handle) -> bool:
    if handle.is_dir or handle.fd < 0:
        return False
    return fcntl.fcntl(handle.fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


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
