"""Mounting ringfs for tests: a real `ringfs up` of a real export, always unmounted after.

`ringfs_mount(...)` starts the server and the driver exactly as a user would (`ringfs up`,
which returns once the mount is ready), yields the mount point, the export and the driver's
own description, and on the way out unmounts with `ringfs umount` — falling back to a lazy
`fusermount3 -uz` and killing what is left if the test broke the mount.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fusefront.mountinfo import is_ringfs_type, mount_type, read_info

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
    info = read_info(str(mnt))  # the published description: works on -o noxattr too
    mount = Mount(mnt, export, info.driver_pid, info.server_pid)
    try:
        yield mount
    finally:
        if ringfs("umount", str(mnt), check=False).returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
            for pid in (mount.driver_pid, mount.server_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def debug_mount(base: Path, options: str = "") -> Iterator[tuple[Path, Path]]:
    """`ringfs up -f -o debug` of `base/export` on `base/mnt`, yielding the mount point and
    the file holding libfuse's debug output: one line per request the kernel sent
    ("opcode: GETXATTR (22)"), the kernel's own count of what reached the driver."""
    export, mnt, out = base / "export", base / "mnt", base / "debug.log"
    export.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(exist_ok=True)
    args = ["up", str(export), str(mnt), "--socket", str(base / "s.sock")]
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            [*RINGFS, *args, "-o", ",".join(filter(None, ["debug", options]))],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        # ready once mounted and the driver has answered the kernel's INIT
        while not (is_ringfs_type(mount_type(str(mnt))) and b"INIT" in out.read_bytes()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(out.read_text(errors="replace")[-2000:])
            time.sleep(0.02)  # polling the mount table and a file: nothing to wait on
        os.statvfs(mnt)  # a request through the kernel answered
        yield mnt, out
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
            proc.kill()
            proc.wait()


def requests_seen(out: Path, opcode: str) -> int:
    """How many requests of `opcode` (FUSE's name, e.g. "GETXATTR") a debug_mount got."""
    return out.read_text(errors="replace").count(f"opcode: {opcode} ")
