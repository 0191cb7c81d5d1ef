"""A tiny FUSE file system whose one file fails every read with EIO: a backing store with a bad
sector, for the fault tests. `python -m tests.support.failing_fs MOUNTPOINT` (foreground)."""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

BAD = b"bad"
BAD_INODE = pyfuse3.ROOT_INODE + 1


class FailingFS(pyfuse3.Operations):
    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = (
            (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
        )
        a.st_nlink = 2 if inode == pyfuse3.ROOT_INODE else 1
        a.st_size = 0 if inode == pyfuse3.ROOT_INODE else 4096
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        return a

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if parent == pyfuse3.ROOT_INODE and name == BAD:
            return self._attr(BAD_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, BAD, self._attr(BAD_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        raise pyfuse3.FUSEError(errno.EIO)


def main() -> None:
    pyfuse3.init(FailingFS(), sys.argv[1], {"fsname=failingfs", "allow_other"})
    print("ready", flush=True)  # init returns with the file system mounted
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
