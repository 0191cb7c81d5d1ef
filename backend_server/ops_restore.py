"""Taking back a crashed server's state: RESTORE_INODES and RESTORE_HANDLE.

When the server restarts under a mounted file system, the kernel still holds inode numbers
and open file handles that the old server handed out. The driver, which tracked the name of
every inode the kernel holds and every handle it opened, sends them back: each inode is
looked up again by name in its (already restored) parent and registered under its old number
with the kernel's lookup count; each handle is opened again under its old number. Only the
trusted driver channel may do this (an application channel acts as itself and never chooses
numbers). What cannot be found again (renamed or removed behind the mount's back) simply
stays unknown: the kernel's later requests for it get ESTALE or EBADF, never someone else's
file.
"""

from __future__ import annotations

import errno
import os

from backend_server import wire
from backend_server.context import EMPTY, Reply, Request
from backend_server.errors import fail
from backend_server.handles import Handle
from backend_server.inodes import O_PATH_FLAGS
from backend_server.names import Use, check_name
from backend_server.ops_data import open_flags
from backend_server.ops_meta import is_special
from backend_server.wire import U32_MAX, U64_MAX
from channel.protocol.codec import pack_body
from channel.protocol.limits import MAX_RESTORE_BATCH
from channel.protocol.opcodes import ROOT_INO

#: Flags that made sense at the original open but must not act again on a re-open.
_NOT_AGAIN = os.O_TRUNC | os.O_CREAT | os.O_EXCL


def _driver_only(req: Request) -> None:
    if req.session.app_identity is not None:
        raise fail(errno.EPERM, "only the driver restores state")


def _restore_one(req: Request, entry: object) -> int:
    """One [parent, name, number, nlookup]; 0 or -errno."""
    try:
        parent_no, name, number, count = wire.args(entry, 4)
        parent = req.inode(wire.integer(parent_no, 1, U64_MAX))
        name = check_name(name, Use.LOOKUP)
        number = wire.integer(number, ROOT_INO + 1, U64_MAX)
        count = wire.integer(count, 1, U32_MAX)
        if name in (b".", b"..") or not parent.is_dir:
            raise fail(errno.EINVAL)
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        req.table.restore(req.session, fd, st, parent, name, number, count)
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    return 0


def restore_inodes(req: Request) -> Reply:
    _driver_only(req)
    entries = req.cmd.body
    if type(entries) is not list or len(entries) > MAX_RESTORE_BATCH:
        raise fail(errno.EINVAL, "body must be a list of restore entries")
    return Reply(pack_body([_restore_one(req, entry) for entry in entries]))


def restore_handle(req: Request) -> Reply:
    _driver_only(req)
    (flags,) = wire.args(req.cmd.body, 1)
    fh = wire.integer(req.cmd.fh, 1, U64_MAX)
    inode = req.inode(req.cmd.ino)
    if inode.is_symlink or is_special(inode.kind):
        raise fail(errno.EINVAL)
    if inode.is_dir:
        fd = os.open(inode.proc_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        fd = os.open(inode.proc_path, open_flags(flags) & ~_NOT_AGAIN)
    try:
        req.session.install_handle(fh, Handle(fd, inode.number, is_dir=inode.is_dir))
    except BaseException:
        os.close(fd)
        raise
    return EMPTY
