"""The filesystem server's operations, driven through the channel's blocking client alone.

A real server process (`tests.support.server_harness`, the real `backend_server.Backend` behind the
real poller) serves a temporary export; the tests talk to it with `BlockingClient` (as root,
in this process) and `UserClient` (a child that dropped to uid 65534 before its handshake),
and check the results both in replies and on the export directory itself.

This module: the operations one by one (names, attributes, links, files, directories,
xattrs); confinement, identities and teardown have modules of their own beside it.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from channel.protocol.codec import unpack_body
from channel.protocol.limits import NAME_MAX
from channel.protocol.opcodes import ROOT_INO, Op
from tests.support.server_fs import (
    FS,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    A,
    entry_ino,
)
from tests.support.server_harness import ServerProcess


# -- basics -----------------------------------------------------------------------------------
def test_nop_echoes_and_unknown_opcode_is_enosys(fs: FS) -> None:
    assert fs.ok(Op.NOP, ["hello", b"\x00", 3]).body == ["hello", b"\x00", 3]
    assert fs.call(200).status == -errno.ENOSYS
    assert fs.call(Op.NOP).status == 0


MALFORMED: list[tuple[Op, Any, dict[str, int]]] = [
    (Op.LOOKUP, None, {"ino": ROOT_INO}),
    (Op.LOOKUP, [1], {"ino": ROOT_INO}),
    (Op.LOOKUP, "name", {"ino": ROOT_INO}),
    (Op.LOOKUP, [b"a", b"b"], {"ino": ROOT_INO}),
    (Op.LOOKUP, ["text-not-bytes"], {"ino": ROOT_INO}),
    (Op.FORGET, [b"x"], {"ino": ROOT_INO}),
    (Op.FORGET, [-1], {"ino": ROOT_INO}),
    (Op.BATCH_FORGET, [[1]], {}),
    (Op.BATCH_FORGET, {"a": 1}, {}),
    (Op.SETATTR, [1, 2], {"ino": ROOT_INO}),
    (Op.SETATTR, {"colour": 1}, {"ino": ROOT_INO}),
    (Op.SETATTR, {"mode": "rwx"}, {"ino": ROOT_INO}),
    (Op.SETATTR, {"atime_ns": "yesterday"}, {"ino": ROOT_INO}),
    (Op.SETATTR, {"size": -1}, {"ino": ROOT_INO}),
    (Op.SETATTR, {"uid": True}, {"ino": ROOT_INO}),
    (Op.MKNOD, [b"n", 0o644], {"ino": ROOT_INO}),
    (Op.MKNOD, [b"n", 0o644, -1], {"ino": ROOT_INO}),
    (Op.MKNOD, [b"n", 0o170644, 0], {"ino": ROOT_INO}),
    (Op.MKDIR, [b"d"], {"ino": ROOT_INO}),
    (Op.MKDIR, [b"d", 1.5], {"ino": ROOT_INO}),
    (Op.SYMLINK, [b"s"], {"ino": ROOT_INO}),
    (Op.SYMLINK, [b"s", "text"], {"ino": ROOT_INO}),
    (Op.RENAME, [b"a", ROOT_INO, b"b"], {"ino": ROOT_INO}),
    (Op.RENAME, [b"a", ROOT_INO, b"b", 8], {"ino": ROOT_INO}),
    (Op.RENAME, [b"a", ROOT_INO, b"b", 3], {"ino": ROOT_INO}),
    (Op.LINK, [ROOT_INO], {"ino": ROOT_INO}),
    (Op.LINK, [b"x", b"y"], {"ino": ROOT_INO}),
    (Op.OPEN, None, {"ino": ROOT_INO}),
    (Op.OPEN, [os.O_ACCMODE], {"ino": ROOT_INO}),
    (Op.CREATE, [b"c", 0o644], {"ino": ROOT_INO}),
    (Op.CREATE, [b"c", 0o020644, os.O_RDWR], {"ino": ROOT_INO}),
    (Op.SETXATTR, [b"user.x"], {"ino": ROOT_INO}),
    (Op.SETXATTR, [b"user.x", 3], {"ino": ROOT_INO}),
    (Op.GETXATTR, ["user.x"], {"ino": ROOT_INO}),
    (Op.REMOVEXATTR, [], {"ino": ROOT_INO}),
    (Op.ACCESS, [8], {"ino": ROOT_INO}),
    (Op.ACCESS, None, {"ino": ROOT_INO}),
]


@pytest.mark.parametrize(("opcode", "body", "fields"), MALFORMED)
def test_malformed_bodies_are_einval(fs: FS, opcode: Op, body: Any, fields: dict[str, int]) -> None:
    assert fs.call(opcode, body, **fields).status == -errno.EINVAL
    assert fs.ok(Op.NOP, [1]).body == [1]  # and the server is still there


def test_unknown_handles_and_inodes(fs: FS) -> None:
    assert fs.call(Op.GETATTR, ino=999_999).status == -errno.ESTALE
    assert fs.lookup(999_999, b"x").status == -errno.ESTALE
    for opcode in (Op.READ, Op.WRITE, Op.FLUSH, Op.FSYNC, Op.READDIR, Op.FSYNCDIR):
        assert fs.call(opcode, fh=12345, read_size=16).status == -errno.EBADF, opcode.name
    assert fs.call(Op.RELEASE, fh=12345).status == -errno.EBADF
    assert fs.call(Op.RELEASEDIR, fh=12345).status == -errno.EBADF


# -- lookup, getattr, inode numbers -----------------------------------------------------------
def test_lookup_getattr(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "f").write_bytes(b"12345")
    reply = fs.ok(Op.LOOKUP, [b"f"], ino=dino)
    attr, generation = reply.body
    st = os.lstat(path / "f")
    assert generation == 0
    assert attr[A["mode"]] == st.st_mode and attr[A["size"]] == 5
    assert attr[A["nlink"]] == 1 and attr[A["uid"]] == 0
    assert attr[A["mtime_ns"]] == st.st_mtime_ns and attr[A["ctime_ns"]] == st.st_ctime_ns
    assert fs.getattr(attr[0]) == attr
    assert fs.lookup(dino, b"missing").status == -errno.ENOENT
    assert fs.lookup(attr[0], b"x").status == -errno.ENOTDIR
    root = fs.getattr(ROOT_INO)
    assert root[0] == ROOT_INO and stat.S_ISDIR(root[A["mode"]])


def test_hard_links_share_one_inode_number(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "a").write_bytes(b"x")
    os.link(path / "a", path / "b")
    a = entry_ino(fs.lookup(dino, b"a"))
    b = entry_ino(fs.lookup(dino, b"b"))
    assert a == b
    assert fs.getattr(a)[A["nlink"]] == 2


def test_inode_numbers_are_stable_across_forget(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "f").write_bytes(b"x")
    first = entry_ino(fs.lookup(dino, b"f"))
    fs.ok(Op.FORGET, [1], ino=first)
    assert fs.call(Op.GETATTR, ino=first).status == -errno.ESTALE  # no reference held
    again = entry_ino(fs.lookup(dino, b"f"))
    assert again == first


def test_lookup_counts_are_honoured(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "f").write_bytes(b"x")
    ino = entry_ino(fs.lookup(dino, b"f"))
    entry_ino(fs.lookup(dino, b"f"))
    entry_ino(fs.lookup(dino, b"f"))
    fs.ok(Op.FORGET, [2], ino=ino)
    assert fs.call(Op.GETATTR, ino=ino).status == 0  # one reference left
    fs.ok(Op.BATCH_FORGET, [[ino, 5]])  # more than held: clamped, not an error
    assert fs.call(Op.GETATTR, ino=ino).status == -errno.ESTALE
    fs.ok(Op.FORGET, [1], ino=ino)  # forgetting what is not held is ignored
    fs.ok(Op.FORGET, [1], ino=ROOT_INO)  # the root is never freed
    assert fs.getattr(ROOT_INO)[0] == ROOT_INO


def test_forget_closes_the_descriptor(fresh_server: ServerProcess) -> None:
    export = fresh_server.export
    for i in range(20):
        (export / f"f{i}").write_bytes(b"x")
    with fresh_server.client() as c:
        fs = FS(c)
        fs.ok(Op.NOP)
        base = fresh_server.fd_count()
        inos = [entry_ino(fs.lookup(ROOT_INO, f"f{i}".encode())) for i in range(20)]
        assert fresh_server.fd_count() == base + 20
        fs.ok(Op.BATCH_FORGET, [[ino, 1] for ino in inos[:10]])
        assert fresh_server.fd_count() == base + 10
        for ino in inos[10:]:
            fs.ok(Op.FORGET, [1], ino=ino)
        assert fresh_server.fd_count() == base


def test_inodes_and_handles_belong_to_their_channel(
    server: ServerProcess, fs: FS, work: tuple[Path, int]
) -> None:
    path, dino = work
    reply = fs.create(dino, b"mine")
    ino, fh = entry_ino(reply), reply.value
    with server.client() as other:
        ofs = FS(other)
        # Inode numbers are not capabilities: another channel must look the file up itself.
        assert ofs.call(Op.GETATTR, ino=ino).status == -errno.ESTALE
        assert ofs.call(Op.OPEN, [os.O_RDONLY], ino=ino).status == -errno.ESTALE
        assert ofs.call(Op.READ, fh=fh, read_size=10).status == -errno.EBADF
        assert ofs.call(Op.RELEASE, fh=fh).status == -errno.EBADF
        assert ofs.ino(path.name.encode() + b"/mine") == ino
    fs.ok(Op.RELEASE, fh=fh)


# -- setattr ----------------------------------------------------------------------------------
def test_setattr_mode_owner_size_times(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    ino = entry_ino(fs.create(dino, b"f", 0o644))
    attr = fs.ok(Op.SETATTR, {"mode": 0o4751}, ino=ino).body
    assert attr[A["mode"]] == stat.S_IFREG | 0o4751
    assert stat.S_IMODE(os.lstat(path / "f").st_mode) == 0o4751
    attr = fs.ok(Op.SETATTR, {"uid": 1000, "gid": 2000}, ino=ino).body
    assert (attr[A["uid"]], attr[A["gid"]]) == (1000, 2000)
    attr = fs.ok(Op.SETATTR, {"gid": 3000}, ino=ino).body
    assert (attr[A["uid"]], attr[A["gid"]]) == (1000, 3000)
    # grow (sparse) and shrink
    attr = fs.ok(Op.SETATTR, {"size": 10 << 20}, ino=ino).body
    assert attr[A["size"]] == 10 << 20 and attr[A["blocks"]] * 512 < 1 << 20
    attr = fs.ok(Op.SETATTR, {"size": 3}, ino=ino).body
    assert attr[A["size"]] == 3 == os.lstat(path / "f").st_size
    # explicit times, then "now" for one and omit for the other
    attr = fs.ok(Op.SETATTR, {"atime_ns": 1_000_000_123, "mtime_ns": 2_000_000_456}, ino=ino).body
    assert (attr[A["atime_ns"]], attr[A["mtime_ns"]]) == (1_000_000_123, 2_000_000_456)
    before = time.time_ns()
    attr = fs.ok(Op.SETATTR, {"mtime_ns": "now"}, ino=ino).body
    assert attr[A["atime_ns"]] == 1_000_000_123  # omitted: unchanged
    assert attr[A["mtime_ns"]] >= before - 10_000_000
    ctime = attr[A["ctime_ns"]]
    attr = fs.ok(Op.SETATTR, {}, ino=ino).body  # nothing: just the attributes
    assert attr[A["ctime_ns"]] == ctime


def test_setattr_size_through_handle_and_errors(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    reply = fs.create(dino, b"f")
    ino, fh = entry_ino(reply), reply.value
    fs.ok(Op.WRITE, data=b"abcdef", fh=fh)
    assert fs.ok(Op.SETATTR, {"size": 2}, ino=ino, fh=fh).body[A["size"]] == 2
    assert (path / "f").read_bytes() == b"ab"
    assert fs.setattr(dino, size=0).status == -errno.EISDIR
    os.symlink("f", path / "s")
    sino = entry_ino(fs.lookup(dino, b"s"))
    assert fs.setattr(sino, mode=0o600).status == -errno.EOPNOTSUPP
    # times and ownership of the symlink itself, never its target
    fs.ok(Op.SETATTR, {"mtime_ns": 5_000_000_000, "uid": 77}, ino=sino)
    assert os.lstat(path / "s").st_mtime_ns == 5_000_000_000
    assert os.lstat(path / "s").st_uid == 77 and os.stat(path / "f").st_uid == 0
    fs.ok(Op.RELEASE, fh=fh)


# -- symlinks, nodes, directories ------------------------------------------------------------
def test_symlink_and_readlink(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    reply = fs.ok(Op.SYMLINK, [b"s", b"../some/where"], ino=dino)
    assert stat.S_ISLNK(reply.body[0][A["mode"]])
    assert os.readlink(path / "s") == "../some/where"
    assert fs.ok(Op.READLINK, ino=entry_ino(reply)).body == [b"../some/where"]
    assert fs.call(Op.READLINK, ino=dino).status == -errno.EINVAL
    assert fs.call(Op.SYMLINK, [b"s", b"x"], ino=dino).status == -errno.EEXIST
    assert fs.call(Op.SYMLINK, [b"e", b""], ino=dino).status == -errno.ENOENT
    assert fs.call(Op.SYMLINK, [b"l", b"x" * 4096], ino=dino).status == -errno.ENAMETOOLONG
    assert fs.ok(Op.SYMLINK, [b"l", b"x" * 4095], ino=dino)


def test_mknod(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    fs.ok(Op.MKNOD, [b"fifo", stat.S_IFIFO | 0o666, 0], ino=dino, umask=0o022)
    assert stat.S_ISFIFO(os.lstat(path / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(path / "fifo").st_mode) == 0o644
    fs.ok(Op.MKNOD, [b"sock", stat.S_IFSOCK | 0o600, 0], ino=dino)
    assert stat.S_ISSOCK(os.lstat(path / "sock").st_mode)
    fs.ok(Op.MKNOD, [b"reg", 0o600, 0], ino=dino)
    assert stat.S_ISREG(os.lstat(path / "reg").st_mode)
    reply = fs.ok(Op.MKNOD, [b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3)], ino=dino)
    assert reply.body[0][A["rdev"]] == os.makedev(1, 3)
    assert stat.S_ISCHR(os.lstat(path / "null").st_mode)
    assert fs.call(Op.MKNOD, [b"fifo", stat.S_IFIFO | 0o666, 0], ino=dino).status == -errno.EEXIST
    assert fs.call(Op.MKNOD, [b"d", stat.S_IFDIR | 0o777, 0], ino=dino).status == -errno.EINVAL
    # special files are never opened by the server
    fifo = entry_ino(fs.lookup(dino, b"fifo"))
    assert fs.open(fifo, os.O_RDONLY).status == -errno.ENXIO
    assert fs.open(entry_ino(fs.lookup(dino, b"null"))).status == -errno.ENXIO


def test_mkdir_rmdir_unlink(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    reply = fs.mkdir(dino, b"d", 0o777, umask=0o027)
    assert reply.status == 0 and reply.body[0][A["mode"]] == stat.S_IFDIR | 0o750
    assert fs.mkdir(dino, b"d").status == -errno.EEXIST
    d = entry_ino(reply)
    assert fs.getattr(dino)[A["nlink"]] == 3
    fs.ok(Op.CREATE, [b"inner", 0o644, os.O_RDWR], ino=d)
    assert fs.call(Op.RMDIR, [b"d"], ino=dino).status == -errno.ENOTEMPTY
    assert fs.call(Op.UNLINK, [b"d"], ino=dino).status == -errno.EISDIR
    assert fs.call(Op.RMDIR, [b"inner"], ino=d).status == -errno.ENOTDIR
    assert fs.call(Op.RMDIR, [b"nothing"], ino=dino).status == -errno.ENOENT
    assert fs.call(Op.UNLINK, [b"nothing"], ino=dino).status == -errno.ENOENT
    fs.ok(Op.UNLINK, [b"inner"], ino=d)
    fs.ok(Op.RMDIR, [b"d"], ino=dino)
    assert not (path / "d").exists()
    assert fs.getattr(d)[A["nlink"]] == 0  # still held, now unlinked
    assert fs.call(Op.CREATE, [b"x", 0o644, os.O_RDWR], ino=d).status == -errno.ENOENT
    # mkdir keeps the sticky bit, drops file-type bits
    reply = fs.mkdir(dino, b"sticky", 0o1777)
    assert reply.body[0][A["mode"]] == stat.S_IFDIR | 0o1777


def test_deep_paths(fs: FS, work: tuple[Path, int]) -> None:
    _path, ino = work
    for _ in range(150):  # deeper than PATH_MAX allows as a path string
        ino = entry_ino(fs.mkdir(ino, b"d" * 40))
    fh = fs.create(ino, b"leaf").value
    fs.ok(Op.WRITE, data=b"deep", fh=fh)
    assert fs.ok(Op.READ, fh=fh, read_size=10).data == b"deep"
    fs.ok(Op.RELEASE, fh=fh)


def test_rename(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    for name in ("a", "b"):
        (path / name).write_text(name)
    (path / "dir").mkdir()
    (path / "full").mkdir()
    (path / "full" / "x").write_text("x")
    sub = fs.ino(path.name.encode() + b"/dir")

    def rename(old: bytes, new: bytes, flags: int = 0, new_parent: int = dino) -> int:
        return fs.call(Op.RENAME, [old, new_parent, new, flags], ino=dino).status

    assert rename(b"a", b"c") == 0 and (path / "c").read_text() == "a"
    assert rename(b"c", b"b", RENAME_NOREPLACE) == -errno.EEXIST
    assert rename(b"c", b"b", RENAME_EXCHANGE) == 0
    assert (path / "c").read_text() == "b" and (path / "b").read_text() == "a"
    assert rename(b"c", b"nothing", RENAME_EXCHANGE) == -errno.ENOENT
    assert rename(b"c", b"moved", new_parent=sub) == 0 and (path / "dir" / "moved").exists()
    assert rename(b"b", b"dir") == -errno.EISDIR
    assert rename(b"dir", b"b") == -errno.ENOTDIR
    assert rename(b"dir", b"full") == -errno.ENOTEMPTY
    assert rename(b"missing", b"x") == -errno.ENOENT
    assert rename(b"dir", b"inside", new_parent=sub) == -errno.EINVAL  # into itself
    assert rename(b"b", b"c", RENAME_NOREPLACE) == 0
    file_ino = entry_ino(fs.lookup(dino, b"c"))
    assert fs.call(Op.RENAME, [b"x", file_ino, b"y", 0], ino=dino).status == -errno.ENOTDIR


def test_rename_across_file_systems_is_exdev(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "mnt").mkdir()
    (path / "f").write_text("f")
    subprocess_run(["mount", "-t", "tmpfs", "ringfs-test", str(path / "mnt")])
    try:
        mnt = entry_ino(fs.lookup(dino, b"mnt"))
        assert fs.getattr(mnt)[A["ino"]] == mnt
        assert fs.call(Op.RENAME, [b"f", mnt, b"f", 0], ino=dino).status == -errno.EXDEV
        f = entry_ino(fs.lookup(dino, b"f"))
        assert fs.call(Op.LINK, [mnt, b"f"], ino=f).status == -errno.EXDEV
        fs.ok(Op.FORGET, [1], ino=mnt)
    finally:
        subprocess_run(["umount", str(path / "mnt")])


def subprocess_run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=True, timeout=30)


def test_link(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    f = entry_ino(fs.create(dino, b"f"))
    reply = fs.ok(Op.LINK, [dino, b"g"], ino=f)
    assert entry_ino(reply) == f and reply.body[0][A["nlink"]] == 2
    assert os.lstat(path / "g").st_ino == os.lstat(path / "f").st_ino
    assert fs.call(Op.LINK, [dino, b"g"], ino=f).status == -errno.EEXIST
    assert fs.call(Op.LINK, [dino, b"dirlink"], ino=dino).status == -errno.EPERM
    # a symlink is linked as itself, not its target
    s = entry_ino(fs.ok(Op.SYMLINK, [b"s", b"/etc/passwd"], ino=dino))
    fs.ok(Op.LINK, [dino, b"s2"], ino=s)
    assert os.readlink(path / "s2") == "/etc/passwd"
    assert os.lstat(path / "s2").st_ino == os.lstat(path / "s").st_ino
    fs.ok(Op.UNLINK, [b"g"], ino=dino)
    assert fs.getattr(f)[A["nlink"]] == 1


# -- files ------------------------------------------------------------------------------------
def test_create_open_read_write(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    reply = fs.create(dino, b"f", 0o666, os.O_RDWR, umask=0o022)
    ino, fh = entry_ino(reply), reply.value
    assert reply.body[0][A["mode"]] == stat.S_IFREG | 0o644
    assert fs.write(fh, b"hello world").value == 11
    assert fs.read(fh, 5, 6).data == b"world"
    assert fs.read(fh, 100, 11).data == b""  # at EOF
    assert fs.read(fh, 0).status == 0
    # sparse: a write far beyond the end
    fs.ok(Op.WRITE, data=b"end", fh=fh, offset=1 << 30)
    assert fs.getattr(ino)[A["size"]] == (1 << 30) + 3
    assert fs.read(fh, 4, 100).data == b"\0" * 4
    fs.ok(Op.RELEASE, fh=fh)
    assert fs.read(fh, 4).status == -errno.EBADF
    # O_EXCL, O_TRUNC, O_APPEND, read-only handles
    assert fs.create(dino, b"f", flags=os.O_RDWR | os.O_EXCL).status == -errno.EEXIST
    fh = fs.ok(Op.OPEN, [os.O_WRONLY | os.O_TRUNC], ino=ino).value
    assert fs.getattr(ino)[A["size"]] == 0
    assert fs.read(fh, 10).status == -errno.EBADF
    fs.ok(Op.RELEASE, fh=fh)
    fh = fs.ok(Op.OPEN, [os.O_WRONLY | os.O_APPEND], ino=ino).value
    fs.write(fh, b"one")
    fs.write(fh, b"two", offset=0)  # O_APPEND: the offset is ignored, as pwrite on Linux does
    assert (path / "f").read_bytes() == b"onetwo"
    fs.ok(Op.RELEASE, fh=fh)
    fh = fs.ok(Op.OPEN, [os.O_RDONLY], ino=ino).value
    assert fs.write(fh, b"x").status == -errno.EBADF
    assert fs.read(fh, 100).data == b"onetwo"
    fs.ok(Op.RELEASE, fh=fh)
    # CREATE without O_EXCL opens an existing file
    reply = fs.create(dino, b"f", flags=os.O_RDONLY)
    assert entry_ino(reply) == ino
    fs.ok(Op.RELEASE, fh=reply.value)


def test_open_errors(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    assert fs.open(dino, os.O_WRONLY).status == -errno.EISDIR
    fh = fs.ok(Op.OPEN, [os.O_RDONLY], ino=dino).value
    assert fs.read(fh, 10).status == -errno.EISDIR
    fs.ok(Op.RELEASE, fh=fh)
    os.symlink("/etc/passwd", path / "s")
    assert fs.open(entry_ino(fs.lookup(dino, b"s")), os.O_RDONLY).status == -errno.ELOOP
    assert fs.create(dino, b"s", flags=os.O_RDWR).status == -errno.ELOOP
    f = entry_ino(fs.create(dino, b"f"))
    assert fs.open(f, os.O_RDONLY | os.O_DIRECTORY).status == -errno.ENOTDIR
    assert fs.create(f, b"x").status == -errno.ENOTDIR


def test_large_read_write_use_the_buffer(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    fh = fs.create(dino, b"big").value
    blob = os.urandom(1 << 20)
    for i in range(4):  # 1 MiB writes run in worker threads
        assert fs.write(fh, blob, offset=i << 20).value == 1 << 20
    assert (path / "big").stat().st_size == 4 << 20
    for i in range(4):
        assert fs.read(fh, 1 << 20, offset=i << 20).data == blob
    assert fs.read(fh, 300_000, offset=(4 << 20) - 1000).data == blob[-1000:]
    fs.ok(Op.FSYNC, fh=fh)
    fs.ok(Op.FSYNC, fh=fh, flags=1)
    fs.ok(Op.FLUSH, fh=fh)
    fs.ok(Op.RELEASE, fh=fh)


def test_fallocate(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    fh = fs.create(dino, b"f").value
    fs.ok(Op.FALLOCATE, [0], fh=fh, offset=0, size=1 << 20)
    st = os.lstat(path / "f")
    assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 1 << 20
    fs.ok(Op.FALLOCATE, [1], fh=fh, offset=1 << 20, size=1 << 20)  # FALLOC_FL_KEEP_SIZE
    assert os.lstat(path / "f").st_size == 1 << 20
    fs.write(fh, b"x" * 8192)
    fs.ok(Op.FALLOCATE, [3], fh=fh, offset=0, size=4096)  # PUNCH_HOLE | KEEP_SIZE
    assert (path / "f").read_bytes()[:8192] == b"\0" * 4096 + b"x" * 4096
    fs.ok(Op.FALLOCATE, [0, 5 << 30], fh=fh, offset=0)  # a length beyond 32 bits, in the body
    assert os.lstat(path / "f").st_size == 5 << 30
    assert fs.call(Op.FALLOCATE, [0x40000], fh=fh, offset=0, size=1).status == -errno.EOPNOTSUPP
    fs.ok(Op.RELEASE, fh=fh)
    ro = fs.ok(Op.OPEN, [os.O_RDONLY], ino=entry_ino(fs.lookup(dino, b"f"))).value
    assert fs.call(Op.FALLOCATE, [0], fh=ro, offset=0, size=1).status == -errno.EBADF
    fs.ok(Op.RELEASE, fh=ro)


def test_locks_are_left_to_the_kernel(fs: FS, work: tuple[Path, int]) -> None:
    _path, dino = work
    fh = fs.create(dino, b"f").value
    for opcode in (Op.GETLK, Op.SETLK, Op.FLOCK):
        assert fs.call(opcode, [1], fh=fh).status == -errno.ENOSYS
    fs.ok(Op.RELEASE, fh=fh)


# -- directories ------------------------------------------------------------------------------
def test_readdir_lists_everything_with_attributes(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    names = {f"entry-{i:04d}".encode() for i in range(500)}
    for name in names:
        (path / name.decode()).write_bytes(name)
    (path / "sub").mkdir()
    os.symlink("/", path / "root-link")
    entries = fs.readdir_all(dino, page=4096)  # many small pages; the first one is threaded
    seen = [name for name, _attr, _off in entries]
    assert sorted(seen) == sorted([*names, b"sub", b"root-link"])
    assert b"." not in seen and b".." not in seen
    offsets = [off for _n, _a, off in entries]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    for name, attr, _off in entries:
        st = os.lstat(path / name.decode())
        assert attr[A["mode"]] == st.st_mode and attr[A["size"]] == st.st_size
        # each entry counted a lookup: the inode is usable, and a forget of it frees it
        assert fs.getattr(attr[0]) == attr or name == b"sub"  # (sub's atime may move)
    fs.ok(Op.BATCH_FORGET, [[attr[0], 1] for _n, attr, _o in entries])


def test_readdir_offsets_survive_changes(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    for i in range(300):
        (path / f"f{i:03d}").write_text("x")
    fh = fs.ok(Op.OPENDIR, ino=dino).value
    first = unpack_body(fs.ok(Op.READDIR, fh=fh, offset=0, read_size=8192).data)
    assert 0 < len(first) < 300
    got = {name for name, _a, _o in first}
    # change the directory behind the reader's back: remove entries not yet seen, add others
    unseen = sorted({f"f{i:03d}".encode() for i in range(300)} - got)
    removed = set(unseen[::3])
    for name in removed:
        (path / name.decode()).unlink()
    for i in range(50):
        (path / f"new{i}").write_text("y")
    offset = first[-1][2]
    rest: list[bytes] = []
    while True:
        page = unpack_body(fs.ok(Op.READDIR, fh=fh, offset=offset, read_size=8192).data)
        if not page:
            break
        rest.extend(name for name, _a, _o in page)
        offset = page[-1][2]
    assert not got & set(rest), "an entry was returned twice"
    expected = {f"f{i:03d}".encode() for i in range(300)} - removed
    assert (got | set(rest)) >= expected  # every surviving entry, exactly once
    assert not removed & set(rest)
    # an offset handed out earlier is still valid
    again = unpack_body(fs.ok(Op.READDIR, fh=fh, offset=first[0][2], read_size=8192).data)
    assert again[0][0] == first[1][0]
    # offset 0 rewinds: the new entries appear
    names = []
    offset = 0
    while True:
        page = unpack_body(fs.ok(Op.READDIR, fh=fh, offset=offset, read_size=65536).data)
        if not page:
            break
        names.extend(n for n, _a, _o in page)
        offset = page[-1][2]
    assert set(names) == {p.name.encode() for p in path.iterdir()}
    fs.ok(Op.FSYNCDIR, fh=fh)
    fs.ok(Op.FSYNCDIR, fh=fh, flags=1)
    fs.ok(Op.RELEASEDIR, fh=fh)
    assert fs.call(Op.READDIR, fh=fh, read_size=4096).status == -errno.EBADF


def test_readdir_errors(fs: FS, work: tuple[Path, int]) -> None:
    _path, dino = work
    reply = fs.create(dino, b"f")
    assert fs.call(Op.OPENDIR, ino=entry_ino(reply)).status == -errno.ENOTDIR
    assert fs.call(Op.READDIR, fh=reply.value, read_size=4096).status == -errno.ENOTDIR
    fs.ok(Op.RELEASE, fh=reply.value)
    fh = fs.ok(Op.OPENDIR, ino=dino).value
    assert fs.call(Op.READDIR, fh=fh).status == -errno.EINVAL  # no output buffer
    assert fs.call(Op.READDIR, fh=fh, read_size=16).status == -errno.EINVAL  # too small
    assert fs.call(Op.READDIR, fh=fh, offset=10_000, read_size=4096).body == [0, True]
    fs.ok(Op.RELEASEDIR, fh=fh)


def test_statfs(fs: FS, server: ServerProcess) -> None:
    body = fs.ok(Op.STATFS, ino=ROOT_INO).body
    sv = os.statvfs(server.export)
    assert body["f_bsize"] == sv.f_bsize and body["f_blocks"] == sv.f_blocks
    assert body["f_namemax"] == NAME_MAX and body["f_files"] == sv.f_files


def test_access(fs: FS, work: tuple[Path, int]) -> None:
    _path, dino = work
    ino = entry_ino(fs.create(dino, b"f", 0o644))
    fs.ok(Op.ACCESS, [os.F_OK], ino=ino)
    fs.ok(Op.ACCESS, [os.R_OK | os.W_OK], ino=ino)
    assert fs.call(Op.ACCESS, [os.X_OK], ino=ino).status == -errno.EACCES  # even for root
    fs.ok(Op.ACCESS, [os.X_OK], ino=dino)


# -- extended attributes ----------------------------------------------------------------------
def test_xattrs(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    ino = entry_ino(fs.create(dino, b"f"))
    fs.ok(Op.SETXATTR, [b"user.colour", 0], ino=ino, data=b"blue")
    assert os.getxattr(path / "f", "user.colour") == b"blue"
    assert fs.ok(Op.GETXATTR, [b"user.colour"], ino=ino).value == 4  # size 0: the length
    reply = fs.ok(Op.GETXATTR, [b"user.colour"], ino=ino, read_size=100)
    assert reply.data == b"blue" and reply.value == 4
    assert fs.call(Op.GETXATTR, [b"user.colour"], ino=ino, read_size=2).status == -errno.ERANGE
    assert fs.call(Op.GETXATTR, [b"user.none"], ino=ino, read_size=10).status == -errno.ENODATA
    assert fs.call(Op.SETXATTR, [b"user.colour", 1], ino=ino, data=b"x").status == -errno.EEXIST
    assert fs.call(Op.SETXATTR, [b"user.new", 2], ino=ino, data=b"x").status == -errno.ENODATA
    fs.ok(Op.SETXATTR, [b"user.empty", 0], ino=ino, data=b"")
    fs.ok(Op.SETXATTR, [b"trusted.t", 0], ino=ino, data=b"root may")
    listing = fs.ok(Op.LISTXATTR, ino=ino, read_size=1000).data
    assert listing is not None
    assert set(listing.split(b"\0")[:-1]) >= {b"user.colour", b"user.empty", b"trusted.t"}
    assert fs.ok(Op.LISTXATTR, ino=ino).value == len(listing)
    assert fs.call(Op.LISTXATTR, ino=ino, read_size=3).status == -errno.ERANGE
    fs.ok(Op.REMOVEXATTR, [b"user.colour"], ino=ino)
    assert fs.call(Op.REMOVEXATTR, [b"user.colour"], ino=ino).status == -errno.ENODATA
    long = b"user." + b"n" * 251
    assert fs.call(Op.SETXATTR, [long, 0], ino=ino, data=b"v").status == -errno.ERANGE
    assert fs.call(Op.GETXATTR, [b""], ino=ino).status == -errno.ERANGE
    assert fs.call(Op.GETXATTR, [b"nonamespace"], ino=ino).status == -errno.EOPNOTSUPP
    os.symlink("f", path / "s")
    sino = entry_ino(fs.lookup(dino, b"s"))
    assert fs.call(Op.GETXATTR, [b"user.colour"], ino=sino).status == -errno.EOPNOTSUPP
