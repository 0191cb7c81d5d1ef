"""What the command line knows about a mount without running one: the kernel's mount table,
the driver's own description and the waits on the processes behind it.

Discovery: a program holding only a mount point finds the driver's description (its pids,
server and control sockets, options) in a file the driver publishes, keyed by the mount's
device number: `info_dir(owner)/mount-MAJOR-MINOR.json`, where the owner is the mounting
user (the `user_id=` the kernel lists in the mount's super options). `os.stat(mountpoint)`
gives the device (answered from the kernel's attribute cache, or one GETATTR) and
/proc/self/mountinfo the owner, so finding a mount costs no xattr round trip and works on
`-o noxattr` mounts. Why not the mount table alone: FUSE shows only a mount's source (the
fsname, which names the export and may be set by the user), its type and the options the
kernel parses, so nothing there can carry a socket path without taking the fsname's place.
The file is trusted only if it is a regular file owned by the mount's owner in that
owner's directory (root's is /run/ringfs, 0711; another user's is private to that user),
and names the same device. The root attribute `user.ringfs.info` still answers the same
description on mounts with xattrs (a fallback, and what `ringfs stats` shows live).

This module imports neither trio nor pyfuse3, so that `ringfs umount` and `ringfs stats`
start in a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import stat
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
    #: the mount's device number, "MAJOR:MINOR" (the key of its published description)
    device: str = ""

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


def own_directory(path: str, mode: int) -> str:
    """Create `path` with `mode` if missing; use it only if it is a real directory owned by
    us (not a symlink or someone else's directory planted to catch our files)."""
    uid = os.geteuid()
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise MountError(f"cannot create runtime directory {path}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise MountError(
            f"runtime directory {path} is not a directory owned by uid {uid}: refusing it "
            "(remove it, or set XDG_RUNTIME_DIR)"
        )
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)  # ours: the mode we want, whatever umask made of it
    return path


def info_dir(owner: int) -> tuple[str, int]:
    """Where the drivers of user `owner` publish their descriptions, and its mode: fixed
    by the uid alone (never by an environment a reader does not share). Root's is open to
    pass through, as its mounts are for every user; anyone else's is private."""
    return ("/run/ringfs", 0o711) if owner == 0 else (f"/tmp/ringfs-{owner}", 0o700)


def info_path(owner: int, device: str) -> str:
    return os.path.join(info_dir(owner)[0], f"mount-{device.replace(':', '-')}.json")


@dataclass(frozen=True)
class MountEntry:
    """A ringfs mount's line in /proc/self/mountinfo."""

    device: str  # "MAJOR:MINOR"
    point: str
    owner: int  # the mounting user: FUSE's user_id= super option


def ringfs_mounts() -> list[MountEntry]:
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            sep = fields.index("-")
            if not is_ringfs_type(fields[sep + 1]):
                continue
            supers = dict(o.partition("=")[::2] for o in fields[sep + 3].split(","))
            found.append(MountEntry(fields[2], _unescape(fields[4]), int(supers["user_id"])))
    return found


def published_info(mountpoint: str | os.PathLike[str]) -> DriverInfo | None:
    """The description the mount's driver published (see the module docstring), or None if
    there is none to trust. Raises OSError if the mount point cannot be stat'ed."""
    st = os.stat(mountpoint)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    entry = next((m for m in ringfs_mounts() if m.device == device), None)
    if entry is None:
        return None
    try:
        fd = os.open(info_path(entry.owner, device), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != entry.owner:
            return None
        try:
            info = DriverInfo(**json.loads(file.read()))
        except (ValueError, TypeError):
            return None
    return info if info.device == device else None


def mount_device(mountpoint: str) -> str:
    """The device number of the ringfs mount at `mountpoint` (ours: the last one there),
    from the mount table: the driver must not stat its own mount before serving it (nor
    resolve the mount point itself, which the table names with its parents' links resolved)."""
    parent, name = os.path.split(os.path.abspath(mountpoint))
    point = os.path.join(os.path.realpath(parent), name)
    entries = [m for m in ringfs_mounts() if m.point == point]
    if not entries:
        raise MountError(f"{mountpoint} is not in the mount table")
    return entries[-1].device


class InfoFile:
    """The driver's published description (see the module docstring): written when the
    mount exists and again whenever it changes (a new server pid), removed at the end."""

    def __init__(self, info: DriverInfo) -> None:
        self.info = info
        self.path = ""

    def publish(self, mountpoint: str) -> None:
        self.info.device = mount_device(mountpoint)
        directory, mode = info_dir(os.geteuid())
        own_directory(directory, mode)
        self.path = info_path(os.geteuid(), self.info.device)
        self.update()

    def update(self) -> None:
        """(Re)write the file atomically: a reader sees the old description or the new."""
        if not self.path:
            return
        temporary = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o644)  # readable by every user who may use the mount
            file.write(self.info.to_json())
        os.replace(temporary, self.path)

    def remove(self) -> None:
        """Unlink the file if it still describes this driver (the device number may
        already belong to a newer mount that published its own)."""
        if not self.path:
            return
        with contextlib.suppress(OSError, ValueError), open(self.path, "rb") as file:
            if json.loads(file.read()).get("driver_pid") == self.info.driver_pid:
                os.unlink(self.path)


def read_info(mountpoint: str) -> DriverInfo:
    """The driver's own description: the published one, else the mount root's xattr."""
    if not os.path.lexists(mountpoint) and mount_type(mountpoint) is None:
        raise MountError(f"{mountpoint} does not exist")  # (a dead mount cannot be lstat'ed)
    try:
        published = published_info(mountpoint)
        if published is not None and not is_dead(mountpoint):  # (stat: maybe from a cache)
            return published
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
