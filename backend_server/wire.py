"""Request bodies in, reply bodies out: the server's side of channel/protocol/opcodes.py's layouts.

Bodies come from a region the server treats as hostile, so every accessor here checks the
type and range of what it takes and raises OSError(EINVAL) otherwise; nothing else escapes.
Replies are built here too (attr, entry, statfs), so that their layout is written once.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from backend_server.errors import fail
from channel.protocol.codec import pack_body
from channel.protocol.opcodes import ATTR_FIELDS

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
#: Offsets and lengths are off_t on Linux: signed 64 bits.
OFF_MAX = (1 << 63) - 1

#: STATFS reply: a map keyed by these names (pyfuse3.StatvfsData's attributes, which are
#: os.statvfs_result's minus f_flag and f_fsid).
STATFS_FIELDS = (
    "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
    "f_files", "f_ffree", "f_favail", "f_namemax",
)  # fmt: skip

assert len(ATTR_FIELDS) == 12  # attr() below fills exactly these, in this order


def args(body: Any, count: int, at_least: int | None = None) -> list[Any]:
    """The body as a list of `count` items (or between `at_least` and `count`)."""
    low = count if at_least is None else at_least
    if type(body) is not list or not low <= len(body) <= count:
        raise fail(errno.EINVAL, f"body must be a list of {count} items")
    return body


def integer(value: Any, low: int = 0, high: int = U64_MAX) -> int:
    """An int in [low, high]; bools and other types are refused."""
    if type(value) is not int or not low <= value <= high:
        raise fail(errno.EINVAL, "integer field out of range")
    return value


def attr(ino: int, st: os.stat_result) -> list[int]:
    """An `attr` list (ATTR_FIELDS order) for inode number `ino`."""
    return [
        ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, st.st_size,
        st.st_blocks, st.st_blksize, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
    ]  # fmt: skip


def entry_body(ino: int, st: os.stat_result, generation: int = 0) -> bytes:
    """An `entry` reply body, [attr, generation], packed."""
    return pack_body([attr(ino, st), generation])


def statfs_body(sv: os.statvfs_result) -> bytes:
    return pack_body({name: getattr(sv, name) for name in STATFS_FIELDS})
