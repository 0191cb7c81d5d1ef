"""`-o noxattr`: the driver answers every xattr request ENOSYS, the kernel then stops asking
(no GETXATTR security.capability before each write), applications see EOPNOTSUPP, and the
mount is still found from its mount point (the published description, not the xattr).

The count of GETXATTR requests is the kernel's own: libfuse's debug output (`-o debug`,
which keeps the mount in the foreground) prints one line per request it receives."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefront.direct import DirectClient, control_socket
from fusefront.mountinfo import mount_type, read_info
from tests.support.mounting import debug_mount, requests_seen, ringfs, ringfs_mount

WRITES = 300


def _xattr_calls(path: Path) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("getxattr", lambda: os.getxattr(path, "user.x")),
        ("getxattr security.capability", lambda: os.getxattr(path, "security.capability")),
        ("setxattr", lambda: os.setxattr(path, "user.x", b"v")),
        ("listxattr", lambda: os.listxattr(path)),
        ("removexattr", lambda: os.removexattr(path, "user.x")),
    ]


def test_noxattr_writes_work_and_xattr_calls_fail_with_eopnotsupp(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "noxattr") as m:
        target = m.path / "f"
        with open(target, "wb") as f:
            for i in range(64):
                f.write(bytes([i]) * 4096)
        assert (m.export / "f").read_bytes() == b"".join(bytes([i]) * 4096 for i in range(64))
        for _round in range(2):  # the driver's ENOSYS, then the kernel's own answer
            for name, call in _xattr_calls(target) + _xattr_calls(m.path):
                with pytest.raises(OSError) as failed:
                    call()
                assert failed.value.errno == errno.EOPNOTSUPP, name
        # the export's own attributes are untouched, and hidden
        os.setxattr(m.export / "f", "user.kept", b"1")
        with pytest.raises(OSError) as failed:
            os.getxattr(target, "user.kept")
        assert failed.value.errno == errno.EOPNOTSUPP
        assert os.getxattr(m.export / "f", "user.kept") == b"1"
        assert mount_type(str(m.path)) == "fuse.ringfs.auto.noxattr"
        assert read_info(str(m.path)).options["xattr"] is False


def test_noxattr_mount_is_discovered_and_serves_application_channels(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "noxattr") as m:
        (m.export / "data").write_bytes(b"through the channel")
        info = read_info(str(m.path))
        assert info.driver_pid == m.driver_pid and info.control_socket
        assert control_socket(m.path) == info.control_socket
        with DirectClient.connect(m.path) as fs:
            fd = fs.open("data", os.O_RDONLY)
            assert fs.pread(fd, 100, 0) == b"through the channel"
            fs.close(fd)
        shown = ringfs("stats", str(m.path), "--json").stdout
        assert '"xattr": false' in shown and str(m.driver_pid) in shown


def test_the_kernel_stops_asking_for_xattrs_on_a_noxattr_mount(tmp_path: Path) -> None:
    grown = {}
    for name, options in (("default", ""), ("noxattr", "noxattr")):
        with debug_mount(tmp_path / name, options) as (mnt, out):
            fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, b"x" * 4096, 0)  # the first write: whatever the kernel asks once
                os.fsync(fd)
                before = requests_seen(out, "GETXATTR")
                for i in range(WRITES):
                    os.pwrite(fd, b"y" * 4096, 4096 * (i % 16))
                os.fsync(fd)
                assert requests_seen(out, "WRITE") >= WRITES  # the count does see requests
                grown[name] = requests_seen(out, "GETXATTR") - before
            finally:
                os.close(fd)
    # a default mount is asked security.capability before every buffered write ...
    assert grown["default"] >= WRITES, grown
    # ... a noxattr mount never again, however many writes
    assert grown["noxattr"] == 0, grown
