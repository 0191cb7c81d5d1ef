"""The filesystem server's operations, driven through the channel's blocking client alone.

A real server process (`tests.server_harness`, the real `backend_server.Backend` behind the
real poller) serves a temporary export; the tests talk to it with `BlockingClient` (as root,
in this process) and `UserClient` (a child that dropped to uid 65534 before its handshake),
and check the results both in replies and on the export directory itself.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channel.protocol.codec import unpack_body
from channel.protocol.limits import NAME_MAX
from channel.protocol.opcodes import ATTR_FIELDS, ROOT_INO, Op
from channel.transport.calls import Reply
from channel.transport.shm_client import BlockingClient
from tests.server_harness import ServerProcess, UserClient, wait_until

NOBODY = 65534
A = {name: i for i, name in enumerate(ATTR_FIELDS)}
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


# -- fixtures -------------------------------------------------------------------------------
def _world_dir(prefix: str) -> Path:
    """A directory every uid can search (pytest's own tmp dirs are 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    base = _world_dir("ringfs-ops-")
    export = base / "export"
    export.mkdir(mode=0o755)
    export.chmod(0o755)
    try:
        with ServerProcess(export, base / "sock") as srv:
            yield srv
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_server() -> Iterator[ServerProcess]:
    """A server of its own, for tests that count the server's descriptors."""
    base = _world_dir("ringfs-fresh-")
    export = base / "export"
    export.mkdir(mode=0o755)
    try:
        with ServerProcess(export, base / "sock") as srv:
            yield srv
    finally:
        shutil.rmtree(base, ignore_errors=True)


class FS:
    """Thin helpers over a client: each returns the Reply; `*_ok` variants check it."""

    def __init__(self, client: Any, **ident: int) -> None:
        self.client = client
        self.ident = ident

    def call(self, opcode: int, body: Any = None, **kw: Any) -> Reply:
        reply: Reply = self.client.call(opcode, body, **{**self.ident, **kw})
        return reply

    def ok(self, opcode: int, body: Any = None, **kw: Any) -> Reply:
        reply = self.call(opcode, body, **kw)
        assert reply.status == 0, f"{Op(opcode).name} {body!r}: {os.strerror(-reply.status)}"
        return reply

    # names
    def lookup(self, parent: int, name: bytes) -> Reply:
        return self.call(Op.LOOKUP, [name], ino=parent)

    def ino(self, path: bytes, parent: int = ROOT_INO) -> int:
        for part in path.split(b"/"):
            parent = self.ok(Op.LOOKUP, [part], ino=parent).body[0][0]
        return parent

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, umask: int = 0) -> Reply:
        return self.call(Op.MKDIR, [name, mode], ino=parent, umask=umask)

    def create(
        self, parent: int, name: bytes, mode: int = 0o644, flags: int = os.O_RDWR, umask: int = 0
    ) -> Reply:
        return self.call(Op.CREATE, [name, mode, flags], ino=parent, umask=umask)

    def getattr(self, ino: int) -> list[int]:
        attr: list[int] = self.ok(Op.GETATTR, ino=ino).body
        return attr

    def open(self, ino: int, flags: int = os.O_RDWR) -> Reply:
        return self.call(Op.OPEN, [flags], ino=ino)

    def write(self, fh: int, data: bytes, offset: int = 0) -> Reply:
        return self.call(Op.WRITE, data=data, fh=fh, offset=offset)

    def read(self, fh: int, size: int, offset: int = 0) -> Reply:
        return self.call(Op.READ, fh=fh, offset=offset, read_size=size)

    def release(self, fh: int) -> Reply:
        return self.call(Op.RELEASE, fh=fh)

    def setattr(self, ino: int, fh: int = 0, **changes: Any) -> Reply:
        return self.call(Op.SETATTR, changes, ino=ino, fh=fh)

    def readdir_all(self, ino: int, page: int = 65536) -> list[tuple[bytes, list[int], int]]:
        fh = self.ok(Op.OPENDIR, ino=ino).value
        entries: list[tuple[bytes, list[int], int]] = []
        offset = 0
        try:
            while True:
                reply = self.ok(Op.READDIR, fh=fh, offset=offset, read_size=page)
                items = unpack_body(reply.data) if reply.data else []
                count, ends = reply.body
                assert count == len(items)
                entries.extend((n, a, o) for n, a, o in items)
                offset = items[-1][2] if items else offset
                if ends:  # and it is true: nothing follows
                    after = self.ok(Op.READDIR, fh=fh, offset=offset, read_size=page)
                    assert after.body == [0, True]
                    return entries
                assert items, "a page that does not end the listing must carry entries"
        finally:
            self.ok(Op.RELEASEDIR, fh=fh)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[BlockingClient]:
    c = server.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fs(client: BlockingClient) -> FS:
    return FS(client)


@pytest.fixture
def work(server: ServerProcess, fs: FS, request: pytest.FixtureRequest) -> tuple[Path, int]:
    """A fresh directory (0777) in the export for one test: its path and inode number."""
    name = request.node.name.replace("[", "_").replace("]", "_").encode()[:200]
    path = server.export / name.decode()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    path.chmod(0o777)
    return path, fs.ino(name)


