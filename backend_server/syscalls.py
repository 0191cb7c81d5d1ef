"""The system calls the os module does not offer (or offers without a flag we need), via ctypes.

Each wrapper raises OSError with the kernel's errno, like the os module. None of them follows
a symlink: the descriptor-relative ones act on the O_PATH descriptor itself (AT_EMPTY_PATH).
"""

from __future__ import annotations

import ctypes
import os
import threading

from backend_server.errors import fail

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

SYS_renameat2 = 316

#: utimensat's "leave it" and "the current time" markers, in tv_nsec.
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_fchownat = _libc.fchownat
_fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]
_linkat = _libc.linkat
_linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_fallocate = _libc.fallocate64
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_faccessat = _libc.faccessat
_faccessat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]


def _check(result: int) -> None:
    if result < 0:
        raise fail(ctypes.get_errno())


def _timespec(value: int | None) -> _Timespec:
    """None: omit; -1: now; otherwise nanoseconds since the epoch."""
    if value is None:
        return _Timespec(0, UTIME_OMIT)
    if value == -1:
        return _Timespec(0, UTIME_NOW)
    seconds, nanos = divmod(value, 1_000_000_000)
    return _Timespec(seconds, nanos)


#: FSYNC/FSYNCDIR header flag: data only (fdatasync).
DATASYNC = 1


def sync(fd: int, flags: int) -> None:
    """fsync, or fdatasync when the command's flags ask for DATASYNC."""
    if flags & DATASYNC:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def utimens(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set the times of the object behind (O_PATH) `fd`; see `_timespec` for the values."""
    times = (_Timespec * 2)(_timespec(atime_ns), _timespec(mtime_ns))
    _check(_utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


def chown(fd: int, uid: int, gid: int) -> None:
    """fchownat(fd, "", ...) on an O_PATH descriptor; 0xFFFFFFFF leaves that id unchanged."""
    _check(_fchownat(fd, b"", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


def link_empty_path(fd: int, new_dir_fd: int, new_name: bytes) -> None:
    """linkat(fd, "", ..., AT_EMPTY_PATH): links the object itself (needs
    CAP_DAC_READ_SEARCH); the only race-free way to hard-link a symlink."""
    _check(_linkat(fd, b"", new_dir_fd, new_name, AT_EMPTY_PATH))


def renameat2(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> None:
    _check(
        _syscall(
            SYS_renameat2,
            ctypes.c_int(old_dir),
            ctypes.c_char_p(old),
            ctypes.c_int(new_dir),
            ctypes.c_char_p(new),
            ctypes.c_uint(flags),
        )
    )


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_fallocate(fd, mode, offset, length))


def access(path: str, mask: int) -> None:
    """faccessat(..., AT_EACCESS): checked with the thread's fsuid/fsgid and groups (without
    AT_EACCESS the kernel would use the real uid, i.e. root's)."""
    _check(_faccessat(AT_FDCWD, os.fsencode(path), mask, AT_EACCESS))


# -- file handles (name_to_handle_at / open_by_handle_at) --------------------------------------
#: Linux's MAX_HANDLE_SZ: the largest f_handle any file system produces.
MAX_HANDLE_SZ = 128
SYS_setfsuid = 122


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle), ctypes.POINTER(ctypes.c_int),
    ctypes.c_int,
]  # fmt: skip
_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]


class _HandleBuffers(threading.local):
    """One handle buffer per thread: READDIR takes a handle per entry, and building the
    ctypes objects anew each time would cost more than the system call."""

    def __init__(self) -> None:
        self.handle = _FileHandle(MAX_HANDLE_SZ, 0)
        self.mount_id = ctypes.c_int(0)
        self.handle_ref = ctypes.byref(self.handle)
        self.mount_ref = ctypes.byref(self.mount_id)
        self.bytes_at = ctypes.addressof(self.handle) + _FileHandle.f_handle.offset


_buffers = _HandleBuffers()


def name_to_handle(dir_fd: int, name: bytes) -> tuple[int, bytes]:
    """(mount id, handle) of `name` in `dir_fd`, or of `dir_fd` itself when `name` is empty;
    never follows a symlink. The handle is the handle type (4 bytes) and the file system's
    opaque bytes: equal handles mean the same inode, and the file system's generation number
    in it means a reused inode number gets a different handle."""
    buffers = _buffers
    handle = buffers.handle
    handle.handle_bytes = MAX_HANDLE_SZ
    flags = 0 if name else AT_EMPTY_PATH
    _check(_name_to_handle_at(dir_fd, name, buffers.handle_ref, buffers.mount_ref, flags))
    raw = ctypes.string_at(buffers.bytes_at, handle.handle_bytes)
    return buffers.mount_id.value, handle.handle_type.to_bytes(4, "little", signed=True) + raw


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at: a descriptor of the inode `handle` (from `name_to_handle`) names, on
    the mount that `mount_fd` lies on. Needs CAP_DAC_READ_SEARCH; ESTALE when the inode is
    gone."""
    raw = handle[4:]
    fh = _FileHandle(len(raw), int.from_bytes(handle[:4], "little", signed=True))
    ctypes.memmove(fh.f_handle, raw, len(raw))
    fd = _open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    _check(fd)
    return int(fd)


def swap_fsuid(uid: int) -> int:
    """setfsuid for the calling thread; returns the previous fsuid (0xFFFFFFFF only asks)."""
    return int(_syscall(SYS_setfsuid, ctypes.c_uint32(uid)))
