"""Suite-wide checks and fixtures.

The suite mounts real FUSE filesystems. If /dev/fuse is unusable the whole run fails at once
with a clear message: mount tests are never skipped silently.
"""

from __future__ import annotations

import os
import shutil

import pytest


def _fuse_problem() -> str | None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/fuse cannot be opened read-write: {exc}"
    os.close(fd)
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    problem = _fuse_problem()
    if problem:
        pytest.exit(
            f"ringfs tests need a usable FUSE device and refuse to skip mount tests: {problem}",
            returncode=3,
        )
