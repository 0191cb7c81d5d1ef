"""The operation table: for each opcode, its function, whether it acts as the caller, whether
it uses a handle, and where it runs (inline in the trio thread, or in a worker thread).

Where an operation runs is decided by what it costs, measured on the development VM (2 vCPUs,
ext4 on virtio, Linux 6.18, Python 3.11; loops of 10^3-10^5 calls, page cache warm):

    trio.to_thread.run_sync round trip         165 us   <- the price of going to a thread
    open(O_PATH)+fstat+close (LOOKUP's work)     4.7 us
    fstat (GETATTR's work)                       2.0 us
    setfsuid pair / setgroups pair              3.6 / 4.3 us
    preadv / pwritev  4 KiB                      1.4 / 1.7 us
    preadv / pwritev 64 KiB                      5.6 / 5.4 us
    preadv / pwritev 256 KiB                      25 / 23 us
    preadv / pwritev   1 MiB                      95 / 91 us
    fsync of a clean file                         71 us; with dirty data, milliseconds
    READDIR page, per entry (open, fstat, count, pack)   ~15 us
    listing a directory of 10^5 names (st_size 2.8 MB)   70 ms

End to end through a real channel (BlockingClient -> poller -> Backend, two processes):
GETATTR 58 us, LOOKUP 84 us, READ 4 KiB 65 us, WRITE 4 KiB 62 us as root; a non-root
caller's identity switch adds ~25-35 us to LOOKUP/ACCESS/WRITE.

So everything that is a few system calls runs inline: a thread hop would cost more than the
work. What can block for milliseconds goes to a worker: FSYNC, FSYNCDIR and FALLOCATE always;
READ and WRITE above 256 KiB (from the page cache they are still fast, but they are the ones
that wait for the disk, and at that size the hop is a small fraction); READDIR when its
directory must be listed and is not small (st_size above one block), or when more than
INLINE_READDIR_ENTRIES entries remain (an inline page stops at that many, ~0.25 ms).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from backend_server import ops_data, ops_dir, ops_meta, ops_path, ops_restore, ops_xattr
from backend_server.coherence import ENTRY, INODE, Notice
from backend_server.context import Reply, Request
from backend_server.ops_dir import INLINE_READDIR_ENTRIES
from channel.protocol.opcodes import Op

#: READ/WRITE above this size run in a worker thread.
LARGE_IO = 256 * 1024
#: A directory whose st_size is at most this is listed inline (ext4: one block, ~100 names).
SMALL_DIR_BYTES = 4096


def _always(req: Request) -> bool:
    return True


def _large_read(req: Request) -> bool:
    return req.cmd.size > LARGE_IO


def _large_write(req: Request) -> bool:
    return req.cmd.data_len > LARGE_IO


def _big_readdir(req: Request) -> bool:
    handle = req.handle
    if handle is None or not handle.is_dir:
        return False  # fails at once, inline
    names = handle.snapshot
    if names is None or req.cmd.offset == 0:
        return os.fstat(handle.fd).st_size > SMALL_DIR_BYTES
    return len(names) - req.cmd.offset > INLINE_READDIR_ENTRIES


@dataclass(frozen=True, slots=True)
class OpSpec:
    run: Callable[[Request], Reply]
    #: acts as the caller (permission checks, ownership, clearing setuid on write)
    identity: bool
    #: cmd.fh names a handle, which the dispatcher resolves and pins
    handle: bool
    #: True when this command should run in a worker thread; None: never (no call per command)
    threaded: Callable[[Request], bool] | None = None
    #: what a successful command changed, for the mount's caches (see coherence)
    changes: Callable[[Request], list[Notice]] | None = None
    #: the caller is whoever opened the handle, not the command's header (see WRITE)
    opener: bool = False


def _spec(
    run: Callable[[Request], Reply],
    *,
    identity: bool = True,
    handle: bool = False,
    threaded: Callable[[Request], bool] | None = None,
    changes: Callable[[Request], list[Notice]] | None = None,
    opener: bool = False,
) -> OpSpec:
    return OpSpec(run, identity, handle, threaded, changes, opener)


# -- what a successful command changed (see coherence) ---------------------------------------
def _inode_changed(req: Request) -> list[Notice]:
    return [[INODE, req.handle.ino if req.handle is not None else req.cmd.ino]]


def _entry_changed(req: Request) -> list[Notice]:
    """CREATE, MKNOD, MKDIR, SYMLINK, UNLINK, RMDIR: body[0] named in directory cmd.ino."""
    parent = req.cmd.ino
    return [[ENTRY, parent, req.cmd.body[0]], [INODE, parent]]


def _linked(req: Request) -> list[Notice]:
    new_parent, new_name = req.cmd.body[:2]
    return [[ENTRY, new_parent, new_name], [INODE, new_parent], [INODE, req.cmd.ino]]


def _renamed(req: Request) -> list[Notice]:
    name, new_parent, new_name = req.cmd.body[:3]
    parent = req.cmd.ino
    return [
        [ENTRY, parent, name], [ENTRY, new_parent, new_name],
        [INODE, parent], [INODE, new_parent],
    ]  # fmt: skip


OPS: dict[int, OpSpec] = {
    Op.NOP: _spec(ops_meta.nop, identity=False),
    Op.LOOKUP: _spec(ops_dir.lookup),
    Op.FORGET: _spec(ops_meta.forget, identity=False),
    Op.BATCH_FORGET: _spec(ops_meta.batch_forget, identity=False),
    Op.GETATTR: _spec(ops_meta.getattr_, identity=False),
    Op.SETATTR: _spec(ops_meta.setattr_, changes=_inode_changed),
    Op.READLINK: _spec(ops_meta.readlink, identity=False),
    Op.MKNOD: _spec(ops_dir.mknod, changes=_entry_changed),
    Op.MKDIR: _spec(ops_dir.mkdir, changes=_entry_changed),
    Op.UNLINK: _spec(ops_dir.unlink, changes=_entry_changed),
    Op.RMDIR: _spec(ops_dir.rmdir, changes=_entry_changed),
    Op.SYMLINK: _spec(ops_dir.symlink, changes=_entry_changed),
    Op.RENAME: _spec(ops_dir.rename, changes=_renamed),
    Op.LINK: _spec(ops_dir.link, changes=_linked),
    Op.OPEN: _spec(ops_data.open_),
    Op.CREATE: _spec(ops_data.create, changes=_entry_changed),
    Op.READ: _spec(ops_data.read, identity=False, handle=True, threaded=_large_read),
    # WRITE acts as whoever opened the handle: the export's kernel then clears setuid and
    # setgid on the write by its own rules (setuid always, setgid if group-executable or the
    # writer is not in the file's group, unless the writer has CAP_FSETID, as the server
    # itself has). pyfuse3 does not say who a FUSE WRITE comes from (its header is the
    # writing process for a write-through, anyone for a write-back), and libfuse 3.14 does
    # not pass on FUSE_WRITE_KILL_SUIDGID; the opener is who Linux checked at open.
    Op.WRITE: _spec(
        ops_data.write, handle=True, threaded=_large_write, changes=_inode_changed, opener=True
    ),
    Op.FLUSH: _spec(ops_data.flush, identity=False, handle=True),
    Op.RELEASE: _spec(ops_data.release, identity=False),
    Op.FSYNC: _spec(ops_data.fsync, identity=False, handle=True, threaded=_always),
    Op.OPENDIR: _spec(ops_dir.opendir),
    Op.READDIR: _spec(ops_dir.readdir, handle=True, threaded=_big_readdir),
    Op.RELEASEDIR: _spec(ops_dir.releasedir, identity=False),
    Op.FSYNCDIR: _spec(ops_dir.fsyncdir, identity=False, handle=True, threaded=_always),
    Op.STATFS: _spec(ops_meta.statfs, identity=False),
    Op.SETXATTR: _spec(ops_xattr.setxattr, changes=_inode_changed),
    Op.GETXATTR: _spec(ops_xattr.getxattr),
    Op.LISTXATTR: _spec(ops_xattr.listxattr),
    Op.REMOVEXATTR: _spec(ops_xattr.removexattr, changes=_inode_changed),
    Op.ACCESS: _spec(ops_meta.access),
    Op.FALLOCATE: _spec(ops_data.fallocate, handle=True, threaded=_always, changes=_inode_changed),
    Op.GETLK: _spec(ops_data.locks, identity=False),
    Op.SETLK: _spec(ops_data.locks, identity=False),
    Op.FLOCK: _spec(ops_data.locks, identity=False),
    Op.RESTORE_INODES: _spec(ops_restore.restore_inodes, identity=False),
    Op.RESTORE_HANDLE: _spec(ops_restore.restore_handle, identity=False),
    Op.RESOLVE: _spec(ops_path.resolve),
}
