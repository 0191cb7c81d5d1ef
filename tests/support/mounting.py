"""Mounting ringfs for tests: a real `ringfs up` of a real export, always unmounted after.

`ringfs_mount(...)` starts the server and the driver exactly as a user would (`ringfs up`,
which returns once the mount is ready), yields the mount point, the export and the driver's
own description, and on the way out unmounts with `ringfs umount` — falling back to a lazy
`fusermount3 -uz` and killing what is left if the test broke the mount.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RINGFS = [sys.executable, "-m", "fusefront.cli.main"]


@dataclass
class Mount:
    path: Path
    export: Path
    driver_pid: int
    server_pid: int


def ringfs(
    *args: str, check: bool = True, timeout: float = 60, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the `ringfs` command line; `prefix` goes before it (e.g. a `prlimit` call)."""
    return subprocess.run(
        [*prefix, *RINGFS, *args],
        cwd=REPO, capture_output=True, text=True, check=check, timeout=timeout,
    )  # fmt: skip


@contextlib.contextmanager
def ringfs_mount(
    base: Path,
    options: str = "",
    export: Path | None = None,
    *,
    nofile: tuple[int, int] | None = None,
) -> Iterator[Mount]:
    """`nofile`: the (soft, hard) RLIMIT_NOFILE that `ringfs up`, and so the server and
    the driver it starts, begin with."""
    export = export or base / "export"
    export.mkdir(exist_ok=True)
    mnt = base / "mnt"
    mnt.mkdir(exist_ok=True)
    sock = base / "server.sock"
    # The mount's log stays with the test's files, not in the system's runtime directory.
    args = [
        "up",
        str(export),
        str(mnt),
        "--socket",
        str(sock),
        "--log-file",
        str(base / "ringfs-driver.log"),
    ]
    if options:
        args += ["-o", options]
    ringfs(*args, prefix=("prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--") if nofile else ())
    info = json.loads(os.getxattr(mnt, "user.ringfs.info"))
    mount = Mount(mnt, export, info["driver_pid"], info["server_pid"])
    try:
        yield mount
    finally:
        if ringfs("umount", str(mnt), check=False).returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
            for pid in (mount.driver_pid, mount.server_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
