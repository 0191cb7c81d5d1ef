"""The server's names and confinement: validation, dot and dotdot, directories moved out of
the export, symlinks never followed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from channel.protocol.limits import NAME_MAX
from channel.protocol.opcodes import ROOT_INO, Op
from tests.support.server_fs import (
    FS,
    A,
    entry_ino,
    world_dir,
)
from tests.support.server_harness import ServerProcess


# -- names and confinement --------------------------------------------------------------------
def test_name_validation(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    for bad, code in (
        (b"a/b", errno.EINVAL),
        (b"../../etc", errno.EINVAL),
        (b"nul\0byte", errno.EINVAL),
        (b"", errno.ENOENT),
        (b"n" * (NAME_MAX + 1), errno.ENAMETOOLONG),
    ):
        assert fs.lookup(dino, bad).status == -code, bad
        assert fs.create(dino, bad).status == -code, bad
        assert fs.mkdir(dino, bad).status == -code, bad
        assert fs.call(Op.UNLINK, [bad], ino=dino).status == -code, bad
    longest = b"n" * NAME_MAX
    assert fs.create(dino, longest).status == 0
    assert entry_ino(fs.lookup(dino, longest)) > 0
    assert (path / longest.decode()).exists()
    # "." and "..": refused with Linux's errno for each call, never acted on
    for dot in (b".", b".."):
        assert fs.mkdir(dino, dot).status == -errno.EEXIST
        assert fs.create(dino, dot).status == -errno.EISDIR
        assert fs.call(Op.MKNOD, [dot, 0o644, 0], ino=dino).status == -errno.EEXIST
        assert fs.call(Op.SYMLINK, [dot, b"x"], ino=dino).status == -errno.EEXIST
        assert fs.call(Op.UNLINK, [dot], ino=dino).status == -errno.EISDIR
        assert fs.call(Op.RENAME, [dot, dino, b"x", 0], ino=dino).status == -errno.EBUSY
        assert fs.call(Op.RENAME, [longest, dino, dot, 0], ino=dino).status == -errno.EBUSY
        assert fs.call(Op.LINK, [dino, dot], ino=dino).status == -errno.EEXIST
    assert fs.call(Op.RMDIR, [b"."], ino=dino).status == -errno.EINVAL
    assert fs.call(Op.RMDIR, [b".."], ino=dino).status == -errno.ENOTEMPTY


def test_dot_and_dotdot_stay_inside(fs: FS, work: tuple[Path, int]) -> None:
    _path, dino = work
    assert entry_ino(fs.lookup(ROOT_INO, b"..")) == ROOT_INO
    assert entry_ino(fs.lookup(ROOT_INO, b".")) == ROOT_INO
    sub = entry_ino(fs.mkdir(dino, b"sub"))
    assert entry_ino(fs.lookup(sub, b"..")) == dino
    assert entry_ino(fs.lookup(sub, b".")) == sub
    assert entry_ino(fs.lookup(dino, b"..")) == ROOT_INO
    # ".." of the root, repeatedly, is the root: nothing above the export is reachable
    ino = ROOT_INO
    for _ in range(5):
        ino = entry_ino(fs.lookup(ino, b".."))
    assert ino == ROOT_INO
    assert fs.getattr(ROOT_INO)[A["ino"]] == ROOT_INO


def test_directory_moved_out_of_the_export(server: ServerProcess, fs: FS) -> None:
    outside = world_dir("ringfs-outside-")
    try:
        (server.export / "leaving").mkdir()
        (server.export / "leaving" / "inner").mkdir()
        inner = fs.ino(b"leaving/inner")
        shutil.move(str(server.export / "leaving"), str(outside / "gone"))
        assert fs.lookup(inner, b"..").status == -errno.ENOENT
    finally:
        shutil.rmtree(outside)


def test_symlink_to_root_is_never_followed(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    os.symlink("/", path / "escape")
    os.symlink("/etc/passwd", path / "passwd")
    reply = fs.lookup(dino, b"escape")
    escape = entry_ino(reply)
    assert stat.S_ISLNK(reply.body[0][A["mode"]])
    assert fs.ok(Op.READLINK, ino=escape).body == [b"/"]
    assert fs.lookup(escape, b"etc").status == -errno.ENOTDIR
    assert fs.call(Op.OPENDIR, ino=escape).status == -errno.ENOTDIR
    assert fs.open(escape, os.O_RDONLY).status == -errno.ELOOP
    assert fs.mkdir(escape, b"x").status == -errno.ENOTDIR
    assert fs.create(escape, b"x").status == -errno.ENOTDIR
    assert fs.call(Op.RENAME, [b"x", escape, b"y", 0], ino=dino).status == -errno.ENOTDIR
    assert fs.call(Op.STATFS, ino=escape).status == 0
    passwd = entry_ino(fs.lookup(dino, b"passwd"))
    before = os.stat("/etc/passwd")
    assert fs.open(passwd, os.O_RDONLY).status == -errno.ELOOP
    assert fs.setattr(passwd, mode=0o777).status == -errno.EOPNOTSUPP
    fs.ok(Op.SETATTR, {"mtime_ns": 1}, ino=passwd)  # the link's own time
    after = os.stat("/etc/passwd")
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert fs.call(Op.SETXATTR, [b"user.x", 0], ino=passwd, data=b"v").status == -errno.EOPNOTSUPP
    assert fs.getattr(passwd)[A["size"]] == len("/etc/passwd")
    # creating through the symlink's name never writes the target
    assert fs.create(dino, b"passwd", flags=os.O_WRONLY | os.O_TRUNC).status == -errno.ELOOP
    assert os.stat("/etc/passwd").st_size == before.st_size
