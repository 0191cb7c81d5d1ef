"""Extended attributes: SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR.

Values travel in the data buffer. GETXATTR and LISTXATTR with size 0 answer the length
needed in `value` (as getxattr(2) with size 0 does); a buffer too small gets ERANGE.

The calls go through the inode's /proc/self/fd magic link, with the caller's fs identity, so
the kernel checks `user.*` (read/write permission) and `system.posix_acl_*` (ownership). Two
namespaces are the server's own business: `trusted.*` and `security.*` are guarded by
CAP_SYS_ADMIN, a capability the server keeps under a caller's fsuid (it is not a file-system
capability). For a non-root caller the server therefore answers as Linux would for an
unprivileged process: writing either namespace is EPERM, reading `trusted.*` is ENODATA,
and LISTXATTR leaves `trusted.*` out.

Symlinks: Linux has no race-free way to reach a symlink's attributes through an O_PATH
descriptor (the *xattrat calls of Linux 6.13 refuse O_PATH descriptors with AT_EMPTY_PATH),
and the magic link would follow the symlink. Attribute operations on symlinks answer
EOPNOTSUPP; ENODATA/empty for reads would be a lie about attributes that may exist.
"""

from __future__ import annotations

import errno
import os

from backend_server import wire
from backend_server.context import EMPTY, Reply, Request
from backend_server.errors import fail
from backend_server.inodes import Inode
from backend_server.names import check_xattr_name
from channel.protocol.limits import XATTR_SIZE_MAX

XATTR_CREATE = 1
XATTR_REPLACE = 2

_PRIVILEGED_PREFIXES = (b"trusted.", b"security.")


def _target(req: Request) -> Inode:
    inode = req.inode(req.cmd.ino)
    if inode.is_symlink:
        raise fail(errno.EOPNOTSUPP)
    return inode


def setxattr(req: Request) -> Reply:
    name, flags = wire.args(req.cmd.body, 2)
    name = check_xattr_name(name)
    flags = wire.integer(flags, 0, XATTR_CREATE | XATTR_REPLACE)
    if flags == XATTR_CREATE | XATTR_REPLACE:
        raise fail(errno.EINVAL)
    value = req.channel.input_data(req.cmd)
    if len(value) > XATTR_SIZE_MAX:
        raise fail(errno.E2BIG)
    inode = _target(req)
    if not req.caller_is_root and name.startswith(_PRIVILEGED_PREFIXES):
        raise fail(errno.EPERM)
    os.setxattr(inode.proc_path, name, value, flags)
    return EMPTY


def _answer(req: Request, data: bytes) -> Reply:
    """Size 0: only the length. Otherwise the data into the output buffer, or ERANGE."""
    if req.cmd.size == 0:
        return Reply(value=len(data))
    out = req.channel.output_buffer(req.cmd)
    if len(data) > len(out):
        raise fail(errno.ERANGE)
    out[: len(data)] = data
    return Reply(data_len=len(data), value=len(data))


def getxattr(req: Request) -> Reply:
    (name,) = wire.args(req.cmd.body, 1)
    name = check_xattr_name(name)
    inode = _target(req)
    if not req.caller_is_root and name.startswith(b"trusted."):
        raise fail(errno.ENODATA)
    return _answer(req, os.getxattr(inode.proc_path, name))


def listxattr(req: Request) -> Reply:
    inode = _target(req)
    names = [os.fsencode(name) for name in os.listxattr(inode.proc_path)]
    if not req.caller_is_root:
        names = [name for name in names if not name.startswith(b"trusted.")]
    return _answer(req, b"".join(name + b"\0" for name in names))


def removexattr(req: Request) -> Reply:
    (name,) = wire.args(req.cmd.body, 1)
    name = check_xattr_name(name)
    inode = _target(req)
    if not req.caller_is_root and name.startswith(_PRIVILEGED_PREFIXES):
        raise fail(errno.EPERM)
    os.removexattr(inode.proc_path, name)
    return EMPTY