def _entry_ino(reply: Reply) -> int:
    assert reply.status == 0, os.strerror(-reply.status)
    ino: int = reply.body[0][0]
    return ino


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
    a = _entry_ino(fs.lookup(dino, b"a"))
    b = _entry_ino(fs.lookup(dino, b"b"))
    assert a == b
    assert fs.getattr(a)[A["nlink"]] == 2


def test_inode_numbers_are_stable_across_forget(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "f").write_bytes(b"x")
    first = _entry_ino(fs.lookup(dino, b"f"))
    fs.ok(Op.FORGET, [1], ino=first)
    assert fs.call(Op.GETATTR, ino=first).status == -errno.ESTALE  # no reference held
    again = _entry_ino(fs.lookup(dino, b"f"))
    assert again == first


def test_lookup_counts_are_honoured(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "f").write_bytes(b"x")
    ino = _entry_ino(fs.lookup(dino, b"f"))
    _entry_ino(fs.lookup(dino, b"f"))
    _entry_ino(fs.lookup(dino, b"f"))
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
        inos = [_entry_ino(fs.lookup(ROOT_INO, f"f{i}".encode())) for i in range(20)]
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
    ino, fh = _entry_ino(reply), reply.value
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
    ino = _entry_ino(fs.create(dino, b"f", 0o644))
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
    ino, fh = _entry_ino(reply), reply.value
    fs.ok(Op.WRITE, data=b"abcdef", fh=fh)
    assert fs.ok(Op.SETATTR, {"size": 2}, ino=ino, fh=fh).body[A["size"]] == 2
    assert (path / "f").read_bytes() == b"ab"
    assert fs.setattr(dino, size=0).status == -errno.EISDIR
    os.symlink("f", path / "s")
    sino = _entry_ino(fs.lookup(dino, b"s"))
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
    assert fs.ok(Op.READLINK, ino=_entry_ino(reply)).body == [b"../some/where"]
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
    fifo = _entry_ino(fs.lookup(dino, b"fifo"))
    assert fs.open(fifo, os.O_RDONLY).status == -errno.ENXIO
    assert fs.open(_entry_ino(fs.lookup(dino, b"null"))).status == -errno.ENXIO


