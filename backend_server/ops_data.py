"""Operations on open files: OPEN, CREATE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, and
the lock policy (GETLK, SETLK, FLOCK).

READ and WRITE move data between the file and the channel's data buffer with preadv/pwritev
on a memoryview of the shared region: no intermediate copy in the server.

Opening: an inode is opened through its /proc/self/fd magic link as the caller, so the kernel
checks the open-time permissions (read, write, O_TRUNC, O_NOATIME). The server refuses to
open a symlink (ELOOP, as O_NOFOLLOW would) and FIFOs, sockets and device nodes (ENXIO): the
kernel opens those on the client's side without asking a FUSE file system, an application
channel has no business asking, and opening a FIFO here would block the server.

Locks: GETLK, SETLK and FLOCK answer ENOSYS. For the FUSE driver that makes the kernel fall
back to its own local locking, which is correct for a file system mounted in one place (all
processes that lock see the same mount, and the kernel keeps POSIX and flock semantics,
including release on close). Locks are not visible to applications that use their own
application channel, nor to processes working on the export directory directly.
"""

from __future__ import annotations

import errno
import os
import stat

from backend_server import syscalls, wire
from backend_server.context import EMPTY, Reply, Request
from backend_server.errors import fail
from backend_server.handles import Handle
from backend_server.names import Use, check_name
from backend_server.ops_meta import is_special
from backend_server.wire import U32_MAX, entry_body
from channel.protocol.codec import pack_body

#: open(2) flags a client may ask for; everything else (O_CREAT and O_EXCL outside CREATE,
#: O_PATH, O_TMPFILE, O_NOCTTY, O_ASYNC, O_CLOEXEC) is dropped, and O_CLOEXEC is added.
OPEN_FLAGS = (
    os.O_ACCMODE
    | os.O_APPEND
    | os.O_TRUNC
    | os.O_NONBLOCK
    | os.O_DSYNC
    | os.O_SYNC
    | os.O_DIRECT
    | os.O_DIRECTORY
    | os.O_NOATIME
    | os.O_LARGEFILE
)


def open_flags(value: object) -> int:
    flags = wire.integer(value, 0, U32_MAX)
    if flags & os.O_ACCMODE == os.O_ACCMODE:
        raise fail(errno.EINVAL, "O_ACCMODE is not an access mode")
    return (flags & OPEN_FLAGS) | os.O_CLOEXEC


def open_(req: Request) -> Reply:
    (flags,) = wire.args(req.cmd.body, 1)
    flags = open_flags(flags)
    inode = req.inode(req.cmd.ino)
    if inode.is_symlink:
        raise fail(errno.ELOOP)
    if is_special(inode.kind):
        raise fail(errno.ENXIO)
    fd = os.open(inode.proc_path, flags)
    try:
        state = wire.attr(inode.number, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    fh = req.session.add_handle(Handle(fd, inode.number, is_dir=inode.is_dir, opener=req.caller))
    return Reply(pack_body(state), value=fh)


def create(req: Request) -> Reply:
    name, mode, raw_flags = wire.args(req.cmd.body, 3)
    name = check_name(name, Use.CREATE_OPEN)
    mode = wire.integer(mode, 0, U32_MAX)
    flags = open_flags(raw_flags) | (raw_flags & os.O_EXCL)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise fail(errno.EINVAL)
    parent = req.inode(req.cmd.ino)
    if not parent.is_dir:
        raise fail(errno.ENOTDIR)
    # O_NOFOLLOW: an existing symlink under this name is refused (ELOOP), never followed.
    flags |= os.O_CREAT | os.O_NOFOLLOW
    fd, created = _open_creating(parent.fd, name, flags, mode & 0o7777 & ~req.umask)
    counted = None
    try:
        # Count the very object that was opened (not whatever the name means by now); this
        # takes no second descriptor, so running out of them cannot strike after the create.
        counted = req.register_opened(fd, parent, name)
        inode, st = counted
        fh = req.session.add_handle(Handle(fd, inode.number, is_dir=False, opener=req.caller))
    except BaseException:
        # Never a half-done create: what this command created goes again with its failure.
        if counted is not None:
            req.table.forget(req.session, counted[0].number, 1)
        if created:
            _remove_created(parent.fd, name, fd)
        os.close(fd)
        raise
    return Reply(entry_body(inode.number, st), value=fh)


def _open_creating(dir_fd: int, name: bytes, flags: int, mode: int) -> tuple[int, bool]:
    """open(O_CREAT) that also says whether it created the file (O_EXCL first, then the
    existing file; again if that vanished in between)."""
    if flags & os.O_EXCL:
        return os.open(name, flags, mode, dir_fd=dir_fd), True
    while True:
        try:
            return os.open(name, flags | os.O_EXCL, mode, dir_fd=dir_fd), True
        except FileExistsError:
            pass
        try:
            return os.open(name, flags & ~os.O_CREAT, dir_fd=dir_fd), False
        except FileNotFoundError:
            continue


def _remove_created(dir_fd: int, name: bytes, fd: int) -> None:
    """Unlink `name` if it still is the file open as `fd`."""
    try:
        st, now = os.fstat(fd), os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _file(req: Request) -> Handle:
    handle = req.file_handle()
    if handle.is_dir:
        raise fail(errno.EISDIR)
    return handle


def read(req: Request) -> Reply:
    cmd = req.cmd
    handle = _file(req)
    if cmd.offset > wire.OFF_MAX:
        raise fail(errno.EINVAL)
    if cmd.size == 0:
        return EMPTY
    out = req.channel.output_buffer(cmd)
    if len(out) == 0:
        raise fail(errno.EINVAL, "READ needs an output buffer")
    count = os.preadv(handle.fd, [out], cmd.offset)
    return Reply(data_len=count)


def write(req: Request) -> Reply:
    cmd = req.cmd
    handle = _file(req)
    if cmd.offset > wire.OFF_MAX:
        raise fail(errno.EINVAL)
    data = req.channel.input_data(cmd)
    if len(data) == 0:
        return EMPTY
    return Reply(value=os.pwritev(handle.fd, [data], cmd.offset))


def flush(req: Request) -> Reply:
    """close(dup(fd)): reports write-back errors the way close(2) would, keeps the handle."""
    os.close(os.dup(_file(req).fd))
    return EMPTY


def release(req: Request) -> Reply:
    handle = req.session.pop_handle(req.cmd.fh)
    try:
        return Reply(pack_body(wire.attr(handle.ino, os.fstat(handle.fd))))
    finally:
        handle.close()


def fsync(req: Request) -> Reply:
    syscalls.sync(_file(req).fd, req.cmd.flags)
    return EMPTY


def fallocate(req: Request) -> Reply:
    """FALLOCATE [mode] with offset and length in the header; a second body item, if
    present, is a length too large for the header's 32-bit size field."""
    cmd = req.cmd
    body = wire.args(cmd.body, 2, at_least=1)
    mode = wire.integer(body[0], 0, U32_MAX)
    length = wire.integer(body[1], 0, wire.OFF_MAX) if len(body) == 2 else cmd.size
    if cmd.offset > wire.OFF_MAX:
        raise fail(errno.EINVAL)
    syscalls.fallocate(_file(req).fd, mode, cmd.offset, length)
    return EMPTY


def locks(req: Request) -> Reply:
    """See the module docstring: the kernel's local locking is the policy."""
    raise fail(errno.ENOSYS)
