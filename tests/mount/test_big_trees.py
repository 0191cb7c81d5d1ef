"""Big directories through a real mount, with the server under small open-files limits.

The server holds no descriptor per inode the kernel knows: inodes are identified by file
handle and their descriptors come from a cache of at most
min(INODE_FD_CACHE, RLIMIT_NOFILE / INODE_FD_SHARE) entries (see backend_server.inodes).
These tests start `ringfs up` under `prlimit --nofile=1024:HARD`, so the server starts
with a login shell's soft limit of 1,024; it raises that to the hard limit, and the tests
check both the raise and that the server's descriptor count (/proc/<pid>/fd, sampled all
along) stays within the cache's bound plus a fixed allowance for its sockets, shared memory,
eventfds and open files, far below the 100,000 inodes the kernel holds.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import threading
from pathlib import Path
from types import TracebackType

import pytest

from channel.protocol.limits import INODE_FD_CACHE, INODE_FD_SHARE
from tests.support.mounting import ringfs_mount

ENTRIES = 100_000
#: The soft limit a login shell gives (`ulimit -n 1024`).
LOGIN_SOFT_LIMIT = 1024
#: Descriptors the server holds besides its inode cache: stdio, the listening and channel
#: sockets, memfds and eventfds, the export's two, a few open files in flight.
ALLOWANCE = 64
#: Directories the creates test fills at once.
CREATE_DIRS = 4
#: The hard limits the tests run the server under: the machine's, and a login shell's.
HARD_LIMITS = [resource.getrlimit(resource.RLIMIT_NOFILE)[1], LOGIN_SOFT_LIMIT]


def fd_bound(hard: int) -> int:
    """The most descriptors the server may hold under hard limit `hard` (soft raised)."""
    return min(INODE_FD_CACHE, hard // INODE_FD_SHARE) + ALLOWANCE


class FdSampler:
    """Counts /proc/<pid>/fd over and over in a thread; `peak` is the most seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.count())
            self.samples += 1
            self._stop.wait(0.002)  # a sampling interval, not a synchronisation

    def __enter__(self) -> FdSampler:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.count())


def server_nofile(pid: int) -> tuple[int, int]:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)


def make_files(directory: Path, count: int, prefix: str = "f") -> None:
    directory.mkdir()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            os.close(os.open(f"{prefix}{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def ls_f(directory: Path) -> list[str]:
    """Every name `ls -f` lists (unsorted, `.` and `..` included)."""
    out = subprocess.run(
        ["ls", "-f", str(directory)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return out.splitlines()


def open_each(directory: Path, names: list[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.close(os.open(name, os.O_RDONLY, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.mark.parametrize("hard", HARD_LIMITS, ids=lambda hard: f"hard{hard}")
def test_listing_100000_entries_with_bounded_descriptors(tmp_path: Path, hard: int) -> None:
    export = tmp_path / "export"
    export.mkdir()
    make_files(export / "big", ENTRIES)  # on the export directly: the test is the listing
    with ringfs_mount(tmp_path, nofile=(LOGIN_SOFT_LIMIT, hard)) as m:
        assert server_nofile(m.server_pid) == (hard, hard)  # soft raised at start
        bound = fd_bound(hard)
        with FdSampler(m.server_pid) as fds:
            names = ls_f(m.path / "big")
            # Use more distinct inodes than the cache holds: their descriptors come and go.
            open_each(m.path / "big", sorted(names)[2 : 2 + 3 * bound])
            again = ls_f(m.path / "big")  # the kernel now holds all 100,000
        expected = ls_f(export / "big")
        assert len(expected) == ENTRIES + 2
        assert sorted(names) == sorted(expected)
        assert sorted(again) == sorted(expected)
        assert fds.samples > 0
        assert fds.peak <= bound, f"server held {fds.peak} descriptors, bound {bound}"


def test_100000_creates_through_the_mount(tmp_path: Path) -> None:
    """100,000 open(O_CREAT) through the mount, the kernel keeping every inode, under a hard
    limit of 1,024. Spread over CREATE_DIRS directories written in parallel: the kernel
    serialises creates within one directory, and round trips are what this costs."""
    hard = LOGIN_SOFT_LIMIT
    with ringfs_mount(tmp_path, nofile=(LOGIN_SOFT_LIMIT, hard)) as m:
        errors: list[BaseException] = []

        def create(k: int) -> None:
            try:
                make_files(m.path / f"many{k}", ENTRIES // CREATE_DIRS, prefix="c")
            except BaseException as exc:
                errors.append(exc)

        with FdSampler(m.server_pid) as fds:
            workers = [threading.Thread(target=create, args=(k,)) for k in range(CREATE_DIRS)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        assert not errors, errors[:1]
        created = sum(len(os.listdir(m.export / f"many{k}")) for k in range(CREATE_DIRS))
        assert created == ENTRIES
        listed = sum(len(ls_f(m.path / f"many{k}")) - 2 for k in range(CREATE_DIRS))
        assert listed == ENTRIES
        assert fds.peak <= fd_bound(hard), f"server held {fds.peak} descriptors"


def test_create_refused_at_the_limit_leaves_nothing_behind(tmp_path: Path) -> None:
    """Open files hold one server descriptor each; once the server's hard limit of 1,024 is
    reached, a create fails with a clear errno and no file appears on the export; the mount
    works again as soon as files are closed."""
    with ringfs_mount(tmp_path, nofile=(LOGIN_SOFT_LIMIT, LOGIN_SOFT_LIMIT)) as m:
        (m.path / "held").mkdir()
        dfd = os.open(m.path / "held", os.O_RDONLY | os.O_DIRECTORY)
        held: list[int] = []
        failure: OSError | None = None
        try:
            for i in range(2 * LOGIN_SOFT_LIMIT):
                try:
                    held.append(os.open(f"h{i}", os.O_CREAT | os.O_RDWR, 0o644, dir_fd=dfd))
                except OSError as exc:
                    failure = exc
                    break
            assert failure is not None, "the server never ran out of descriptors"
            assert failure.errno in (errno.EMFILE, errno.ENFILE)
            assert sorted(os.listdir(m.export / "held")) == sorted(
                f"h{i}" for i in range(len(held))
            )
        finally:
            for fd in held:
                os.close(fd)
        try:
            os.close(os.open(f"h{len(held)}", os.O_CREAT | os.O_RDWR, 0o644, dir_fd=dfd))
        finally:
            os.close(dfd)
        assert (m.export / "held" / f"h{len(held)}").exists()


def test_listing_has_dot_and_dotdot(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path) as m:
        sub = m.path / "d" / "sub"
        sub.mkdir(parents=True)
        (sub / "file").write_bytes(b"x")
        assert sorted(ls_f(sub)) == [".", "..", "file"]
        listed = subprocess.run(
            ["ls", "-fi", str(sub)], capture_output=True, text=True, check=True
        ).stdout.split()
        numbers = {name: int(ino) for ino, name in zip(listed[::2], listed[1::2], strict=True)}
        assert numbers["."] == sub.stat().st_ino
        assert numbers[".."] == sub.parent.stat().st_ino
        assert numbers["file"] == (sub / "file").stat().st_ino
        assert sorted(ls_f(m.path)) == [".", "..", "d"]
