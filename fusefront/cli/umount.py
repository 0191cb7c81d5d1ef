"""`ringfs umount MOUNTPOINT`: unmount, and wait until the driver (and the server `up`
started) have exited, so that no process is left behind."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from fusefront.mount import STOP_TIMEOUT, MountError, read_info


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("umount", help="unmount and stop")
    p.add_argument("mountpoint")
    p.set_defaults(run=run)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = [pid for pid in pids if pid and alive(pid)]
        if not remaining or time.monotonic() > deadline:
            return remaining
        time.sleep(0.02)  # another process's exit cannot be awaited without a pidfd per pid


def run(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    try:
        info = read_info(mountpoint)
    except MountError as exc:
        print(f"ringfs: {exc}", file=sys.stderr)
        return 1
    done = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"ringfs: {done.stderr.strip() or 'fusermount3 failed'}", file=sys.stderr)
        return 1
    pids = [info.driver_pid] + ([info.server_pid] if info.owns_server else [])
    remaining = wait_gone(pids, STOP_TIMEOUT)
    if remaining:
        print(f"ringfs: processes {remaining} did not exit", file=sys.stderr)
        return 1
    return 0
