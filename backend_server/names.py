"""Name validation: the one gate every name from a command body passes before a system call.

Names are bytes, as Linux names are. A valid name is non-empty, at most NAME_MAX bytes, and
contains neither `/` nor NUL, so it always means exactly one directory entry relative to a
directory descriptor the server holds: no name can walk anywhere, and nothing outside the
export is reachable by naming it.

`.` and `..` are the two names that do not mean an entry of their own. LOOKUP resolves them
itself (see `backend_server.ops_dir.lookup`, which keeps `..` at the root on the root); every
other operation refuses them up front with the errno Linux gives for the same call relative
to a directory descriptor (measured with mkdirat/unlinkat/renameat/... on Linux 6.x), rather
than relying on the kernel refusing them on the server's behalf.
"""

from __future__ import annotations

import errno
from enum import Enum

from backend_server.errors import fail
from channel.protocol.limits import NAME_MAX, PATH_MAX, XATTR_NAME_MAX

DOT_NAMES = (b".", b"..")


class Use(Enum):
    """What an operation does with a name; decides how `.` and `..` are refused."""

    LOOKUP = "lookup"
    CREATE_NODE = "create-node"  # mknod, mkdir, symlink, link target: EEXIST
    CREATE_OPEN = "create-open"  # open(O_CREAT): EISDIR
    UNLINK = "unlink"  # EISDIR
    RMDIR = "rmdir"  # "." EINVAL, ".." ENOTEMPTY
    RENAME = "rename"  # EBUSY


def _dot_errno(name: bytes, use: Use) -> int:
    if use is Use.CREATE_NODE:
        return errno.EEXIST
    if use is Use.CREATE_OPEN or use is Use.UNLINK:
        return errno.EISDIR
    if use is Use.RMDIR:
        return errno.EINVAL if name == b"." else errno.ENOTEMPTY
    return errno.EBUSY


def check_name(name: object, use: Use) -> bytes:
    """Return `name` if it is a valid entry name for `use`; raise OSError otherwise.

    Wrong type or an embedded `/`/NUL: EINVAL (Linux cannot even express a NUL, and a `/`
    would make the name a path); empty: ENOENT; longer than NAME_MAX: ENAMETOOLONG.
    """
    if type(name) is not bytes:
        raise fail(errno.EINVAL, "name must be bytes")
    if not name:
        raise fail(errno.ENOENT)
    if len(name) > NAME_MAX:
        raise fail(errno.ENAMETOOLONG)
    if b"/" in name or b"\0" in name:
        raise fail(errno.EINVAL, "name contains '/' or NUL")
    if use is not Use.LOOKUP and name in DOT_NAMES:
        raise fail(_dot_errno(name, use))
    return name


def check_symlink_target(target: object) -> bytes:
    """A symlink's target is stored, never resolved by the server: it may point anywhere
    (including `/`), but must be a non-empty NUL-free byte string of at most PATH_MAX - 1."""
    if type(target) is not bytes:
        raise fail(errno.EINVAL, "symlink target must be bytes")
    if not target:
        raise fail(errno.ENOENT)
    if len(target) >= PATH_MAX:
        raise fail(errno.ENAMETOOLONG)
    if b"\0" in target:
        raise fail(errno.EINVAL, "symlink target contains NUL")
    return target


def check_xattr_name(name: object) -> bytes:
    """Extended attribute names: non-empty bytes without NUL, at most XATTR_NAME_MAX
    (ERANGE, as Linux answers an over-long name)."""
    if type(name) is not bytes:
        raise fail(errno.EINVAL, "xattr name must be bytes")
    if not name or b"\0" in name:
        raise fail(errno.EINVAL if name else errno.ERANGE)
    if len(name) > XATTR_NAME_MAX:
        raise fail(errno.ERANGE)
    return name
