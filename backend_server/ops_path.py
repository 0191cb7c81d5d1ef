"""RESOLVE: a whole relative path in one command, for application channels.

An application names files by path; walking them with one LOOKUP per component would cost a
round trip each and leave lookups to FORGET. RESOLVE walks the components beneath a directory
the channel holds, as the caller (the kernel checks search permission at every step), with
the same confinement as LOOKUP: each component is one valid name, `.` and `..` are refused
(the client normalises paths first, so nothing can climb out of the export), and no symlink
is ever followed: one in the middle of the path is ELOOP, a final one is the symlink itself.
With `register` the final object counts a lookup and the reply is its entry; without, the
reply is only its attributes (a stat that leaves nothing to forget).
"""

from __future__ import annotations

import errno
import os
import stat

from backend_server import wire
from backend_server.context import Reply, Request
from backend_server.errors import fail
from backend_server.inodes import O_PATH_FLAGS
from backend_server.names import Use, check_name
from channel.protocol.codec import pack_body
from channel.protocol.limits import PATH_MAX


def _components(value: object) -> list[bytes]:
    if type(value) is not list or len(value) > PATH_MAX // 2:
        raise fail(errno.EINVAL, "components must be a list")
    names = [check_name(name, Use.LOOKUP) for name in value]
    if any(name in (b".", b"..") for name in names):
        raise fail(errno.EINVAL, "normalise the path: no . or ..")
    return names


def resolve(req: Request) -> Reply:
    raw, register = wire.args(req.cmd.body, 2)
    names = _components(raw)
    start = req.inode(req.cmd.ino)
    if not start.is_dir:
        raise fail(errno.ENOTDIR)
    fd = os.open(".", O_PATH_FLAGS, dir_fd=start.fd)
    try:
        for i, name in enumerate(names):
            child = os.open(name, O_PATH_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            if i < len(names) - 1:
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    raise fail(errno.ELOOP)
                if not stat.S_ISDIR(mode):
                    raise fail(errno.ENOTDIR)
        if register:
            held, fd = fd, -1
            return req.entry(held, start, *names) if names else req.entry(held, None)
        st = os.fstat(fd)
        return Reply(pack_body(wire.attr(req.table.number_of(fd, st), st)))
    finally:
        if fd >= 0:
            os.close(fd)
