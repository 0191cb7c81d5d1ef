"""The inode table on a real file system: identity by file handle or by name, the bounded
descriptor cache, pins, and what happens when objects change behind the server's back.

Both identities are tested: `handles=True` (what a root server on ext4/tmpfs uses) and
`handles=False` (what a server gets where handles are unsupported or not allowed, as for a
server that is not root; the last test runs such a server for real).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend_server.inodes import InodeTable
from backend_server.session import Session
from channel.protocol.opcodes import Op
from tests.support.server_harness import ServerProcess

CACHE = 8
FILES = 64


@pytest.fixture(params=[True, False], ids=["handles", "names"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InodeTable]:
    (tmp_path / "d").mkdir()
    for i in range(FILES):
        (tmp_path / "d" / f"f{i}").write_bytes(b"x" * i)
    table = InodeTable(str(tmp_path), handles=request.param, fd_cache=CACHE)
    assert table.handles is request.param  # root on a local file system: handles work
    try:
        yield table
    finally:
        table.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _entries(table: InodeTable, session: Session) -> tuple[int, list[int]]:
    """Look up d (its number) and each of its files, the way READDIR counts them."""
    d = table.register_entry(session, table.root, table.root.fd, b"d")
    assert d is not None
    directory = table.get(session, d[0].number, pin=True)
    numbers = []
    for i in range(FILES):
        found = table.register_entry(session, directory, directory.fd, f"f{i}".encode())
        assert found is not None
        numbers.append(found[0].number)
    table.unpin([directory])
    return directory.number, numbers


def test_descriptors_are_opened_on_demand_and_bounded(table: InodeTable) -> None:
    session = Session(None, None)
    before = _fds()
    _d, numbers = _entries(table, session)
    for _round in range(2):
        for i, number in enumerate(numbers):
            inode = table.get(session, number, pin=True)
            try:
                assert os.fstat(inode.fd).st_size == i  # the very file, found again
            finally:
                table.unpin([inode])
            assert table.cached_fds <= CACHE
    assert _fds() - before <= CACHE
    table.release_session(session)
    assert len(table) == 1 and table.cached_fds <= 1  # the directory may stay cached
    assert _fds() - before <= 1


def test_a_pinned_descriptor_is_never_closed(table: InodeTable) -> None:
    session = Session(None, None)
    _d, numbers = _entries(table, session)
    pinned = table.get(session, numbers[0], pin=True)
    fd = pinned.fd
    for number in numbers[1:]:
        other = table.get(session, number, pin=True)
        assert other.fd != fd
        table.unpin([other])
    assert pinned.fd == fd and os.fstat(fd).st_size == 0  # still open, still the file
    table.unpin([pinned])
    for number in numbers[1 : CACHE + 2]:
        other = table.get(session, number, pin=True)
        assert other.fd >= 0
        table.unpin([other])
    assert pinned._fd == -1  # evicted once unpinned


def test_numbers_are_stable_across_forget(table: InodeTable) -> None:
    session = Session(None, None)
    _d, numbers = _entries(table, session)
    table.release_session(session)
    again = Session(None, None)
    assert _entries(table, again)[1] == numbers


def test_a_file_gone_behind_the_servers_back_is_stale(table: InodeTable, tmp_path: Path) -> None:
    session = Session(None, None)
    _d, numbers = _entries(table, session)
    (tmp_path / "d" / "f1").unlink()
    (tmp_path / "d" / "f2").unlink()
    (tmp_path / "d" / "f2").mkdir()  # another object under the same name, of another type
    for number in numbers[3:]:  # evict f1's and f2's descriptors, if they were cached
        table.fd_of(table.get(session, number))
    for number in numbers[1:3]:
        inode = table.get(session, number, pin=True)
        with pytest.raises(OSError) as caught:
            inode.fd  # noqa: B018 (the property opens it)
        assert caught.value.errno == errno.ESTALE
        table.unpin([inode])


def test_renamed_through_the_server_stays_found(table: InodeTable, tmp_path: Path) -> None:
    session = Session(None, None)
    d, numbers = _entries(table, session)
    directory = table.get(session, d, pin=True)
    os.rename(b"f5", b"moved", src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
    table.renamed(directory, b"moved")
    table.unpin([directory])
    for number in numbers[6:]:  # evict f5's descriptor
        table.fd_of(table.get(session, number))
    inode = table.get(session, numbers[5], pin=True)
    assert os.fstat(inode.fd).st_size == 5
    table.unpin([inode])


def test_a_server_that_is_not_root_finds_inodes_by_name() -> None:
    """No CAP_DAC_READ_SEARCH, no file handles: inodes are found again by name, and the
    server's descriptors stay bounded all the same (its cache holds 1,024 at most)."""
    owner = 4243
    files = 1500
    base = Path(tempfile.mkdtemp(prefix="ringfs-names-"))  # pytest's tmp_path is root's 0700
    export = base / "export"
    (export / "d").mkdir(parents=True)
    for i in range(files):
        (export / "d" / f"f{i}").write_bytes(b"x" * (i % 7))
    for path in [base, export, export / "d", *(export / "d").iterdir()]:
        os.chown(path, owner, owner)
    try:
        with (
            ServerProcess(export, base / "sock", user=(owner, owner)) as srv,
            srv.client() as client,
        ):
            d = client.call(Op.LOOKUP, [b"d"], ino=1).body[0][0]
            numbers = []
            for i in range(files):
                reply = client.call(Op.LOOKUP, [f"f{i}".encode()], ino=d)
                assert reply.status == 0
                numbers.append(reply.body[0][0])
            assert srv.fd_count() < 1024 + 64
            rename = [b"f3", d, b"renamed", 0]
            assert client.call(Op.RENAME, rename, ino=d).status == 0
            for i, number in enumerate(numbers):  # each one reopened by name
                reply = client.call(Op.GETATTR, ino=number)
                assert reply.status == 0 and reply.body[6] == i % 7, (i, reply)
            assert srv.fd_count() < 1024 + 64
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_out_of_descriptors_the_cache_gives_its_own_back(table: InodeTable) -> None:
    """At RLIMIT_NOFILE, an open through `opening` first takes the cache's descriptors
    (pinned ones excepted); only then does EMFILE stand."""
    session = Session(None, None)
    _d, numbers = _entries(table, session)
    for number in numbers:
        table.fd_of(table.get(session, number))
    assert table.cached_fds == CACHE
    pinned = table.get(session, numbers[-1], pin=True)
    pinned_fd = pinned.fd
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    opened: list[int] = []
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))) + 1, hard)
    )
    try:
        with pytest.raises(OSError) as caught:
            while True:
                opened.append(table.opening(os.open, "/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in opened:
            os.close(fd)
    assert caught.value.errno == errno.EMFILE
    assert len(opened) >= CACHE - 1  # the unpinned cached descriptors, given back
    assert table.cached_fds == 1 and pinned.fd == pinned_fd  # the pinned one stayed
    os.fstat(pinned_fd)
    table.unpin([pinned])