def test_mkdir_rmdir_unlink(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    reply = fs.mkdir(dino, b"d", 0o777, umask=0o027)
    assert reply.status == 0 and reply.body[0][A["mode"]] == stat.S_IFDIR | 0o750
    assert fs.mkdir(dino, b"d").status == -errno.EEXIST
    d = _entry_ino(reply)
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
        ino = _entry_ino(fs.mkdir(ino, b"d" * 40))
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
    file_ino = _entry_ino(fs.lookup(dino, b"c"))
    assert fs.call(Op.RENAME, [b"x", file_ino, b"y", 0], ino=dino).status == -errno.ENOTDIR


def test_rename_across_file_systems_is_exdev(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    (path / "mnt").mkdir()
    (path / "f").write_text("f")
    subprocess_run(["mount", "-t", "tmpfs", "ringfs-test", str(path / "mnt")])
    try:
        mnt = _entry_ino(fs.lookup(dino, b"mnt"))
        assert fs.getattr(mnt)[A["ino"]] == mnt
        assert fs.call(Op.RENAME, [b"f", mnt, b"f", 0], ino=dino).status == -errno.EXDEV
        f = _entry_ino(fs.lookup(dino, b"f"))
        assert fs.call(Op.LINK, [mnt, b"f"], ino=f).status == -errno.EXDEV
        fs.ok(Op.FORGET, [1], ino=mnt)
    finally:
        subprocess_run(["umount", str(path / "mnt")])


def subprocess_run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=True, timeout=30)


def test_link(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    f = _entry_ino(fs.create(dino, b"f"))
    reply = fs.ok(Op.LINK, [dino, b"g"], ino=f)
    assert _entry_ino(reply) == f and reply.body[0][A["nlink"]] == 2
    assert os.lstat(path / "g").st_ino == os.lstat(path / "f").st_ino
    assert fs.call(Op.LINK, [dino, b"g"], ino=f).status == -errno.EEXIST
    assert fs.call(Op.LINK, [dino, b"dirlink"], ino=dino).status == -errno.EPERM
    # a symlink is linked as itself, not its target
    s = _entry_ino(fs.ok(Op.SYMLINK, [b"s", b"/etc/passwd"], ino=dino))
    fs.ok(Op.LINK, [dino, b"s2"], ino=s)
    assert os.readlink(path / "s2") == "/etc/passwd"
    assert os.lstat(path / "s2").st_ino == os.lstat(path / "s").st_ino
    fs.ok(Op.UNLINK, [b"g"], ino=dino)
    assert fs.getattr(f)[A["nlink"]] == 1


# -- files ------------------------------------------------------------------------------------
def test_create_open_read_write(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    reply = fs.create(dino, b"f", 0o666, os.O_RDWR, umask=0o022)
    ino, fh = _entry_ino(reply), reply.value
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
    assert _entry_ino(reply) == ino
    fs.ok(Op.RELEASE, fh=reply.value)


def test_open_errors(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    assert fs.open(dino, os.O_WRONLY).status == -errno.EISDIR
    fh = fs.ok(Op.OPEN, [os.O_RDONLY], ino=dino).value
    assert fs.read(fh, 10).status == -errno.EISDIR
    fs.ok(Op.RELEASE, fh=fh)
    os.symlink("/etc/passwd", path / "s")
    assert fs.open(_entry_ino(fs.lookup(dino, b"s")), os.O_RDONLY).status == -errno.ELOOP
    assert fs.create(dino, b"s", flags=os.O_RDWR).status == -errno.ELOOP
    f = _entry_ino(fs.create(dino, b"f"))
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
    ro = fs.ok(Op.OPEN, [os.O_RDONLY], ino=_entry_ino(fs.lookup(dino, b"f"))).value
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
    assert fs.call(Op.OPENDIR, ino=_entry_ino(reply)).status == -errno.ENOTDIR
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
    ino = _entry_ino(fs.create(dino, b"f", 0o644))
    fs.ok(Op.ACCESS, [os.F_OK], ino=ino)
    fs.ok(Op.ACCESS, [os.R_OK | os.W_OK], ino=ino)
    assert fs.call(Op.ACCESS, [os.X_OK], ino=ino).status == -errno.EACCES  # even for root
    fs.ok(Op.ACCESS, [os.X_OK], ino=dino)


# -- extended attributes ----------------------------------------------------------------------
def test_xattrs(fs: FS, work: tuple[Path, int]) -> None:
    path, dino = work
    ino = _entry_ino(fs.create(dino, b"f"))
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
    sino = _entry_ino(fs.lookup(dino, b"s"))
    assert fs.call(Op.GETXATTR, [b"user.colour"], ino=sino).status == -errno.EOPNOTSUPP


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
    assert _entry_ino(fs.lookup(dino, longest)) > 0
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
    assert _entry_ino(fs.lookup(ROOT_INO, b"..")) == ROOT_INO
    assert _entry_ino(fs.lookup(ROOT_INO, b".")) == ROOT_INO
    sub = _entry_ino(fs.mkdir(dino, b"sub"))
    assert _entry_ino(fs.lookup(sub, b"..")) == dino
    assert _entry_ino(fs.lookup(sub, b".")) == sub
    assert _entry_ino(fs.lookup(dino, b"..")) == ROOT_INO
    # ".." of the root, repeatedly, is the root: nothing above the export is reachable
    ino = ROOT_INO
    for _ in range(5):
        ino = _entry_ino(fs.lookup(ino, b".."))
    assert ino == ROOT_INO
    assert fs.getattr(ROOT_INO)[A["ino"]] == ROOT_INO


def test_directory_moved_out_of_the_export(server: ServerProcess, fs: FS) -> None:
    outside = _world_dir("ringfs-outside-")
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
    escape = _entry_ino(reply)
    assert stat.S_ISLNK(reply.body[0][A["mode"]])
    assert fs.ok(Op.READLINK, ino=escape).body == [b"/"]
    assert fs.lookup(escape, b"etc").status == -errno.ENOTDIR
    assert fs.call(Op.OPENDIR, ino=escape).status == -errno.ENOTDIR
    assert fs.open(escape, os.O_RDONLY).status == -errno.ELOOP
    assert fs.mkdir(escape, b"x").status == -errno.ENOTDIR
    assert fs.create(escape, b"x").status == -errno.ENOTDIR
    assert fs.call(Op.RENAME, [b"x", escape, b"y", 0], ino=dino).status == -errno.ENOTDIR
    assert fs.call(Op.STATFS, ino=escape).status == 0
    passwd = _entry_ino(fs.lookup(dino, b"passwd"))
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


# -- permissions as a non-root caller ----------------------------------------------------------
@pytest.fixture(params=["app", "driver"])
def nobody(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[FS]:
    """uid 65534 two ways: an application channel of a process that dropped to 65534 before
    its handshake, and the (root) driver's channel with uid 65534 in the command header."""
    if request.param == "app":
        with UserClient(server.path, NOBODY, NOBODY) as uc:
            yield FS(uc)
    else:
        with server.client(role="driver") as c:
            yield FS(c, uid=NOBODY, gid=NOBODY, pid=0)


def test_permissions_of_a_non_root_caller(nobody: FS, server: ServerProcess) -> None:
    fs = nobody
    base = server.export / f"perm-{os.getpid()}-{time.monotonic_ns()}"
    base.mkdir(mode=0o755)
    (base / "private").mkdir(mode=0o700)
    (base / "private" / "secret").write_text("s")
    (base / "open").mkdir(mode=0o777)
    (base / "open").chmod(0o777)
    (base / "rootfile").write_text("root")
    (base / "rootfile").chmod(0o644)
    (base / "shadow").write_text("s")
    (base / "shadow").chmod(0o600)
    (base / "shared").write_text("s")
    (base / "shared").chmod(0o666)
    b = fs.ino(base.name.encode())
    # search permission: the 0700 directory cannot be entered
    priv = _entry_ino(fs.lookup(b, b"private"))
    assert fs.lookup(priv, b"secret").status == -errno.EACCES
    assert fs.call(Op.OPENDIR, ino=priv).status == -errno.EACCES
    # write permission on directories
    assert fs.create(b, b"new").status == -errno.EACCES
    assert fs.mkdir(b, b"new").status == -errno.EACCES
    assert fs.call(Op.UNLINK, [b"rootfile"], ino=b).status == -errno.EACCES
    assert fs.call(Op.SYMLINK, [b"l", b"x"], ino=b).status == -errno.EACCES
    assert fs.call(Op.RENAME, [b"rootfile", b, b"x", 0], ino=b).status == -errno.EACCES
    # open-time checks
    rootfile = _entry_ino(fs.lookup(b, b"rootfile"))
    shadow = _entry_ino(fs.lookup(b, b"shadow"))
    shared = _entry_ino(fs.lookup(b, b"shared"))
    assert fs.open(rootfile, os.O_WRONLY).status == -errno.EACCES
    assert fs.open(shadow, os.O_RDONLY).status == -errno.EACCES
    fh = fs.ok(Op.OPEN, [os.O_RDONLY], ino=rootfile).value
    assert fs.read(fh, 10).data == b"root"
    fs.ok(Op.RELEASE, fh=fh)
    # metadata: only the owner may chmod, chown away, or set explicit times
    assert fs.setattr(rootfile, mode=0o777).status == -errno.EPERM
    assert fs.setattr(shared, uid=NOBODY).status == -errno.EPERM
    assert fs.setattr(rootfile, mtime_ns=1).status == -errno.EPERM
    assert fs.setattr(rootfile, mtime_ns="now", atime_ns="now").status == -errno.EACCES
    fs.ok(Op.SETATTR, {"mtime_ns": "now", "atime_ns": "now"}, ino=shared)  # writable: allowed
    assert fs.setattr(rootfile, size=0).status == -errno.EACCES
    assert fs.call(Op.ACCESS, [os.W_OK], ino=rootfile).status == -errno.EACCES
    fs.ok(Op.ACCESS, [os.R_OK], ino=rootfile)
    assert fs.call(Op.ACCESS, [os.R_OK], ino=shadow).status == -errno.EACCES
    # hard links to files one can neither read nor write: protected_hardlinks
    openi = _entry_ino(fs.lookup(b, b"open"))
    assert fs.call(Op.LINK, [openi, b"l"], ino=shadow).status == -errno.EPERM
    # devices need CAP_MKNOD, which a non-root caller does not have
    mk = fs.call(Op.MKNOD, [b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3)], ino=openi)
    assert mk.status == -errno.EPERM
    # extended attributes: user.* follows file permissions; trusted.* is root's
    os.setxattr(base / "shared", "trusted.hidden", b"x")
    assert fs.call(Op.SETXATTR, [b"user.a", 0], ino=rootfile, data=b"v").status == -errno.EACCES
    fs.ok(Op.SETXATTR, [b"user.a", 0], ino=shared, data=b"v")
    assert fs.call(Op.SETXATTR, [b"trusted.a", 0], ino=shared, data=b"v").status == -errno.EPERM
    assert fs.call(Op.SETXATTR, [b"security.a", 0], ino=shared, data=b"v").status == -errno.EPERM
    assert fs.call(Op.GETXATTR, [b"trusted.hidden"], ino=shared).status == -errno.ENODATA
    assert fs.call(Op.REMOVEXATTR, [b"trusted.hidden"], ino=shared).status == -errno.EPERM
    listing = fs.ok(Op.LISTXATTR, ino=shared, read_size=1000).data or b""
    assert b"trusted.hidden" not in listing and b"user.a" in listing


def test_ownership_of_what_a_non_root_caller_creates(nobody: FS, server: ServerProcess) -> None:
    fs = nobody
    base = server.export / f"own-{os.getpid()}-{time.monotonic_ns()}"
    base.mkdir()
    base.chmod(0o777)
    (base / "setgid").mkdir()
    os.chown(base / "setgid", 0, 1234)
    (base / "setgid").chmod(0o2777)
    (base / "sticky").mkdir()
    (base / "sticky").chmod(0o1777)
    (base / "sticky" / "roots").write_text("r")
    (base / "sticky" / "roots").chmod(0o666)
    b = fs.ino(base.name.encode())
    reply = fs.create(b, b"file", 0o666, umask=0o022)
    attr = reply.body[0]
    assert (attr[A["uid"]], attr[A["gid"]]) == (NOBODY, NOBODY)
    assert attr[A["mode"]] == stat.S_IFREG | 0o644
    st = os.lstat(base / "file")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o644)
    for name, reply in (
        ("dir", fs.mkdir(b, b"dir", 0o777, umask=0o002)),
        ("link", fs.call(Op.SYMLINK, [b"link", b"file"], ino=b)),
        ("fifo", fs.call(Op.MKNOD, [b"fifo", stat.S_IFIFO | 0o666, 0], ino=b, umask=0o077)),
    ):
        assert reply.status == 0, name
        st = os.lstat(base / name)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name
    assert stat.S_IMODE(os.lstat(base / "dir").st_mode) == 0o775
    assert stat.S_IMODE(os.lstat(base / "fifo").st_mode) == 0o600
    # the owner may chmod and set explicit times; chown to others is still refused
    f = _entry_ino(fs.lookup(b, b"file"))
    fs.ok(Op.SETATTR, {"mode": 0o600, "mtime_ns": 7_000_000_000}, ino=f)
    assert os.lstat(base / "file").st_mtime_ns == 7_000_000_000
    assert fs.setattr(f, uid=0).status == -errno.EPERM
    assert fs.setattr(f, gid=0).status == -errno.EPERM
    # setgid directory: new entries take the directory's group; subdirectories stay setgid
    sg = _entry_ino(fs.lookup(b, b"setgid"))
    fs.ok(Op.CREATE, [b"f", 0o644, os.O_RDWR], ino=sg)
    assert os.lstat(base / "setgid" / "f").st_gid == 1234
    fs.ok(Op.MKDIR, [b"d", 0o755], ino=sg)
    st = os.lstat(base / "setgid" / "d")
    assert st.st_gid == 1234 and st.st_mode & stat.S_ISGID
    # sticky directory: others' files cannot be removed or renamed, one's own can
    sticky = _entry_ino(fs.lookup(b, b"sticky"))
    assert fs.call(Op.UNLINK, [b"roots"], ino=sticky).status == -errno.EPERM
    assert fs.call(Op.RENAME, [b"roots", sticky, b"x", 0], ino=sticky).status == -errno.EPERM
    fs.ok(Op.CREATE, [b"mine", 0o644, os.O_RDWR], ino=sticky)
    fs.ok(Op.UNLINK, [b"mine"], ino=sticky)


def test_write_and_chown_clear_setuid(nobody: FS, server: ServerProcess) -> None:
    fs = nobody
    base = server.export / f"suid-{os.getpid()}-{time.monotonic_ns()}"
    base.mkdir(mode=0o755)
    for name in ("small", "large"):
        (base / name).write_text("x")
        os.chown(base / name, 0, 0)
        (base / name).chmod(0o6777)  # setuid+setgid, world-writable
    b = fs.ino(base.name.encode())
    for name, size in (("small", 10), ("large", 512 * 1024)):  # inline and threaded writes
        ino = _entry_ino(fs.lookup(b, name.encode()))
        fh = fs.ok(Op.OPEN, [os.O_WRONLY], ino=ino).value
        assert fs.write(fh, b"y" * size).value == size
        fs.ok(Op.RELEASE, fh=fh)
        mode = stat.S_IMODE(os.lstat(base / name).st_mode)
        assert mode & (stat.S_ISUID | stat.S_ISGID) == 0, (name, oct(mode))
    # chown by a non-root owner clears setuid too
    mine = base / "mine"
    mine.write_text("m")
    os.chown(mine, NOBODY, NOBODY)
    mine.chmod(0o4755)
    ino = _entry_ino(fs.lookup(b, b"mine"))
    fs.ok(Op.SETATTR, {"uid": NOBODY, "gid": NOBODY}, ino=ino)
    assert os.lstat(mine).st_mode & stat.S_ISUID == 0


def test_write_acts_as_the_opener_and_only_a_writer_may_clear_setuid(
    nobody: FS, server: ServerProcess
) -> None:
    """The driver's WRITE carries no caller (uid 0 in its header): the server writes as the
    handle's opener, so the export clears setuid. The kernel's own request to clear the bits
    (a chmod by a non-owner) is granted for exactly those bits, to a caller who may write."""
    fs = nobody
    base = server.export / f"killpriv-{os.getpid()}-{time.monotonic_ns()}"
    base.mkdir(mode=0o755)
    modes = {"written": 0o4766, "writable": 0o4666, "sgid": 0o2666, "readonly": 0o4644}
    for name, mode in modes.items():
        (base / name).write_text("x")
        (base / name).chmod(mode)  # owned by root
    b = fs.ino(base.name.encode())
    ino = {name: _entry_ino(fs.lookup(b, name.encode())) for name in modes}

    def mode_of(name: str) -> int:
        return stat.S_IMODE(os.lstat(base / name).st_mode)

    fh = fs.ok(Op.OPEN, [os.O_WRONLY], ino=ino["written"]).value
    assert fs.call(Op.WRITE, data=b"y", fh=fh, offset=0, uid=0, gid=0).value == 1
    fs.ok(Op.RELEASE, fh=fh)
    assert mode_of("written") == 0o766
    # more than the bits a write clears, or bits added: the owner's business (EPERM)
    assert fs.setattr(ino["writable"], mode=0o066).status == -errno.EPERM
    assert fs.setattr(ino["writable"], mode=0o4667).status == -errno.EPERM
    assert fs.setattr(ino["readonly"], mode=0o644).status == -errno.EPERM  # may not write
    assert (mode_of("writable"), mode_of("readonly")) == (0o4666, 0o4644)
    fs.ok(Op.SETATTR, {"mode": 0o666}, ino=ino["writable"])
    fs.ok(Op.SETATTR, {"mode": 0o666}, ino=ino["sgid"])  # not in its group: a write clears it
    assert (mode_of("writable"), mode_of("sgid")) == (0o666, 0o666)


def test_supplementary_groups_count(server: ServerProcess) -> None:
    base = server.export / f"groups-{time.monotonic_ns()}"
    base.mkdir(mode=0o755)
    (base / "team").write_text("team only")
    os.chown(base / "team", 0, 4321)
    (base / "team").chmod(0o640)
    with UserClient(server.path, NOBODY, NOBODY, groups=(4321,)) as member:
        fs = FS(member)
        ino = _entry_ino(fs.lookup(fs.ino(base.name.encode()), b"team"))
        fh = fs.ok(Op.OPEN, [os.O_RDONLY], ino=ino).value
        assert fs.read(fh, 100).data == b"team only"
        # a driver channel reads the requester's groups from /proc/<pid>
        with server.client(role="driver") as drv:
            dfs = FS(drv, uid=NOBODY, gid=NOBODY, pid=member.pid)
            dino = _entry_ino(dfs.lookup(dfs.ino(base.name.encode()), b"team"))
            dfs.ok(Op.OPEN, [os.O_RDONLY], ino=dino)
            other = FS(drv, uid=NOBODY, gid=NOBODY, pid=0)  # no groups
            assert other.open(dino, os.O_RDONLY).status == -errno.EACCES
    with UserClient(server.path, NOBODY, NOBODY) as outsider:
        fs = FS(outsider)
        ino = _entry_ino(fs.lookup(fs.ino(base.name.encode()), b"team"))
        assert fs.open(ino, os.O_RDONLY).status == -errno.EACCES


def test_app_channel_ignores_header_identity(server: ServerProcess) -> None:
    base = server.export / f"hdr-{time.monotonic_ns()}"
    base.mkdir(mode=0o755)
    with UserClient(server.path, NOBODY, NOBODY) as uc:
        fs = FS(uc, uid=0, gid=0)  # claims root in the header: ignored
        assert fs.mkdir(fs.ino(base.name.encode()), b"x").status == -errno.EACCES
    # a non-root peer claiming the driver role is not believed either
    with UserClient(server.path, NOBODY, NOBODY, role="driver") as fake:
        fs = FS(fake, uid=0, gid=0)
        assert fs.mkdir(fs.ino(base.name.encode()), b"x").status == -errno.EACCES
    with server.client(role="driver") as drv:  # the real (root) driver is
        fs = FS(drv, uid=0, gid=0)
        fs.ok(Op.MKDIR, [b"x", 0o755], ino=fs.ino(base.name.encode()))


def test_identities_stay_apart_under_concurrency(server: ServerProcess) -> None:
    """Root and uid 65534 callers interleaved on one driver channel and on several, with
    inline operations (lookups) and worker-thread ones (READDIR of a big directory) in flight
    together: every answer must be the one its own caller deserves."""
    import threading

    base = server.export / f"iso-{time.monotonic_ns()}"
    base.mkdir()
    base.chmod(0o777)
    listable = base / "listable"  # others may read the names but not search: no attributes
    listable.mkdir()
    for i in range(300):  # more than one block of entries: READDIR runs in a worker thread
        (listable / f"an-entry-with-a-long-name-{i:04d}").write_text("x")
    listable.chmod(0o744)
    assert listable.stat().st_size > 4096
    (base / "private").mkdir(mode=0o700)
    (base / "private" / "f").write_text("x")
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with server.client(role="driver") as c:
                for step in range(40):
                    uid = NOBODY if (index + step) % 2 else 0
                    fs = FS(c, uid=uid, gid=uid, pid=0)
                    top = fs.ino(base.name.encode())
                    listing = _entry_ino(fs.lookup(top, b"listable"))
                    fh = fs.ok(Op.OPENDIR, ino=listing).value  # r is enough to open
                    page = fs.call(Op.READDIR, fh=fh, offset=0, read_size=65536)
                    if uid == 0:
                        assert page.status == 0 and page.body[0] > 16
                        entries = unpack_body(page.data)
                        fs.ok(Op.BATCH_FORGET, [[a[0], 1] for _n, a, _o in entries])
                    else:
                        assert page.status == -errno.EACCES, page
                    fs.ok(Op.RELEASEDIR, fh=fh)
                    private = _entry_ino(fs.lookup(top, b"private"))
                    status = fs.lookup(private, b"f").status
                    assert status == (0 if uid == 0 else -errno.EACCES), (uid, status)
                    created = fs.create(top, f"c{index}-{step}".encode())
                    assert created.body[0][A["uid"]] == uid
                    fs.ok(Op.RELEASE, fh=created.value)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    for path in base.glob("c*"):
        index, step = (int(x) for x in path.name[1:].split("-"))
        expected = NOBODY if (index + step) % 2 else 0
        assert path.stat().st_uid == expected, path.name


def test_a_slow_operation_does_not_stall_other_channels(server: ServerProcess) -> None:
    """A READDIR page of a big directory (hundreds of milliseconds of work, in a worker
    thread) is in flight on one channel while another channel's GETATTRs keep completing."""
    import threading

    big = server.export / f"big-{time.monotonic_ns()}"
    big.mkdir()
    for i in range(20_000):  # more than a 1 MiB page holds
        os.close(os.open(big / f"entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    slow_done = threading.Event()
    slow: dict[str, Any] = {}

    def page() -> None:
        with server.client() as c:
            fs = FS(c)
            fh = fs.ok(Op.OPENDIR, ino=fs.ino(big.name.encode())).value
            started = time.monotonic()
            reply = fs.ok(Op.READDIR, fh=fh, offset=0, read_size=1 << 20)
            slow.update(start=started, end=time.monotonic(), count=reply.body[0])
            slow_done.set()

    with server.client() as quick:
        qfs = FS(quick)
        qfs.ok(Op.NOP)
        stamps: list[float] = []
        thread = threading.Thread(target=page)
        thread.start()
        while not slow_done.is_set():
            qfs.ok(Op.GETATTR, ino=ROOT_INO)
            stamps.append(time.monotonic())
        thread.join(60)
    assert slow["count"] > 5_000
    during = [t for t in stamps if slow["start"] < t < slow["end"]]
    assert slow["end"] - slow["start"] > 0.05
    assert len(during) >= 20, (len(during), slow["end"] - slow["start"])
    shutil.rmtree(big)


def test_unprivileged_server_serves_only_its_own_user() -> None:
    """A server that is not root cannot act as anyone else: its own uid is served, root is
    served with the server's (lesser) rights, other users get EACCES."""
    owner = 4242
    base = _world_dir("ringfs-unpriv-")
    export = base / "export"
    export.mkdir()
    os.chown(export, owner, owner)
    (export / "roots-secret").write_text("s")
    (export / "roots-secret").chmod(0o600)
    os.chown(base, owner, owner)  # the server creates its socket here
    try:
        with ServerProcess(export, base / "sock", user=(owner, owner)) as srv:
            with srv.client() as root:  # uid 0: served as uid 4242
                fs = FS(root)
                made = fs.create(ROOT_INO, b"by-root", 0o644)
                assert (made.body[0][A["uid"]], made.body[0][A["gid"]]) == (owner, owner)
                secret = _entry_ino(fs.lookup(ROOT_INO, b"roots-secret"))
                assert fs.open(secret, os.O_RDONLY).status == -errno.EACCES
                assert fs.setattr(_entry_ino(made), uid=0).status == -errno.EPERM
            with UserClient(srv.path, owner, owner) as me:
                fs = FS(me)
                made = fs.call(Op.MKDIR, [b"mine", 0o777], ino=ROOT_INO, umask=0o022)
                assert made.status == 0 and made.body[0][A["mode"]] == stat.S_IFDIR | 0o755
                assert os.lstat(export / "mine").st_uid == owner
            with UserClient(srv.path, NOBODY, NOBODY) as stranger:
                fs = FS(stranger)
                assert fs.ok(Op.GETATTR, ino=ROOT_INO).body[0] == ROOT_INO
                assert fs.lookup(ROOT_INO, b"mine").status == -errno.EACCES
                assert fs.create(ROOT_INO, b"x").status == -errno.EACCES
                assert fs.call(Op.STATFS, ino=ROOT_INO).status == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- teardown ---------------------------------------------------------------------------------
def _use_everything(fs: FS, parent: int = ROOT_INO) -> None:
    """Take lookups, file handles and directory handles, and leave them all open."""
    d = _entry_ino(fs.mkdir(parent, f"t{time.monotonic_ns()}".encode(), 0o777))
    for i in range(10):
        fs.ok(Op.CREATE, [f"f{i}".encode(), 0o666, os.O_RDWR], ino=d)
    for _ in range(3):
        fs.ok(Op.OPENDIR, ino=d)
    fh = fs.ok(Op.OPENDIR, ino=d).value
    fs.ok(Op.READDIR, fh=fh, offset=0, read_size=65536)
    fs.ok(Op.LOOKUP, [b"f0"], ino=d)


def _baseline_after_warm_up(server: ServerProcess, uid: int = 0) -> int:
    """The server's descriptor count with no channel, checked to be the count it returns to
    after a first channel (which exercises every lazy path) has come and gone."""
    baseline = server.fd_count()
    with UserClient(server.path, uid, uid) as warm:
        _use_everything(FS(warm))
    server.wait_closed(warm.channel_id)
    wait_until(lambda: server.fd_count() == baseline, what="fds back after the warm-up")
    return baseline


def test_teardown_by_close_returns_fds_to_baseline(fresh_server: ServerProcess) -> None:
    baseline = _baseline_after_warm_up(fresh_server)
    for _ in range(3):
        clients = [fresh_server.client() for _ in range(3)]
        for c in clients:
            _use_everything(FS(c))
        assert fresh_server.fd_count() > baseline + 3 * 20
        for c in clients:
            c.close()
        wait_until(lambda: fresh_server.fd_count() == baseline, what="fds back to baseline")


def test_teardown_by_kill_returns_fds_to_baseline(fresh_server: ServerProcess) -> None:
    fresh_server.export.chmod(0o777)
    baseline = _baseline_after_warm_up(fresh_server, NOBODY)
    users = [UserClient(fresh_server.path, NOBODY, NOBODY) for _ in range(3)]
    try:
        for uc in users:
            _use_everything(FS(uc))
        assert fresh_server.fd_count() > baseline + 3 * 20
        for uc in users:
            uc.kill()  # SIGKILL: no goodbye, the server notices the socket's end
        for uc in users:
            fresh_server.wait_closed(uc.channel_id)
        wait_until(lambda: fresh_server.fd_count() == baseline, what="fds back to baseline")
    finally:
        for uc in users:
            uc.close()


def test_teardown_with_slow_operations_in_flight(fresh_server: ServerProcess) -> None:
    """A channel that ends while its fsyncs and large writes run in worker threads: the
    handles close when those finish, and the server stays healthy."""
    baseline = _baseline_after_warm_up(fresh_server)
    uc = UserClient(fresh_server.path, 0, 0)
    fs = FS(uc)
    fh = fs.create(ROOT_INO, b"slow").value
    blob = b"z" * (1 << 20)
    uc._conn.send((int(Op.WRITE), None, {"data": blob, "fh": fh, "offset": 0}))
    uc.kill()
    fresh_server.wait_closed(uc.channel_id)
    uc.close()
    wait_until(lambda: fresh_server.fd_count() == baseline, what="fds back to baseline")
    with fresh_server.client() as after:
        assert FS(after).ok(Op.NOP, [1]).body == [1]


def test_sigterm_exits_cleanly(fresh_server: ServerProcess) -> None:
    c = fresh_server.client()
    FS(c).ok(Op.NOP)
    assert fresh_server.terminate() == 0
    assert "stopped" in fresh_server.lines
    c.close()


# -- concurrency --------------------------------------------------------------------------------
def test_concurrent_clients_mixed_operations(server: ServerProcess) -> None:
    """8 client threads, each with its own channel, 1,000 mixed operations each, verifying
    every byte read back against what that thread wrote."""
    import random
    import threading

    base = server.export / f"conc-{time.monotonic_ns()}"
    base.mkdir(mode=0o777)
    errors: list[BaseException] = []
    done = [0] * 8

    def worker(index: int) -> None:
        rng = random.Random(index)
        try:
            with server.client() as c:
                fs = FS(c)
                top = fs.ino(base.name.encode())
                d = _entry_ino(fs.mkdir(top, f"w{index}".encode()))
                files: dict[bytes, tuple[int, int, bytearray]] = {}  # name -> ino, fh, content
                for step in range(1000):
                    op = rng.choice(
                        ["create", "write", "write", "read", "read", "getattr", "truncate",
                         "rename", "unlink", "readdir", "lookup", "fsync", "xattr"]
                    )  # fmt: skip
                    if op == "create" or not files:
                        name = f"f{step}".encode()
                        reply = fs.create(d, name, 0o644, os.O_RDWR)
                        files[name] = (_entry_ino(reply), reply.value, bytearray())
                        continue
                    name = rng.choice(sorted(files))
                    ino, fh, content = files[name]
                    if op == "write":
                        offset = rng.randrange(0, len(content) + 4096)
                        data = rng.randbytes(rng.choice([1, 100, 4096, 70_000, 300_000]))
                        assert fs.write(fh, data, offset).value == len(data)
                        if offset > len(content):
                            content.extend(bytes(offset - len(content)))
                        content[offset : offset + len(data)] = data
                    elif op == "read":
                        offset = rng.randrange(0, len(content) + 1)
                        size = rng.choice([1, 4096, 65536, 400_000])
                        got = fs.ok(Op.READ, fh=fh, offset=offset, read_size=size).data or b""
                        assert got == bytes(content[offset : offset + size])
                    elif op == "getattr":
                        assert fs.getattr(ino)[A["size"]] == len(content)
                    elif op == "truncate":
                        size = rng.randrange(0, len(content) + 10_000)
                        fs.ok(Op.SETATTR, {"size": size}, ino=ino, fh=fh)
                        if size < len(content):
                            del content[size:]
                        else:
                            content.extend(bytes(size - len(content)))
                    elif op == "rename":
                        new = name + b"r"
                        fs.ok(Op.RENAME, [name, d, new, RENAME_NOREPLACE], ino=d)
                        files[new] = files.pop(name)
                    elif op == "unlink":
                        fs.ok(Op.UNLINK, [name], ino=d)
                        fs.ok(Op.RELEASE, fh=fh)
                        fs.ok(Op.FORGET, [1], ino=ino)
                        del files[name]
                    elif op == "readdir":
                        names = {n for n, _a, _o in fs.readdir_all(d, page=8192)}
                        assert names == set(files)
                    elif op == "lookup":
                        assert _entry_ino(fs.lookup(d, name)) == ino
                        fs.ok(Op.FORGET, [1], ino=ino)
                    elif op == "fsync":
                        fs.ok(Op.FSYNC, fh=fh, flags=rng.randrange(2))
                    elif op == "xattr":
                        value = rng.randbytes(rng.randrange(1, 200))
                        fs.ok(Op.SETXATTR, [b"user.v", 0], ino=ino, data=value)
                        got = fs.ok(Op.GETXATTR, [b"user.v"], ino=ino, read_size=1000).data
                        assert got == value
                    done[index] += 1
                for name, (_ino, fh, content) in files.items():
                    assert (base / f"w{index}" / name.decode()).read_bytes() == bytes(content)
                    fs.ok(Op.RELEASE, fh=fh)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    assert all(not t.is_alive() for t in threads)


def test_server_socket_survives_garbage(server: ServerProcess) -> None:
    """A peer that connects and sends garbage is refused; the server serves on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(server.path))
        s.sendall(b"\x00\x00\x00\x05hello")
        s.settimeout(10)
        s.recv(1000)
    with server.client() as c:
        assert FS(c).ok(Op.NOP, [2]).body == [2]
