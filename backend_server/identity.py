"""Acting as the caller: whose permissions the kernel checks for each operation.

When the server runs as root it switches the *calling thread's* filesystem identity to the
caller's around every operation that touches the file system, so that the kernel itself
enforces permissions exactly as for a local process: EACCES/EPERM, sticky and setgid
directories, ownership of new files (fsuid, and fsgid or the directory's gid), clearing
setuid/setgid on write, truncate and chown. Three raw system calls do it:

* `setfsuid` (122) and `setfsgid` (123) change only the calling thread's credentials. Moving
  the fsuid away from 0 also drops the file-system capabilities (CAP_CHOWN, CAP_DAC_OVERRIDE,
  CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD, ...) from the thread's effective
  set, and moving it back to 0 restores them, so a non-root caller gets no root overrides.
* `setgroups` (116) as a raw syscall is per-thread too. glibc's `setgroups()` (and Python's
  `os.setgroups`) would broadcast the change to every thread of the process, which would give
  every concurrent operation the groups of whichever caller came last.

Order matters: groups and fsgid first, fsuid last (CAP_SETGID/CAP_SETUID survive the fsuid
change, so switching from one non-root caller to another needs no detour through root).

Because the change is per-thread and synchronous, it is safe in the trio thread too: an inline
operation switches, makes its system calls and switches back before it returns, with no await
in between, so no other task ever runs under a caller's identity. Worker threads do the same
around each operation they run.

Costs measured on the development VM (2 vCPUs, Linux 6.18): a setfsuid pair 3.6 µs, a
setgroups pair 4.3 µs, reading /proc/<pid>/status 27 µs. Hence: a switch is skipped when the
thread already has the wanted identity; uid-0 callers keep the server's groups (root's group
list never changes a permission decision); GETATTR, READ and the like need no identity at all
(see `dispatch.OPS`); and driver callers' supplementary groups are cached for one second.

Remaining capabilities: CAP_SYS_ADMIN and CAP_SYS_RESOURCE are not file-system capabilities, so
they stay effective under a non-root fsuid. CAP_SYS_ADMIN would let a non-root caller touch
`trusted.*` and `security.*` extended attributes; `ops_xattr` refuses those for non-root
callers itself. CAP_SYS_RESOURCE lets writes use the file system's root-reserved blocks; that is
accepted and documented here.

When the server is *not* root it cannot switch. It then serves only callers with its own uid
(and uid 0, which it serves with its own, lesser, rights); every other caller gets EACCES for
every operation that needs an identity. Files it creates belong to the server's uid and gid;
chown to anyone else fails with EPERM, as the kernel says.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from backend_server.errors import fail

SYS_setgroups = 116
SYS_setfsuid = 122
SYS_setfsgid = 123

#: Linux's NGROUPS_MAX.
NGROUPS_MAX = 65536
#: How long a driver caller's supplementary groups are reused before /proc is read again.
GROUPS_TTL = 1.0
GROUPS_CACHE_SIZE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an operation acts as."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


#: The caller of an operation that acts as nobody (identity=False in the dispatch table),
#: which therefore needs no group lookup: it matches no user, so a check against it fails.
NO_CALLER = Identity(-1, -1)


def _set_groups(groups: tuple[int, ...]) -> None:
    array = (ctypes.c_uint32 * len(groups))(*groups)
    if _syscall(SYS_setgroups, ctypes.c_size_t(len(groups)), array) != 0:
        code = ctypes.get_errno()
        raise fail(code or errno.EPERM, "setgroups")


def _set_fsgid(gid: int, *, verify: bool = True) -> None:
    _syscall(SYS_setfsgid, ctypes.c_uint32(gid))
    # setfsgid reports the *previous* value and never fails visibly: ask again to confirm.
    # Switching to a caller is verified (acting as root by mistake would be a hole); the way
    # back is not (a failure there could only leave the thread with less privilege, and the
    # next switch to a caller verifies again).
    if verify and _syscall(SYS_setfsgid, ctypes.c_uint32(0xFFFFFFFF)) != gid:
        raise fail(errno.EPERM, "setfsgid")


def _set_fsuid(uid: int, *, verify: bool = True) -> None:
    _syscall(SYS_setfsuid, ctypes.c_uint32(uid))
    if verify and _syscall(SYS_setfsuid, ctypes.c_uint32(0xFFFFFFFF)) != uid:
        raise fail(errno.EPERM, "setfsuid")


class _Current(threading.local):
    """The identity this thread's credentials are set to (None: the server's own)."""

    identity: Identity | None = None


class Switcher:
    """Switches the calling thread between the server's identity and callers'."""

    def __init__(self) -> None:
        self.server = Identity(os.geteuid(), os.getegid(), tuple(os.getgroups()))
        self.privileged = self.server.uid == 0
        self._current = _Current()
        self._groups: dict[tuple[int, int, int], tuple[float, tuple[int, ...]]] = {}

    # -- who the caller is ------------------------------------------------------------------
    def caller(self, uid: int, gid: int, groups: tuple[int, ...]) -> Identity:
        """The identity to act as; uid 0 keeps the server's groups (they cannot matter)."""
        if uid == 0 and self.privileged:
            return Identity(0, gid, self.server.groups)
        return Identity(uid, gid, groups[:NGROUPS_MAX])

    def groups_of(self, pid: int, uid: int, gid: int) -> tuple[int, ...]:
        """Supplementary groups of the process (or thread) `pid`, from /proc, cached briefly.

        The FUSE request carries only uid, gid and pid; the kernel decides group access with
        the requester's whole group list, so the server reads it the way the kernel would
        report it. A vanished process yields no supplementary groups."""
        if pid <= 0:
            return ()
        key = (pid, uid, gid)
        now = time.monotonic()
        hit = self._groups.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        groups = _read_groups(pid)
        if len(self._groups) >= GROUPS_CACHE_SIZE:
            self._groups.clear()
        self._groups[key] = (now + GROUPS_TTL, groups)
        return groups

    # -- switching ----------------------------------------------------------------------
    def permit(self, identity: Identity) -> None:
        """Raise EACCES if an unprivileged server cannot act for `identity`."""
        if not self.privileged and identity.uid not in (self.server.uid, 0):
            raise fail(errno.EACCES, "the server is not root and cannot act as this caller")

    def become(self, identity: Identity) -> None:
        """Set this thread's fs credentials to `identity` (a no-op when unprivileged)."""
        if not self.privileged:
            return
        current = self._current.identity or self.server
        if identity == current:
            return
        try:
            if identity.groups != current.groups:
                _set_groups(identity.groups)
            if identity.gid != current.gid:
                _set_fsgid(identity.gid)
            if identity.uid != current.uid:
                _set_fsuid(identity.uid)
        except BaseException:
            self._reset()
            raise
        self._current.identity = None if identity == self.server else identity

    def restore(self) -> None:
        """Back to the server's own identity (fsuid first, which restores its capabilities)."""
        current = self._current.identity
        if current is None:
            return
        server = self.server
        if current.uid != server.uid:
            _set_fsuid(server.uid, verify=False)
        if current.gid != server.gid:
            _set_fsgid(server.gid, verify=False)
        if current.groups != server.groups:
            _set_groups(server.groups)
        self._current.identity = None

    @contextlib.contextmanager
    def as_server(self) -> Iterator[None]:
        """Within an operation acting as a caller: the server's own identity for a moment,
        for the one step Linux grants that caller but the export's kernel would refuse to
        its fs credentials (see `ops_meta.setattr_`)."""
        caller = self._current.identity
        self.restore()
        try:
            yield
        finally:
            if caller is not None:
                self.become(caller)

    def _reset(self) -> None:
        server = self.server
        _set_fsuid(server.uid)
        _set_fsgid(server.gid)
        _set_groups(server.groups)
        self._current.identity = None


def _read_groups(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()
