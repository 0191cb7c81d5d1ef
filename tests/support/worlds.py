"""Directories every user can reach, for tests that act as other users or let other users'
processes reach a socket: pytest's own `tmp_path` sits under a 0700 directory of root's."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def world_dir(prefix: str, where: str | None = None) -> Path:
    """A fresh directory every uid can search (mode 0755), in `where` (default the system's
    temporary directory); the caller removes it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    path.chmod(0o755)
    return path


@contextmanager
def temporary_world(prefix: str, where: str | None = None) -> Iterator[Path]:
    """`world_dir`, removed with everything in it when the block ends."""
    base = world_dir(prefix, where)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
