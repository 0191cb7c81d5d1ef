"""RESTORE_INODES and RESTORE_HANDLE on a real server: what a driver replays after a restart."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from channel.protocol.opcodes import Op
from tests.support.server_harness import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    export = tmp_path / "export"
    (export / "dir" / "sub").mkdir(parents=True)
    (export / "dir" / "sub" / "file").write_bytes(b"restored content")
    with ServerProcess(export, tmp_path / "sock") as srv:
        yield srv


def test_driver_restores_numbers_lookups_and_handles(server: ServerProcess) -> None:
    with server.client(role="driver") as drv:
        entries = [[1, b"dir", 40, 2], [40, b"sub", 41, 1], [41, b"file", 77, 3]]
        assert drv.call(Op.RESTORE_INODES, entries).check().body == [0, 0, 0]
        # the numbers now mean those objects, with the kernel's lookup counts
        attr = drv.call(Op.GETATTR, ino=77).check().body
        assert attr[0] == 77 and attr[6] == len(b"restored content")
        assert drv.call(Op.LOOKUP, [b"file"], ino=41).check().body[0][0] == 77
        # a handle comes back under its old number, without O_TRUNC acting again
        drv.call(Op.RESTORE_HANDLE, [os.O_RDWR | os.O_TRUNC], ino=77, fh=9).check()
        reply = drv.call(Op.READ, fh=9, offset=0, size=64, read_size=64).check()
        assert reply.data == b"restored content"
        # new numbers and handles start above the restored ones
        new = drv.call(Op.CREATE, [b"new", 0o644, os.O_RDWR], ino=41).check()
        assert new.body[0][0] > 77 and new.value > 9
        # forgetting the restored counts (3 + the LOOKUP above) drops the inode
        drv.call(Op.BATCH_FORGET, [[77, 4]])
        assert drv.call(Op.GETATTR, ino=77).status == -errno.ESTALE


def test_restore_refuses_conflicts_and_missing_names(server: ServerProcess) -> None:
    with server.client(role="driver") as drv:
        assert drv.call(Op.RESTORE_INODES, [[1, b"dir", 40, 1]]).check().body == [0]
        answers = (
            drv.call(
                Op.RESTORE_INODES,
                [
                    [1, b"dir", 50, 1],  # the object already has another number
                    [40, b"sub", 40, 1],  # the number already names another object
                    [40, b"gone", 60, 1],  # nothing by that name any more
                    [99, b"x", 61, 1],  # the parent was never restored
                    [40, b"..", 62, 1],  # dots name nothing new
                    [40, b"sub", 1, 1],  # the root's number is not for the taking
                ],
            )
            .check()
            .body
        )
        assert answers == [-errno.EEXIST, -errno.EEXIST, -errno.ENOENT, -errno.ESTALE,
                           -errno.EINVAL, -errno.EINVAL]  # fmt: skip
        assert drv.call(Op.RESTORE_HANDLE, [os.O_RDONLY], ino=40, fh=3).ok
        assert drv.call(Op.RESTORE_HANDLE, [os.O_RDONLY], ino=40, fh=3).status == -errno.EEXIST


def test_application_channels_cannot_restore(server: ServerProcess) -> None:
    with server.client() as app:  # even root's application channel: the role decides
        assert app.call(Op.RESTORE_INODES, [[1, b"dir", 40, 1]]).status == -errno.EPERM
        assert app.call(Op.RESTORE_HANDLE, [0], ino=1, fh=5).status == -errno.EPERM
