"""The per-user runtime directory: default server sockets and, without syslog, logs.

`$XDG_RUNTIME_DIR/ringfs` when the session has one, `/run/ringfs` for root, otherwise
`/tmp/ringfs-UID`. A directory in /tmp is created 0700 by us and used only if it is a real
directory (not a symlink) that we own and nobody else can write: another user cannot
pre-create it to catch our sockets.
"""

from __future__ import annotations

import hashlib
import os
import stat

from channel.transport.handshake_io import socket_path_problem
from fusefront.mountinfo import MountError


def runtime_dir() -> str:
    uid = os.geteuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        path, mode = os.path.join(xdg, "ringfs"), 0o700
    elif uid == 0:
        # Others may pass through (not list): server sockets are 0600 themselves, and the
        # drivers' control sockets beside them are meant for every local user.
        path, mode = "/run/ringfs", 0o711
    else:
        path, mode = f"/tmp/ringfs-{uid}", 0o700
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


def mount_digest(mountpoint: str) -> str:
    return hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]


def default_socket(mountpoint: str) -> str:
    return os.path.join(runtime_dir(), f"{mount_digest(mountpoint)}.sock")


def default_log(mountpoint: str) -> str:
    """A backgrounded mount's log when there is no syslog socket (rotated, see logs.py)."""
    return os.path.join(runtime_dir(), f"{mount_digest(mountpoint)}.log")


def check_socket_path(path: str) -> None:
    """A socket `up`'s server will create at `path` (see `socket_path_problem`)."""
    problem = socket_path_problem(path)
    if problem is not None:
        raise MountError(f"cannot create socket {path}: {problem}")
