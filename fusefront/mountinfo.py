"""What the command line knows about a mount without running one: the kernel's mount table,
the driver's own description (the root's `user.ringfs.info` attribute) and the waits on the
processes behind it.

This module imports neither trio nor pyfuse3, so that `ringfs umount` and `ringfs stats`
start in a few tens of milliseconds.
"""

from __future__ import annotations

import errno
import json
import os
import select
import time
from dataclasses import dataclass, field
from typing import Any

#: The root attribute in which the driver describes itself (see fusefront.driver).
INFO_XATTR = "user.ringfs.info"
INFO_XATTR_NAME = INFO_XATTR.encode()
#: The file-system type the kernel lists for a ringfs mount: FUSE's "fuse." plus our subtype,
#: which carries the cache mode after a dot (fuse.ringfs.auto, fuse.ringfs.none.writeback;
#: see fusefront.options). `mount -t fuse.ringfs` names the type without the mode.
FSTYPE = "fuse.ringfs"


def is_ringfs_type(kind: str | None) -> bool:
    """Is `kind`, a type from the kernel's mount table, a ringfs mount's?"""
    return kind is not None and (kind == FSTYPE or kind.startswith(FSTYPE + "."))


#: Seconds `up` waits for its server's socket, and `umount` for processes to exit.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class MountError(Exception):
    """A mount that cannot be made or used; the message is meant for the user."""


class DeadMount(MountError):
    """A ringfs mount whose driver has exited: the kernel answers ENOTCONN."""


@dataclass
class DriverInfo:
    """What `ringfs stats`/`umount` learn from the mount (root xattr `user.ringfs.info`)."""

    driver_pid: int
    server_pid: int
    server_socket: str
    owns_server: bool
    #: where applications ask for a channel of their own (see fusefront.control)
    control_socket: str = ""
    #: the mount options in force (MountOptions.describe): cache mode, timeouts, transport...
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()


def _unescape(field: str) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def mount_type(path: str) -> str | None:
    """The file-system type mounted exactly at `path` (the last mount there), or None.
    Read from the kernel's table, so it works on a dead mount that cannot be stat'ed."""
    path = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            sep = fields.index("-")
            if _unescape(fields[4]) == path:
                found = fields[sep + 1]
    return found


def is_dead(path: str) -> bool:
    """A mount whose driver is gone answers every request with ENOTCONN. statfs always
    asks the driver (a stat may be answered from the kernel's attribute cache)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def dead_mount_message(path: str) -> str:
    return (
        f"{path} is a dead ringfs mount (its driver has exited: transport endpoint is not "
        f"connected); clear it with `ringfs umount {path}`"
    )


def read_info(mountpoint: str) -> DriverInfo:
    """The driver's own description, read from the mount's root."""
    if not os.path.lexists(mountpoint) and mount_type(mountpoint) is None:
        raise MountError(f"{mountpoint} does not exist")  # (a dead mount cannot be lstat'ed)
    try:
        raw = os.getxattr(mountpoint, INFO_XATTR)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN and is_ringfs_type(mount_type(mountpoint)):
            raise DeadMount(dead_mount_message(mountpoint)) from None
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOTCONN):
            raise MountError(f"{mountpoint} is not a ringfs mount") from None
        raise MountError(f"cannot read {mountpoint}: {exc.strerror}") from None
    return DriverInfo(**json.loads(raw))


def open_pidfds(pids: list[int]) -> dict[int, int]:
    """A pidfd per live process: readable once it has exited, even while it waits as a zombie
    for a parent to reap it (an orphan's zombie may wait for seconds under a lazy init, so
    `kill(pid, 0)` would say it is still there)."""
    fds = {}
    for pid in pids:
        if pid:
            try:
                fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                pass
    return fds


def wait_exited(pidfds: dict[int, int], timeout: float) -> list[int]:
    """Wait until every process has exited; return the pids still running at the deadline.
    Closes the pidfds."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    for fd in pidfds.values():
        poller.register(fd, select.POLLIN)
    remaining = dict(pidfds)
    try:
        while remaining:
            left = max(0.0, deadline - time.monotonic())
            for fd, _ in poller.poll(left * 1000):  # at least one look, even at timeout 0
                poller.unregister(fd)
                remaining = {pid: f for pid, f in remaining.items() if f != fd}
            if not left:
                break
        return sorted(remaining)
    finally:
        for fd in pidfds.values():
            os.close(fd)
