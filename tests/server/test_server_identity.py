"""The server acting as its callers: permissions and ownership of non-root callers, setuid
clearing, supplementary groups, application channels' fixed identity, concurrency of
identities, an unprivileged server.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest

from channel.protocol.codec import unpack_body
from channel.protocol.opcodes import ROOT_INO, Op
from tests.support.server_fs import (
    FS,
    NOBODY,
    A,
    entry_ino,
    run_workers,
    world_dir,
)
from tests.support.server_harness import ServerProcess, UserClient


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
    priv = entry_ino(fs.lookup(b, b"private"))
    assert fs.lookup(priv, b"secret").status == -errno.EACCES
    assert fs.call(Op.OPENDIR, ino=priv).status == -errno.EACCES
    # write permission on directories
    assert fs.create(b, b"new").status == -errno.EACCES
    assert fs.mkdir(b, b"new").status == -errno.EACCES
    assert fs.call(Op.UNLINK, [b"rootfile"], ino=b).status == -errno.EACCES
    assert fs.call(Op.SYMLINK, [b"l", b"x"], ino=b).status == -errno.EACCES
    assert fs.call(Op.RENAME, [b"rootfile", b, b"x", 0], ino=b).status == -errno.EACCES
    # open-time checks
    rootfile = entry_ino(fs.lookup(b, b"rootfile"))
    shadow = entry_ino(fs.lookup(b, b"shadow"))
    shared = entry_ino(fs.lookup(b, b"shared"))
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
    openi = entry_ino(fs.lookup(b, b"open"))
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
    f = entry_ino(fs.lookup(b, b"file"))
    fs.ok(Op.SETATTR, {"mode": 0o600, "mtime_ns": 7_000_000_000}, ino=f)
    assert os.lstat(base / "file").st_mtime_ns == 7_000_000_000
    assert fs.setattr(f, uid=0).status == -errno.EPERM
    assert fs.setattr(f, gid=0).status == -errno.EPERM
    # setgid directory: new entries take the directory's group; subdirectories stay setgid
    sg = entry_ino(fs.lookup(b, b"setgid"))
    fs.ok(Op.CREATE, [b"f", 0o644, os.O_RDWR], ino=sg)
    assert os.lstat(base / "setgid" / "f").st_gid == 1234
    fs.ok(Op.MKDIR, [b"d", 0o755], ino=sg)
    st = os.lstat(base / "setgid" / "d")
    assert st.st_gid == 1234 and st.st_mode & stat.S_ISGID
    # sticky directory: others' files cannot be removed or renamed, one's own can
    sticky = entry_ino(fs.lookup(b, b"sticky"))
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
        ino = entry_ino(fs.lookup(b, name.encode()))
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
    ino = entry_ino(fs.lookup(b, b"mine"))
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
    ino = {name: entry_ino(fs.lookup(b, name.encode())) for name in modes}

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
        ino = entry_ino(fs.lookup(fs.ino(base.name.encode()), b"team"))
        fh = fs.ok(Op.OPEN, [os.O_RDONLY], ino=ino).value
        assert fs.read(fh, 100).data == b"team only"
        # a driver channel reads the requester's groups from /proc/<pid>
        with server.client(role="driver") as drv:
            dfs = FS(drv, uid=NOBODY, gid=NOBODY, pid=member.pid)
            dino = entry_ino(dfs.lookup(dfs.ino(base.name.encode()), b"team"))
            dfs.ok(Op.OPEN, [os.O_RDONLY], ino=dino)
            other = FS(drv, uid=NOBODY, gid=NOBODY, pid=0)  # no groups
            assert other.open(dino, os.O_RDONLY).status == -errno.EACCES
    with UserClient(server.path, NOBODY, NOBODY) as outsider:
        fs = FS(outsider)
        ino = entry_ino(fs.lookup(fs.ino(base.name.encode()), b"team"))
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
                    listing = entry_ino(fs.lookup(top, b"listable"))
                    fh = fs.ok(Op.OPENDIR, ino=listing).value  # r is enough to open
                    page = fs.call(Op.READDIR, fh=fh, offset=0, read_size=65536)
                    if uid == 0:
                        assert page.status == 0 and page.body[0] > 16
                        entries = unpack_body(page.data)
                        fs.ok(Op.BATCH_FORGET, [[a[0], 1] for _n, a, _o in entries])
                    else:
                        assert page.status == -errno.EACCES, page
                    fs.ok(Op.RELEASEDIR, fh=fh)
                    private = entry_ino(fs.lookup(top, b"private"))
                    status = fs.lookup(private, b"f").status
                    assert status == (0 if uid == 0 else -errno.EACCES), (uid, status)
                    created = fs.create(top, f"c{index}-{step}".encode())
                    assert created.body[0][A["uid"]] == uid
                    fs.ok(Op.RELEASE, fh=created.value)
        except BaseException as exc:
            errors.append(exc)

    run_workers(worker, 6)
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
    base = world_dir("ringfs-unpriv-")
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
                secret = entry_ino(fs.lookup(ROOT_INO, b"roots-secret"))
                assert fs.open(secret, os.O_RDONLY).status == -errno.EACCES
                assert fs.setattr(entry_ino(made), uid=0).status == -errno.EPERM
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
