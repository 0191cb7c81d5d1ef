"""Kernel requests at and past Linux's size limits, through a real mount: each either works
or fails with the errno Linux gives on a local file system, and the driver lives on.

FUSE passes names of up to PATH_MAX - 1 bytes (libfuse 3 asks for max_pages > 1), far past
NAME_MAX; the driver's slot holds any one of them, and the kernel looks a name up before it
renames, links or creates a node there, so two long names never share a command body.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from channel.protocol.limits import NAME_MAX, PATH_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX
from tests.support.mounting import Mount, ringfs_mount
from tests.support.worlds import temporary_world

LONGEST_FUSE_NAME = PATH_MAX - 1


@pytest.fixture(scope="module")
def mount() -> Iterator[Mount]:
    with temporary_world("ringfs-large-") as base, ringfs_mount(base) as m:
        yield m


def _errno(call: object) -> int:
    assert callable(call)
    with pytest.raises(OSError) as failed:
        call()
    return failed.value.errno or 0


@pytest.mark.parametrize("length", [NAME_MAX + 1, 1024, 1025, LONGEST_FUSE_NAME])
def test_over_long_names_get_enametoolong(mount: Mount, length: int) -> None:
    d = mount.path / f"names{length}"
    d.mkdir()
    (d / "a").write_text("a")
    long = d / ("n" * length)
    for call in (
        lambda: os.stat(long),
        lambda: os.open(long, os.O_CREAT | os.O_WRONLY, 0o644),
        lambda: os.mkdir(long),
        lambda: os.mknod(long, 0o644),
        lambda: os.rename(d / "a", long),
        lambda: os.link(d / "a", long),
        lambda: os.symlink("t" * (PATH_MAX - 1), long),
    ):
        assert _errno(call) == errno.ENAMETOOLONG
    assert os.listdir(d) == ["a"]
    assert os.path.exists(f"/proc/{mount.driver_pid}")


def test_longest_name_and_target_together(mount: Mount) -> None:
    d = mount.path / "longest"
    d.mkdir()
    target = "/".join(["t" * 200] * 20)[: PATH_MAX - 1]
    name = "s" * NAME_MAX
    os.symlink(target, d / name)
    assert os.readlink(d / name) == target
    assert os.readlink(mount.export / "longest" / name) == target
    os.rename(d / name, d / ("r" * NAME_MAX))  # two names of NAME_MAX in one body
    assert os.listdir(mount.export / "longest") == ["r" * NAME_MAX]
    assert _errno(lambda: os.symlink("t" * PATH_MAX, d / "x")) == errno.ENAMETOOLONG


def _outcome(call: Callable[..., object], *args: object) -> object:
    """What `call(*args)` returns, or the name of the errno it fails with."""
    try:
        return call(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]


def test_xattr_limits_as_on_the_export(mount: Mount) -> None:
    """Each call gives through the mount what it gives on the export's own file system."""
    (mount.path / "xattrs").write_text("x")
    (mount.export / "local").write_text("x")
    longest = "user." + "k" * (XATTR_NAME_MAX - 5)
    names = [f"user.{i:03d}" + "n" * 200 for i in range(330)]  # a list past 64 KiB
    calls: list[Callable[[Path], object]] = [
        lambda f: os.setxattr(f, "user.big", os.urandom(XATTR_SIZE_MAX)),
        lambda f: os.setxattr(f, "user.too-big", bytes(XATTR_SIZE_MAX + 1)),
        lambda f: os.setxattr(f, longest, b"v" * 1000),
        lambda f: os.getxattr(f, longest),
        lambda f: os.setxattr(f, longest + "k", b"v"),
        lambda f: os.getxattr(f, longest + "k"),
        lambda f: [_outcome(os.setxattr, f, name, b"") for name in names],
        lambda f: sorted(os.listxattr(f)),
    ]
    for call in calls:
        here = _outcome(call, mount.path / "xattrs")
        there = _outcome(call, mount.export / "local")
        assert here == there
    assert os.path.exists(f"/proc/{mount.driver_pid}")
