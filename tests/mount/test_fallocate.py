"""fallocate(2) in every mode, and O_TMPFILE: what the server does, and what a mount can do.

The server's FALLOCATE forwards each mode to the export's file system; driven through a real
channel it gives, mode by mode, what the same call gives on a twin file of the export itself
(the export here is the test machine's /tmp: ext4, which has every mode).

Through a mount both fail with EOPNOTSUPP, and must fail cleanly (file untouched, driver
alive): the FUSE stack in between cannot carry them. pyfuse3 3.5 registers no `fallocate`
handler with libfuse (its `init_fuse_ops` never sets `fuse_ops.fallocate`; `Operations` has
no such method), so libfuse answers FUSE_FALLOCATE with ENOSYS, which the kernel turns into
EOPNOTSUPP and remembers for the mount (`fc->no_fallocate`). libfuse 3.14 does not know
FUSE_TMPFILE (opcode 51, Linux 6.1) at all, so O_TMPFILE meets the same ENOSYS and
`fc->no_tmpfile`. Even with a handler, Linux's FUSE client (6.18 here, checked on fresh
debug mounts) forwards only the default mode, KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE: it
refuses COLLAPSE_RANGE, INSERT_RANGE and UNSHARE_RANGE itself. These tests pin that
behaviour; when the binding can carry the requests, the mount tests are the ones to turn
around (see README, "When things fail").
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend_server import syscalls
from channel.protocol.opcodes import Op
from tests.support.mounting import Mount, ringfs_mount
from tests.support.server_harness import ServerProcess
from tests.support.worlds import temporary_world

KEEP_SIZE = 0x01
PUNCH_HOLE = 0x02
COLLAPSE_RANGE = 0x08
ZERO_RANGE = 0x10
INSERT_RANGE = 0x20
KiB = 1024
EOPNOTSUPP = errno.errorcode[errno.EOPNOTSUPP]
AT_SYMLINK_FOLLOW = 0x400
_libc = ctypes.CDLL(None, use_errno=True)

#: (mode, offset, length), applied in order to the same file; each step's result is compared.
STEPS = [
    (0, 60 * KiB, 16 * KiB),  # default: allocate, and grow the file
    (KEEP_SIZE, 64 * KiB, 64 * KiB),  # allocate past the end, size unchanged
    (PUNCH_HOLE | KEEP_SIZE, 4 * KiB, 8 * KiB),  # deallocate: reads as zeros
    (ZERO_RANGE, 20 * KiB, 8 * KiB),
    (ZERO_RANGE | KEEP_SIZE, 72 * KiB, 16 * KiB),
    (ZERO_RANGE, 72 * KiB, 8 * KiB),  # grows the file
    (COLLAPSE_RANGE, 16 * KiB, 8 * KiB),  # cut a block range out
    (INSERT_RANGE, 8 * KiB, 4 * KiB),  # shift the tail up, leaving a hole
    (COLLAPSE_RANGE, 1, 4 * KiB),  # unaligned: EINVAL
    (PUNCH_HOLE, 0, 4 * KiB),  # punching must keep the size: EOPNOTSUPP
    (0, 0, 0),  # zero length: EINVAL
]


def _local(fd: int, mode: int, offset: int, length: int) -> str:
    """fallocate(2) on `fd`: 'ok' or the errno's name."""
    try:
        syscalls.fallocate(fd, mode, offset, length)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "ok"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    base = Path(tempfile.mkdtemp(prefix="ringfs-falloc-"))
    export = base / "export"
    export.mkdir()
    try:
        with ServerProcess(export, base / "sock") as srv:
            yield srv
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_every_mode_through_the_server_matches_the_export(server: ServerProcess) -> None:
    content = os.urandom(64 * KiB)
    with server.client() as client:
        reply = client.call(Op.CREATE, [b"served", 0o644, os.O_RDWR], ino=1)
        assert reply.status == 0
        fh = reply.value
        assert client.call(Op.WRITE, data=content, fh=fh, offset=0).value == len(content)
        served = server.export / "served"
        twin = served.with_name("twin")
        twin.write_bytes(content)
        local_fd = os.open(twin, os.O_RDWR)
        try:
            worked = 0
            for mode, offset, length in STEPS:
                status = client.call(Op.FALLOCATE, [mode], fh=fh, offset=offset, size=length).status
                here = "ok" if status == 0 else errno.errorcode[-status]
                there = _local(local_fd, mode, offset, length)
                assert here == there, (hex(mode), offset, length)
                assert served.stat().st_size == os.fstat(local_fd).st_size, hex(mode)
                assert served.read_bytes() == twin.read_bytes(), hex(mode)
                worked += here == "ok"
            assert worked == 8  # every mode the export has, each refusal as the export's
        finally:
            os.close(local_fd)
            client.call(Op.RELEASE, fh=fh)


@pytest.fixture(scope="module")
def mount() -> Iterator[Mount]:
    with temporary_world("ringfs-falloc-mnt-") as base, ringfs_mount(base) as m:
        yield m


def test_fallocate_through_a_mount_fails_cleanly(mount: Mount) -> None:
    content = os.urandom(64 * KiB)
    path = mount.path / "f"
    path.write_bytes(content)
    local = mount.export / "local"
    local.write_bytes(content)
    fd = os.open(path, os.O_RDWR)
    local_fd = os.open(local, os.O_RDWR)
    try:
        worked_locally = 0
        for mode, offset, length in STEPS:
            # the VFS refuses a zero length itself, before any file system sees it
            expected = "EINVAL" if length == 0 else EOPNOTSUPP
            assert _local(fd, mode, offset, length) == expected, hex(mode)
            assert os.fstat(fd).st_size == len(content)
            worked_locally += _local(local_fd, mode, offset, length) == "ok"
        assert path.read_bytes() == content and (mount.export / "f").read_bytes() == content
        assert worked_locally == 8  # the export's file system has them all: FUSE is the gap
        # glibc's posix_fallocate falls back to writing the range when the call is refused
        os.posix_fallocate(fd, 0, 128 * KiB)
        assert (mount.export / "f").stat().st_size == 128 * KiB
        assert path.read_bytes()[: len(content)] == content
    finally:
        os.close(fd)
        os.close(local_fd)
    assert os.path.exists(f"/proc/{mount.driver_pid}")


def _link_fd(fd: int, name: Path) -> None:
    """linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW), as open(2) documents for
    O_TMPFILE (os.link without a dir_fd calls link(2), which does not follow the magic link)."""
    source, target = f"/proc/self/fd/{fd}".encode(), os.fsencode(name)
    if _libc.linkat(-100, source, -100, target, AT_SYMLINK_FOLLOW) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(name))


def test_o_tmpfile_through_a_mount_fails_cleanly(mount: Mount) -> None:
    with pytest.raises(OSError) as failed:
        os.open(mount.path, os.O_TMPFILE | os.O_RDWR, 0o600)
    assert failed.value.errno == errno.EOPNOTSUPP
    # the export's own file system has it, linkat through /proc/self/fd included
    fd = os.open(mount.export, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"anonymous")
        _link_fd(fd, mount.export / "named")
    finally:
        os.close(fd)
    assert (mount.path / "named").read_bytes() == b"anonymous"  # seen through the mount
    assert os.path.exists(f"/proc/{mount.driver_pid}")
