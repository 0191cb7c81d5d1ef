"""Suite-wide checks and fixtures.

Most of the suite mounts real FUSE filesystems. Whenever a collected test needs FUSE and
/dev/fuse (or fusermount3) is unusable, the whole run fails at once, before any test runs,
with a clear message and exit code 3: mount tests are never skipped.

Which tests need FUSE is decided at collection, by test module: every module needs it except
those under a directory or named in `WITHOUT_FUSE` (the sans-I/O protocol layer's tests and
the source checks, which mount nothing and start no driver). A new module is therefore assumed
to need FUSE; list it only if none of its tests mounts. So `pytest tests/protocol` runs where
FUSE is absent, and any run that includes a mount test refuses to start there.

`RINGFS_FUSE_DEVICE` (for the suite's own self-test, `tests/project/test_fuse_check.py`, only): the
path checked instead of /dev/fuse. It can only make the check fail, never pass where it would
not: whatever it names must still be the FUSE character device (10, 229), opened read-write.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

#: What needs neither /dev/fuse nor fusermount3, as paths under tests/: a directory (every
#: module in it) or one module.
WITHOUT_FUSE = frozenset(
    {
        "protocol",  # the sans-I/O layer: bytes and state only
        "project",  # checks of the repository's source and documents, and of this check
        "driver/test_nodes.py",
    }
)
TESTS = Path(__file__).resolve().parent

#: Linux's FUSE device: misc major 10, minor 229.
FUSE_DEVICE_NUMBER = os.makedev(10, 229)
#: Exit status of a run refused for want of FUSE.
NO_FUSE_EXIT = 3


def _fuse_problem() -> str | None:
    device = os.environ.get("RINGFS_FUSE_DEVICE", "/dev/fuse")
    try:
        st = os.stat(device)
    except OSError as exc:
        return f"{device} is missing: {exc}"
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != FUSE_DEVICE_NUMBER:
        return f"{device} is not the FUSE character device (10, 229)"
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{device} cannot be opened read-write: {exc}"
    os.close(fd)
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


def needs_fuse(item: pytest.Item) -> bool:
    path = Path(str(item.path)).resolve()
    try:
        relative = path.relative_to(TESTS)
    except ValueError:
        return True
    return not any(
        str(relative) == listed or listed in (str(parent) for parent in relative.parents)
        for listed in WITHOUT_FUSE
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """After selection (-k, -m, node ids): refuse to run if a selected test needs FUSE."""
    if session.config.option.collectonly:
        return
    wanting = [item for item in session.items if needs_fuse(item)]
    if not wanting:
        return
    problem = _fuse_problem()
    if problem:
        modules = sorted({Path(str(item.path)).name for item in wanting})
        pytest.exit(
            "ringfs tests need a usable FUSE device and refuse to skip mount tests: "
            f"{problem} (needed by {', '.join(modules)})",
            returncode=NO_FUSE_EXIT,
        )
